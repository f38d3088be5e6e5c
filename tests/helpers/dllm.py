"""Helpers for the diffusion tests: tiny random dLLMs (paradec's own and HF-shaped LLaDA / Dream /
SDAR checkpoints written to a temp dir with their own modeling file), and a scripted fake model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from paradec.dllm.protocol import DiffusionSpec, TinyDLM
from paradec.dllm.toy.model import TinyConfig, TinyTransformer

V, MASK, EOS, PAD, SEP = 24, 1, 3, 0, 4


def tiny_dlm(seed: int = 0, attention: str = "bidirectional", block_size: int = 0, head: float = 40.0, mask_id=MASK) -> TinyDLM:
    """A random float64 TinyTransformer, scaled up so that its confidences spread over (0.2, 1):
    thresholds sometimes pass and sometimes not, and masked positions differ."""
    torch.manual_seed(seed)
    m = TinyTransformer(TinyConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64,
                                   attention=attention, block_size=block_size, mask_id=mask_id,
                                   seg_positions=16)).double().eval()
    with torch.no_grad():
        m.head.weight.mul_(head)
        m.tok.weight.mul_(25)
        for layer in m.layers:
            layer.qkv.weight.mul_(30)
            layer.out.weight.mul_(5)
    return TinyDLM(m, name=f"tiny-{seed}")


def prompts(n: int = 5, seed: int = 0, lengths=(3, 7)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        out.append([2] + torch.randint(5, V, (L,), generator=g).tolist() + [4])  # ... SEP
    return out


class FakeDLM:
    """Scripted model: ``fn(ids_gen [L_gen] list) -> {pos: (token, prob)}`` per sequence; other
    positions get a flat distribution. Answer region = the last ``gen`` positions."""

    def __init__(self, fn, gen: int, vocab: int = V):
        self.fn, self.gen = fn, gen
        self.spec = DiffusionSpec(mask_id=MASK, eos_id=EOS, pad_id=PAD, vocab_size=vocab, max_len=64)
        self.device, self.dtype, self.name, self.calls = torch.device("cpu"), torch.float64, "fake", 0

    def forward(self, ids, key_mask, query=None, cache=None, want_cache=False):
        self.calls += 1
        B, L = ids.shape
        logits = torch.zeros(B, L, self.spec.vocab_size, dtype=torch.float64)
        for b in range(B):
            for p, (tok, prob) in self.fn(ids[b, L - self.gen :].tolist()).items():
                # choose a logit that gives `prob` to tok with the rest flat
                rest = (1 - prob) / (self.spec.vocab_size - 2)  # the mask token gets -inf in the loop
                logits[b, L - self.gen + p, :] = torch.log(torch.tensor(rest, dtype=torch.float64))
                logits[b, L - self.gen + p, tok] = torch.log(torch.tensor(prob, dtype=torch.float64))
        if query is not None:
            logits = logits.gather(1, query[..., None].expand(-1, -1, logits.shape[-1]))
        return logits, None


MODELING = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class TinyDiffConfig(PretrainedConfig):
    model_type = "MODEL_TYPE"

    def __init__(self, vocab_size=40, hidden_size=32, **kw):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kw)


class TinyDiffModel(PreTrainedModel):
    config_class = TinyDiffConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        h = config.hidden_size
        self.emb = nn.Embedding(config.vocab_size, h)
        self.pos = nn.Embedding(512, h)
        self.attn = nn.MultiheadAttention(h, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.Linear(2 * h, h))
        self.lm_head = nn.Linear(h, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=1.0)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        B, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L)[None].expand(B, L)
        x = self.emb(input_ids) + self.pos(position_ids)
        m = None
        if attention_mask is not None and attention_mask.dim() == 4:
            m = (~attention_mask[:, 0]).repeat_interleave(4, 0)
        x = x + self.attn(x, x, x, attn_mask=m, need_weights=False)[0]
        x = x + self.mlp(x)
        return CausalLMOutput(logits=self.lm_head(x))
'''


def write_hf(d: Path, model_type: str, extra_cfg: dict | None = None, seed: int = 0) -> Path:
    """A tiny randomly initialized checkpoint with its own modeling file (trust_remote_code)."""
    import importlib.util
    import sys

    d.mkdir(parents=True, exist_ok=True)
    src = MODELING.replace("MODEL_TYPE", model_type)
    (d / "modeling_tinydiff.py").write_text(src)
    spec = importlib.util.spec_from_file_location(f"tinydiff_{model_type}_{seed}", d / "modeling_tinydiff.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    torch.manual_seed(seed)
    cfg = mod.TinyDiffConfig(vocab_size=40, eos_token_id=EOS, pad_token_id=PAD, **(extra_cfg or {}))
    model = mod.TinyDiffModel(cfg)
    model.save_pretrained(d)
    c = json.loads((d / "config.json").read_text())
    c["model_type"] = model_type
    c["auto_map"] = {"AutoConfig": "modeling_tinydiff.TinyDiffConfig", "AutoModel": "modeling_tinydiff.TinyDiffModel"}
    c["max_position_embeddings"] = 512
    (d / "config.json").write_text(json.dumps(c))
    return d
