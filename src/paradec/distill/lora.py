"""A small gated LoRA: ``y = W x + gate * (B A x) * alpha / rank`` on chosen linear layers.

The gate is per token: the converted block-diffusion model runs its clean (committed) tokens
through the exact base weights (gate off) and its draft block through the adapted weights (gate
on), in the same forward. With the gate off, a layer returns ``W x`` bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Gate:
    """Shared by every LoRA layer of a model: None = off everywhere, else a [B, T] bool tensor
    (True = apply the adapter at that token)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, gate: Gate) -> None:
        super().__init__()
        self.base, self.rank, self.scale, self.gate = base, rank, alpha / rank, gate
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))  # [r, in]
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))  # [out, r]
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, in]
        y = self.base(x)
        g = self.gate.mask
        if g is None:
            return y
        delta = (x @ self.lora_a.t()) @ self.lora_b.t() * self.scale  # [B, T, out]
        return y + delta * g[..., None].to(delta.dtype)


def apply_lora(model: nn.Module, rank: int, alpha: float, targets=TARGETS) -> Gate:
    """Wrap every ``nn.Linear`` whose attribute name is in ``targets`` (in place); freeze the
    base weights. Returns the gate the wrappers share."""
    gate = Gate()
    for p in model.parameters():
        p.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha, gate))
    return gate


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".lora_a" in k or ".lora_b" in k}


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = lora_state(model)
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        from ..errors import ParadecError

        raise ParadecError(f"adapter does not fit the model: {len(missing)} missing and {len(extra)} unexpected LoRA tensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].dtype))
