"""The torch backend's target: any Hugging Face ``*ForCausalLM`` behind the ``CausalLM`` protocol
(``models/causal_lm.py``), with continuous batching's ``forward_rows`` and the hidden states a
draft head reads (``forward_hidden``); the lean path (``lean.py``, ``packed.py``) where the
architecture allows.
"""

from __future__ import annotations

import inspect
import os

import torch

from transformers.cache_utils import Cache, CacheLayerMixin

from ...cache import KVCache
from ...interrupt import checkpoint


def cache_kwarg(module) -> str:
    """The name a transformers forward takes its cache under: ``cache`` in current 5.x releases
    (where ``past_key_values`` is deprecated, to be removed), ``past_key_values`` in earlier ones."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class HFCausalLM:
    """Any Hugging Face ``*ForCausalLM`` that accepts 4D attention masks and position ids."""

    def __init__(self, model, max_context: int | None = None, fast: bool = False) -> None:
        """``fast``: run forwards on the lean path (``lean.py``) where the architecture allows,
        with prepacked bfloat16 weights where the CPU has native bf16 (``packed.py``); else
        transformers' own forward. ``model`` itself is never changed. ``PARADEC_FAST=0`` in the
        environment turns the fast path off (to measure it)."""
        self.model = model.eval()
        cfg = model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.config = text_cfg
        self.num_layers = int(text_cfg.num_hidden_layers)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(max_context or getattr(text_cfg, "max_position_embeddings", 0) or 2048)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        impl = getattr(cfg, "_attn_implementation", None) or "eager"
        self._additive_mask = impl == "eager"
        layer_types = getattr(text_cfg, "layer_types", None) or []
        window = getattr(text_cfg, "sliding_window", None)
        self._sliding_window = int(window) if window and "sliding_attention" in layer_types else None
        self.cache_kw = cache_kwarg(self.model)  # the outer model and its body take the same name
        self.lean = None
        self.path = "transformers"
        if fast and os.environ.get("PARADEC_FAST", "1") != "0":
            from .lean import LeanDecoder, lean_unsupported
            from .packed import can_pack

            pack = can_pack(self.device, self.dtype)
            if lean_unsupported(model) is None:
                self.lean = LeanDecoder(model, pack=pack)
                self.path = "lean, packed bf16" if pack else "lean"

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.num_layers, capacity)

    def _fmt(self, m: torch.Tensor) -> torch.Tensor:
        # [B, q, kv] bool -> [B, 1, q, kv] in the form the attention kernel expects
        m = m[:, None]
        if self._additive_mask:
            return torch.zeros(m.shape, dtype=self.dtype, device=m.device).masked_fill_(~m, torch.finfo(self.dtype).min)
        return m

    def _hf_mask(self, mask: torch.Tensor, positions: torch.Tensor, cache_len: int):
        # mask: [B, q, kv] bool -> [B, 1, q, kv] in the form the attention kernel expects.
        fmt = self._fmt
        if self._sliding_window is None:
            return fmt(mask)
        # Keys in the cache sit at position == slot; new keys at their given positions.
        kv_pos = torch.cat(
            [torch.arange(cache_len, device=mask.device).expand(mask.shape[0], -1), positions], dim=1
        )  # [B, kv]
        near = (positions[:, :, None] - kv_pos[:, None, :]) < self._sliding_window  # [B, q, kv]
        return {"full_attention": fmt(mask), "sliding_attention": fmt(mask & near)}

    @torch.inference_mode()
    def forward(self, ids, positions, cache, attn_mask) -> torch.Tensor:
        return self._run(ids, positions, cache, attn_mask)[0]

    @torch.inference_mode()
    def forward_hidden(self, ids, positions, cache, attn_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``, plus the last hidden states [B, q, H] (the LM head's input, after the final
        norm): what a trained draft head drafts from. The logits are the very ones ``forward`` gives."""
        return self._run(ids, positions, cache, attn_mask, hidden=True)

    def _run(self, ids, positions, cache, attn_mask, hidden: bool = False):
        # -> (logits [B, q, V], last hidden states [B, q, H] or None)
        cache_len = cache.seq_len
        positions = positions.to(self.device)
        if ids.shape[:2] == (1, 1) and self._sliding_window is None and bool(attn_mask.all()):
            # A plain decoding step sees the whole cache: no mask lets the attention kernel take
            # its unmasked path (what it saves: docs/benchmarks.md, "Figures the code's comments rely on").
            mask = None
        else:
            mask = self._hf_mask(attn_mask.to(self.device), positions, cache_len)
        if self.lean is not None:
            h = self.lean.body(ids.to(self.device), positions, cache, mask)
            return self.lean.logits(h), h
        out = self.model(
            input_ids=ids.to(self.device),
            position_ids=positions,
            attention_mask=mask,
            **{self.cache_kw: cache},
            use_cache=True,
            **({"output_hidden_states": True} if hidden else {}),
        )
        return out.logits, (out.hidden_states[-1] if hidden else None)

    @torch.inference_mode()
    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """One forward for B requests at one new token each, every row on its own cache.

        ids, positions: [B, 1]; row b's token sits at position ``caches[b].seq_len`` and sees
        that cache's slots plus itself. Returns logits [B, 1, V]. This is continuous batching's
        forward: the weights are read once for the B tokens, and each request's cache keeps
        its own length (keys are gathered into one right-padded batch per layer, and padding
        is masked out).
        """
        lengths = [c.seq_len for c in caches]
        kv_len = max(lengths) + 1
        valid = torch.arange(kv_len)[None, :] <= torch.tensor(lengths)[:, None]  # [B, kv_len]
        mask = valid[:, None, :].to(self.device)  # [B, 1, kv_len]
        positions = positions.to(self.device)
        if self._sliding_window is not None:  # slot == position here, for every row
            near = (positions[:, :, None] - torch.arange(kv_len, device=self.device)) < self._sliding_window
            hf_mask = {"full_attention": self._fmt(mask), "sliding_attention": self._fmt(mask & near)}
        else:
            hf_mask = self._fmt(mask)
        if self.lean is not None:
            h = self.lean.body(ids.to(self.device), positions, _RowsCache(caches, kv_len), hf_mask)
            return self.lean.logits(h)
        out = self.model(
            input_ids=ids.to(self.device),
            position_ids=positions,
            attention_mask=hf_mask,
            **{self.cache_kw: _RowsCache(caches, kv_len)},
            use_cache=True,
        )
        return out.logits

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache: KVCache, chunk: int = 512) -> None:
        """Append ``ids`` [B, L] to ``cache`` causally (positions continue from the cache)."""
        ids = ids.to(self.device)
        b, n = ids.shape
        for start in range(0, n, chunk):
            if start:
                checkpoint()  # a long prompt is stoppable between chunks (see paradec.interrupt)
            piece = ids[:, start : start + chunk]
            q, past = piece.shape[1], cache.seq_len
            pos = torch.arange(past, past + q, device=self.device).expand(b, -1)
            mask = torch.ones(q, past + q, dtype=torch.bool, device=self.device).tril_(past)
            if self.lean is not None:  # the cache is what counts: no final logits
                self.lean.body(piece, pos, cache, self._hf_mask(mask.expand(b, -1, -1), pos, past))
                continue
            self.model(
                input_ids=piece,
                position_ids=pos,
                attention_mask=self._hf_mask(mask.expand(b, -1, -1), pos, past),
                **{self.cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,
            )


class _RowLayer(CacheLayerMixin):
    """Layer ``index`` of B single-request caches, seen as one right-padded batch."""

    is_sliding = False
    is_compileable = False

    def __init__(self, caches: list[KVCache], index: int, kv_len: int) -> None:
        super().__init__()
        self.rows = [c.layers[index] for c in caches]
        self.kv_len = kv_len
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # rows are already set up
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states: [B, H, 1, D]; row b is appended to its own cache, then every row's keys
        # are gathered into [B, H, kv_len, D] (slots past a row's length are masked out).
        b, h, _, d = key_states.shape
        keys = key_states.new_zeros(b, h, self.kv_len, d)
        values = value_states.new_zeros(b, h, self.kv_len, value_states.shape[-1])
        for i, layer in enumerate(self.rows):
            k, v = layer.update(key_states[i : i + 1], value_states[i : i + 1])
            keys[i, :, : k.shape[-2]] = k[0]
            values[i, :, : v.shape[-2]] = v[0]
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.kv_len, 0

    def get_seq_length(self) -> int:
        return self.kv_len - 1

    def get_max_length(self) -> int:
        return -1


class _RowsCache(Cache):
    def __init__(self, caches: list[KVCache], kv_len: int) -> None:
        super().__init__(layers=[_RowLayer(caches, i, kv_len) for i in range(len(caches[0].layers))])
