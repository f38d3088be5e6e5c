"""Weight-only int8 copies of a model (per-output-channel scales), for self-drafting.

A quantized copy of the target predicts almost the same tokens as the target at a fraction of
the memory traffic, so it makes a cheap drafter ("Speculative Decoding Meets Quantization").
The target itself always stays in full precision: verification keeps the output exact.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (W_int8 * scale).T + b, with W stored as int8 [out, in] and scale [out]."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-10)  # [out]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        self._fused = hasattr(torch.ops.aten, "_weight_int8pack_mm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [..., in]
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)
        if self._fused and x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self.scales)
        else:  # portable fallback (e.g. CUDA): dequantize on the fly
            y = x2 @ (self.weight.to(x2.dtype) * self.scales[:, None]).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def int8_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A deep copy of ``model`` with every nn.Linear replaced by an int8 weight-only linear."""
    dtype = dtype or next(model.parameters()).dtype
    if dtype == torch.float64:
        dtype = torch.float32
    q = copy.deepcopy(model).to(dtype)
    for name, module in list(q.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8WeightOnlyLinear(child, dtype))
    return q.eval()
