"""A converted AR model (converted.py) behind the diffusion-LM protocol, so the one block-decoding
loop and every commit rule, block schedule and FreeDave run it.

Each forward, per sequence: the answer region is decoded up to its first masked position; that
prefix (prompt + decoded tokens) is the clean context and the next ``block_size`` positions
are the block. Logits are returned for the block's positions (unshifted: row j predicts token
j; the first from the last clean token). Other positions get flat logits: the loop only reads
the current block, which for a block-causal model is a fixed block of ``block_size`` starting at
or before the first mask, so it always lies inside this window.

The model keeps one KV cache per sequence that follows the clean context from step to step (a
pool matched by longest common prefix), so a step costs the new context tokens plus the block,
not the whole sequence. The cache only ever holds clean tokens, which the block cannot change,
so it is exact, not an approximation (the loop's own cache options are not needed).
"""

from __future__ import annotations

import torch

from ..errors import ParadecError
from .protocol import DiffusionSpec
from ..cache import reusable_prefix
from .converted import BlockDiffusionAR, BlockState

POOL_MAX = 64


class ConvertedDLM:
    def __init__(self, model: BlockDiffusionAR, tokenizer=None, name: str = "converted", block_size: int | None = None,
                 eos_id: int | None = None) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        bs = int(block_size or model.cfg.block_size)
        if bs < 1:
            raise ParadecError(f"block size must be >= 1, got {bs}")
        if eos_id is None:
            eos_id = getattr(tokenizer, "eos_token_id", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.spec = DiffusionSpec(
            mask_id=model.mask_id, eos_id=int(eos_id if eos_id is not None else -1),
            pad_id=int(pad if pad is not None else 0), vocab_size=model.vocab_size + 1, max_len=model.max_context,
            shifted=False, attention="block_causal", block_size=bs, caches=("none",),
        )
        self.device, self.dtype = model.device, model.dtype
        self._pool: list[BlockState] = []

    def encode(self, text: str) -> list[int]:
        """A user message in the model's chat format (plain tokens without a chat template)."""
        from ..distill.data import chat_ids

        if self.tokenizer is None:
            raise ParadecError(f"model '{self.name}' has no tokenizer")
        return chat_ids(self.tokenizer, text)

    def _state(self, context: list[int], taken: set[int]) -> BlockState:
        best, best_n = None, -1
        for i, st in enumerate(self._pool):
            if i not in taken:
                n = reusable_prefix(st.cached, context)
                if n > best_n:
                    best, best_n = i, n
        if best is None or (best_n == 0 and len(self._pool) < POOL_MAX):
            self._pool.append(self.model.new_state(len(context) + 4 * self.spec.block_size))
            best = len(self._pool) - 1
        taken.add(best)
        return self._pool[best]

    @torch.no_grad()
    def forward(self, ids, key_mask, query=None, cache=None, want_cache=False):
        if cache is not None or want_cache:
            raise ParadecError(f"model '{self.name}' supports no loop cache (it caches clean context itself)")
        B, L = ids.shape
        V = self.spec.vocab_size
        out = torch.zeros(B, L, V, dtype=self.dtype, device=self.device)  # [B, L, V + 1]: flat outside the block
        out[..., self.spec.mask_id] = torch.finfo(self.dtype).min
        taken: set[int] = set()
        bs = self.spec.block_size
        for b in range(B):
            real = key_mask[b].nonzero()[:, 0]
            first = int(real[0]) if len(real) else 0
            row = ids[b, first:].tolist()
            try:
                fm = row.index(self.spec.mask_id)
            except ValueError:
                continue  # nothing masked: the loop reads no logits from this row
            if fm == 0:
                raise ParadecError("a sequence needs at least one unmasked token before its first mask")
            block = [None if t == self.spec.mask_id else t for t in row[fm : fm + bs]]
            logits = self.model.block_logits(self._state(row[:fm], taken), row[:fm], block)  # [k, V - 1]
            out[b, first + fm : first + fm + len(block), : V - 1] = logits.to(out.dtype)
        if query is not None:
            out = out.gather(1, query[..., None].expand(-1, -1, V))
        return out, None
