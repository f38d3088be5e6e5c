"""An AR model converted into a block-diffusion model (SDAR / Fast-dLLM v2 style), stored as a
small adapter over the base weights.

Shape of the model. A sequence is *clean context* followed by one *block* of k positions, some
or all of them the mask token:

- clean tokens run through the exact base weights with causal attention (the LoRA gate is off),
  so the context's keys and values, and the logits at the last clean token, are the AR model's;
- block tokens run through base + LoRA (gate on); a masked position gets a learned mask
  embedding (the mask id is ``vocab_size``, one past the base vocabulary); a block token sees
  every clean token and every token of its block (bidirectional inside the block);
- the token shift is kept: the logits at position i - 1 predict token i. The block's first
  token is predicted by the last clean token (exactly the AR prediction), token j of the block
  by block position j - 1.

Causal across blocks, bidirectional inside a block: decoding block after block, each decoded
block becomes clean context for the next. The same function is computed two ways: per sequence
with a KV cache that follows the committed prefix (``BlockState`` / ``block_logits``: the DEER
drafter and the dLLM adapter) and batched over many blocks at once for training
(``block_hidden``, in convert/train.py), and a test checks that the two agree.

Files: ``config.json`` (the base model's name and fingerprint, adapter shape, training recipe
and measured quality) and ``adapter-*.safetensors`` (LoRA A/B matrices and the mask embedding,
split into files under 16 MiB).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..cache import KVCache, reusable_prefix
from ..errors import ParadecError
from ..distill.fingerprint import check_fingerprint, fingerprint
from ..models.torch.hf import HFCausalLM
from ..distill.lora import TARGETS, apply_lora, load_lora_state, lora_state

MAX_FILE_BYTES = 15 * 1024 * 1024  # each adapter file stays under 16 MiB


@dataclass(frozen=True)
class AdapterConfig:
    base: str = "smollm2-135m"  # the AR model it was converted from (a name paradec loads)
    rank: int = 32
    alpha: float = 64.0
    targets: tuple[str, ...] = TARGETS
    block_size: int = 8  # default block for dLLM decoding and for deer drafts
    min_block: int = 4  # block sizes seen in training
    max_block: int = 16

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError("adapter rank must be >= 1")
        if not 2 <= self.min_block <= self.block_size <= self.max_block:
            raise ValueError("adapter needs 2 <= min_block <= block_size <= max_block")


@dataclass
class BlockState:
    """One sequence's drafter cache: the clean tokens whose keys/values it holds."""

    cache: KVCache
    cached: list[int] = field(default_factory=list)


class BlockDiffusionAR:
    """Base HF causal LM + gated LoRA + mask embedding (see the module docstring).

    ``hf_model`` is adapted in place (its linear layers get LoRA wrappers); pass a copy to keep
    the original untouched (``from_base`` does)."""

    def __init__(self, hf_model, cfg: AdapterConfig, max_context: int | None = None) -> None:
        self.cfg = cfg
        self.hf = hf_model.eval()
        self.gate = apply_lora(hf_model, cfg.rank, cfg.alpha, cfg.targets)
        emb = hf_model.get_input_embeddings().weight
        self.mask_vec = nn.Parameter(emb.detach().mean(0).clone())  # [D]
        self.runner = HFCausalLM(hf_model, max_context=max_context)  # mask formatting, sizes
        self.vocab_size = self.runner.vocab_size  # base vocabulary; the mask id is one past it
        self.mask_id = self.vocab_size
        self.max_context = self.runner.max_context
        self.device, self.dtype = self.runner.device, self.runner.dtype

    @classmethod
    def from_base(cls, hf_model, cfg: AdapterConfig, max_context: int | None = None) -> "BlockDiffusionAR":
        return cls(copy.deepcopy(hf_model), cfg, max_context)

    def trainable(self) -> list[nn.Parameter]:
        return [p for n, p in self.hf.named_parameters() if ".lora_" in n] + [self.mask_vec]

    # ---- one forward with clean and block tokens -------------------------------------------------
    def embed(self, ids: torch.Tensor, is_mask: torch.Tensor) -> torch.Tensor:
        """ids [B, T] (anything at masked positions), is_mask [B, T] -> embeddings [B, T, D]."""
        emb = self.hf.get_input_embeddings()(ids.masked_fill(is_mask, 0))
        return torch.where(is_mask[..., None], self.mask_vec.to(emb.dtype), emb)

    def run(self, ids, is_mask, positions, attn, gate, cache, hidden_only: bool = False) -> torch.Tensor:
        """ids, is_mask, positions, gate: [B, q]; attn [B, q, cache_len + q] bool (True = may
        attend). Returns logits [B, q, V] (or the last hidden states [B, q, D])."""
        dev = self.device
        ids, is_mask, positions, attn, gate = (t.to(dev) for t in (ids, is_mask, positions, attn, gate))
        x = self.embed(ids, is_mask)
        mask = self.runner._hf_mask(attn, positions, cache.get_seq_length() if cache is not None else 0)
        self.gate.mask = gate
        try:
            body = self.hf.model if hidden_only else self.hf
            out = body(inputs_embeds=x, position_ids=positions, attention_mask=mask, use_cache=cache is not None,
                       **{self.runner.cache_kw: cache})
        finally:
            self.gate.mask = None
        return out.last_hidden_state if hidden_only else out.logits

    # ---- per sequence, following a committed prefix ---------------------------------------------
    def new_state(self, capacity: int) -> BlockState:
        return BlockState(KVCache(self.runner.num_layers, capacity))

    @torch.no_grad()
    def block_logits(self, state: BlockState, context: list[int], block: list[int | None]) -> torch.Tensor:
        """Logits for the k block positions after ``context`` (None = masked): row j predicts
        block token j (row 0 comes from the last clean token). One forward over the context
        tokens not yet cached plus the block; afterwards the cache holds exactly ``context``.
        Returns [k, V]."""
        if not context:
            raise ParadecError("a block needs at least one context token")
        n = reusable_prefix(state.cached, context)
        state.cache.truncate(n)
        del state.cached[n:]
        new = context[n:]  # >= 1 token: the last context token is always fed again
        c, k = len(new), len(block)
        q = c + k
        ids = torch.tensor([new + [0 if t is None else int(t) for t in block]])  # [1, q]
        is_mask = torch.tensor([[False] * c + [t is None for t in block]])  # [1, q]
        pos = torch.arange(n, n + q)[None]  # [1, q]
        attn = torch.ones(q, n + q, dtype=torch.bool).tril_(n)  # causal for the clean tokens
        attn[c:, :] = True  # block tokens see all context and the whole block
        gate = torch.tensor([[False] * c + [True] * k])  # [1, q]
        logits = self.run(ids, is_mask, pos, attn[None], gate, state.cache)[0]  # [q, V]
        state.cache.truncate(n + c)
        state.cached.extend(new)
        return logits[c - 1 : c - 1 + k]  # [k, V]

    # ---- files ----------------------------------------------------------------------------------
    def adapter_tensors(self, dtype=torch.float16) -> dict[str, torch.Tensor]:
        sd = {k: v.detach().to(dtype).contiguous() for k, v in lora_state(self.hf).items()}
        sd["mask_embedding"] = self.mask_vec.detach().to(dtype).contiguous()
        return sd

    def save(self, directory: str | Path, meta: dict | None = None, dtype=torch.float16) -> list[Path]:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("adapter-*.safetensors"):
            old.unlink()
        groups: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, v in self.adapter_tensors(dtype).items():
            nbytes = v.numel() * v.element_size()
            if groups[-1] and size + nbytes > MAX_FILE_BYTES:
                groups.append({})
                size = 0
            groups[-1][k] = v
            size += nbytes
        paths = []
        for i, g in enumerate(groups, 1):
            p = d / f"adapter-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file(g, str(p))
            paths.append(p)
        cfg = {**asdict(self.cfg), "targets": list(self.cfg.targets)}
        body = {"paradec_converted": cfg, "base_fingerprint": fingerprint(self.hf), **(meta or {})}
        (d / "config.json").write_text(json.dumps(body, indent=1) + "\n")
        return paths

    def load_adapter(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        files = sorted(Path(directory).glob("adapter-*.safetensors"))
        if not files:
            raise ParadecError(f"no adapter-*.safetensors in '{directory}'")
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(f)))
        mask = sd.pop("mask_embedding", None)
        if mask is None or mask.shape != self.mask_vec.shape:
            raise ParadecError(f"adapter in '{directory}' has no mask embedding of size {self.mask_vec.shape[0]}")
        load_lora_state(self.hf, sd)
        with torch.no_grad():
            self.mask_vec.copy_(mask.to(self.mask_vec.dtype))


def read_config(directory: str | Path) -> dict:
    p = Path(directory) / "config.json"
    if not p.is_file():
        raise ParadecError(f"no converted model at '{directory}' (expected config.json)")
    c = json.loads(p.read_text())
    if "paradec_converted" not in c:
        raise ParadecError(f"'{directory}' is not a converted block-diffusion adapter")
    return c


def shared_copy(hf_model):
    """A second module tree over the same weights: the adapter can wrap its linear layers while
    the original model stays untouched, and no weight is copied."""
    memo = {id(t): t for t in list(hf_model.parameters()) + list(hf_model.buffers())}
    return copy.deepcopy(hf_model, memo)


def load_converted(directory: str | Path, hf_model, copy_base: bool | str = True, max_context: int | None = None) -> BlockDiffusionAR:
    """The adapter in ``directory`` on top of ``hf_model``: on a copy (``copy_base=True``), in
    place (False), or on a module tree sharing the weights (``"share"``)."""
    c = read_config(directory)
    check_fingerprint(c.get("base_fingerprint", {}), hf_model, f"adapter '{Path(directory).name}'")
    a = dict(c["paradec_converted"])
    a["targets"] = tuple(a.get("targets", TARGETS))
    cfg = AdapterConfig(**a)
    if copy_base == "share":
        m = BlockDiffusionAR(shared_copy(hf_model), cfg, max_context)
    else:
        m = (BlockDiffusionAR.from_base if copy_base else BlockDiffusionAR)(hf_model, cfg, max_context)
    m.load_adapter(directory)
    m.meta = c
    return m
