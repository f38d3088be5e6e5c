"""The target-model protocols: what the decode loop, the drafters and the server ask of a model.

``CausalLM`` (``forward(ids, positions, cache, attn_mask) -> logits``) is all a target must do:
the decode loop talks to models only through it, so another backend (the native kernels,
llama.cpp, a remote server) can stand in for Hugging Face transformers (``torch/hf.py``). The
other protocols name optional capabilities of a target (each a ``CausalLM`` with one more
member, but for the ``NativeLM`` marker); a backend has one by defining that member, and the
code that uses it checks for it with ``isinstance`` (never by probing for a name).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..cache import KVCache


@runtime_checkable
class CausalLM(Protocol):
    vocab_size: int
    max_context: int
    device: torch.device
    dtype: torch.dtype

    def new_cache(self, capacity: int) -> KVCache: ...

    def forward(
        self,
        ids: torch.Tensor,  # [B, q] long
        positions: torch.Tensor,  # [B, q] long, absolute positions
        cache: KVCache,
        attn_mask: torch.Tensor,  # [B, q, cache_len + q] bool, True = may attend
    ) -> torch.Tensor:  # [B, q, V] logits
        ...

    def prefill(self, ids: torch.Tensor, cache: KVCache) -> None:
        """Fill ``cache`` with a causal pass over ``ids`` [B, L] (logits not needed)."""


@runtime_checkable
class BatchedLM(CausalLM, Protocol):
    """Continuous batching's forward: the server's scheduler runs the plain steps of several
    requests as one forward through it (weights read once for all of them)."""

    def forward_rows(
        self,
        ids: torch.Tensor,  # [B, 1] long: one new token per request
        positions: torch.Tensor,  # [B, 1] long: row b's token sits at caches[b].seq_len
        caches: list,  # B caches of the backend's own kind, one per request
    ) -> torch.Tensor:  # [B, 1, V] logits
        ...


@runtime_checkable
class HiddenStatesLM(CausalLM, Protocol):
    """A target that can return its last hidden states with its logits: what a trained draft
    head drafts from (``head``, and ``auto`` when it takes the head)."""

    def forward_hidden(
        self, ids: torch.Tensor, positions: torch.Tensor, cache, attn_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (logits [B, q, V], hidden [B, q, H] after the final norm)
        ...


@runtime_checkable
class TailLogitsLM(CausalLM, Protocol):
    """A target that can run a forward whose first rows only fill the cache (the end of a
    prompt, ahead of the first step's draft) and give the logits of the rows from ``start`` on:
    the decode loop then prefills a prompt's last tokens in its first step's forward (one pass
    over the weights fewer a request)."""

    def forward_tail(
        self, ids: torch.Tensor, positions: torch.Tensor, cache, attn_mask: torch.Tensor, start: int
    ) -> torch.Tensor:  # [B, q - start, V] logits of rows start..q-1
        ...


@runtime_checkable
class NativeLM(Protocol):
    """A target that runs on its own kernels and thread pool, not torch's (the native backend):
    torch ops beside it run on one thread (their spinning threads would take its cores), and it
    has no transformers forward for a drafter to draft inside (``deer-fused``). A bare marker,
    not a ``CausalLM`` with one more member, so that a wrapper which forwards the rest of a
    target by ``__getattr__`` is still seen as one (``isinstance`` looks members up statically
    from Python 3.12 on)."""

    native: bool  # True


@runtime_checkable
class LabelledLM(CausalLM, Protocol):
    """A target that says which code path runs it, for stats and reports."""

    path: str  # "transformers", "lean", "lean, packed bf16", "native Q4_1 avx512vnni"


@runtime_checkable
class TransformersLM(CausalLM, Protocol):
    """A target with a transformers model behind it (``model``): what ``head``, ``deer`` and
    ``qdraft``'s int8 copy build their drafters from. The native backend loads one on first use
    (its verification stays on its own weights)."""

    model: object  # a transformers PreTrainedModel


def backend_label(target: CausalLM) -> str:
    """What runs ``target``, for stats and reports: "native Q4_1 avx512vnni", "torch float32 (lean)"."""
    path = (target.path if isinstance(target, LabelledLM) else "") or "transformers"
    if path.startswith("native"):
        return path
    return f"torch {str(target.dtype).removeprefix('torch.')} ({path})"
