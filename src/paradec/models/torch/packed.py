"""Linear layers with weights prepacked for oneDNN: the fast bfloat16 matrix path on a CPU.

torch's ``F.linear`` on bfloat16 CPU tensors hands oneDNN a plain row-major weight, which it
reorders into its blocked layout again on every call. Packing each weight once at load time
removes that work, and the cost then stays nearly flat up to 16 tokens (measured figures:
docs/benchmarks.md, "Figures the code's comments rely on"). The result is the same matrix
product (the tests compare logits), only the weight's memory layout differs.

A packed layer is an extra, inference-only copy of a weight: the model it came from is left as
it is (the transformers baseline in ``paradec bench`` keeps running stock ``F.linear``).
"""

from __future__ import annotations

import os

import torch
from torch import nn


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """True where packing pays: bfloat16 on a CPU with native bf16 support in oneDNN.

    ``PARADEC_PACKED_LINEAR=0`` turns it off (to measure the difference)."""
    if os.environ.get("PARADEC_PACKED_LINEAR", "1") == "0":
        return False
    if device.type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(supported()) if supported is not None else False
    except RuntimeError:  # pragma: no cover - an odd build
        return False


class PackedLinear(nn.Module):
    """``y = x @ W.T + b`` with W held in oneDNN's blocked layout.

    ``weight`` still names the original (row-major) tensor when one is given to share (a draft
    head takes the LM head's rows from it); a fused weight built only to be packed is dropped."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, keep_weight: bool = True) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape  # [out, in]
        self.weight = weight if keep_weight else None
        self.bias = None if bias is None else bias.detach()
        # [out, in] -> oneDNN's opaque blocked layout, packed once
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1), persistent=False)

    @classmethod
    def of(cls, linear: nn.Linear) -> "PackedLinear":
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [], "")
        return y.reshape(*shape[:-1], self.out_features)


def fused(linears: list[nn.Linear]) -> PackedLinear:
    """One packed layer computing several linears on the same input, outputs concatenated
    (q, k, v -> qkv; gate, up -> gate_up): one call, one pass over the input, fewer calls."""
    weight = torch.cat([l.weight.detach() for l in linears], dim=0)  # [sum(out), in]
    bias = None
    if any(l.bias is not None for l in linears):
        bias = torch.cat(
            [l.bias.detach() if l.bias is not None else l.weight.new_zeros(l.out_features) for l in linears]
        )
    return PackedLinear(weight, bias, keep_weight=False)

