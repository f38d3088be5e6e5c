"""The diffusion-LM protocol: what the decoding loop needs to know about a model.

A model declares its mask token, whether its logits are shifted (Dream-style: position i's
logits predict token i + 1) or not (LLaDA-style), its attention family (fully bidirectional, or
block-causal with a block size, SDAR/BD3-style) and which caches it supports. The loop only ever
calls ``forward`` and always receives unshifted logits (row j predicts the token at query
position j).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..errors import ParadecError

ATTENTION = ("bidirectional", "block_causal")
CACHES = ("none", "prefix", "dual")


@dataclass(frozen=True)
class DiffusionSpec:
    mask_id: int | None
    eos_id: int
    pad_id: int
    vocab_size: int
    max_len: int
    shifted: bool = False
    attention: str = "bidirectional"
    block_size: int | None = None  # block_causal: the model's own block size
    caches: tuple[str, ...] = ("none",)

    def check(self) -> None:
        if self.mask_id is None:
            raise ParadecError("this model has no mask token, so it is not a masked diffusion LM (set mask_token_id)")
        if self.attention not in ATTENTION:
            raise ParadecError(f"unknown attention family '{self.attention}' (one of {', '.join(ATTENTION)})")
        if self.attention == "block_causal" and not self.block_size:
            raise ParadecError("a block-causal diffusion model must declare its block size")


class DiffusionLM(Protocol):
    spec: DiffusionSpec
    device: torch.device
    dtype: torch.dtype

    def forward(
        self,
        ids: torch.Tensor,  # [B, L] long, masked positions hold spec.mask_id
        key_mask: torch.Tensor,  # [B, L] bool, False = left padding
        query: torch.Tensor | None = None,  # [B, W] positions to compute (None: all)
        cache: object | None = None,  # from an earlier forward(want_cache=True); needs query
        want_cache: bool = False,
    ) -> tuple[torch.Tensor, object | None]:  # logits [B, W or L, V] (unshifted), cache
        ...


@runtime_checkable
class Named(Protocol):
    """A model with a name for messages (every loader sets one)."""

    name: str


@runtime_checkable
class Stored(Protocol):
    """A model loaded from a directory (``loaders`` sets it): files shipped beside the weights,
    such as config.json or a Learn2PD filter, live there."""

    directory: Path


@runtime_checkable
class ChatPrompted(Protocol):
    """A model that turns a user message into prompt ids in its own chat format (a converted AR
    model); other models take task prompts or plain tokenizer ids."""

    def encode(self, text: str) -> list[int]: ...


@runtime_checkable
class Tokenized(Protocol):
    """A dLLM that carries its own tokenizer (Hugging Face checkpoints, converted models; may be None)."""

    tokenizer: object


class TinyDLM:
    """paradec's own transformer (toy/model.py): bidirectional or block-causal, prefix and dual caches."""

    def __init__(self, model, name: str = "tiny-dllm") -> None:
        c = model.config
        self.model, self.name = model.eval(), name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.spec = DiffusionSpec(
            mask_id=c.mask_id, eos_id=c.eos_id, pad_id=c.pad_id, vocab_size=c.vocab_size, max_len=c.max_len,
            shifted=False, attention=c.attention if c.attention != "causal" else "bidirectional",
            block_size=c.block_size or None, caches=CACHES,
        )
        if c.attention == "causal":  # an AR model: no mask token, no diffusion decoding
            self.spec = DiffusionSpec(None, c.eos_id, c.pad_id, c.vocab_size, c.max_len)

    @torch.no_grad()
    def forward(self, ids, key_mask, query=None, cache=None, want_cache=False):
        return self.model(ids, key_mask, query=query, cache=cache, want_cache=want_cache)


class HFDiffusionLM:
    """A Hugging Face masked / block diffusion model (LLaDA-, Dream- or SDAR-shaped, see loaders.py).
    No cache: every forward is a full one."""

    def __init__(self, model, spec: DiffusionSpec, name: str = "", tokenizer=None) -> None:
        self.model, self.spec, self.name, self.tokenizer = model.eval(), spec, name, tokenizer
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def _mask4d(self, key_mask: torch.Tensor) -> torch.Tensor:
        B, L = key_mask.shape
        pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)
        allowed = key_mask[:, None, :].expand(B, L, L)
        if self.spec.attention == "block_causal":
            bs = self.spec.block_size
            allowed = allowed & (pos[:, None, :] // bs <= pos[:, :, None] // bs)
        return allowed[:, None]

    @torch.no_grad()
    def forward(self, ids, key_mask, query=None, cache=None, want_cache=False):
        if cache is not None:
            raise ParadecError(f"model '{self.name}' supports no cache (supported: {', '.join(self.spec.caches)})")
        pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=self._mask4d(key_mask), position_ids=pos)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if self.spec.shifted:  # Dream: logits at i predict i + 1; realign so row j predicts token j
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        if query is not None:
            logits = logits.gather(1, query[..., None].expand(-1, -1, logits.shape[-1]))
        return logits, None
