"""Training data for AR -> block-diffusion conversion: continuations the AR model generates itself.

Prompts come from the offline prompt sets paradec already reads: the MT-Bench questions (each
turn asked on its own), HumanEval (asked as ``paradec bench`` asks it) and paradec's own prompt
sets (data/bench/*.jsonl). Within each source, prompt number i is *held out* when i % 4 == 0:
those prompts are never trained on and are the ones the quality, acceptance and frontier
measurements use. The rest are the training split.

Each training prompt gets a greedy continuation (what the greedy target will verify) and
``samples`` sampled ones (temperature 0.8, top-p 0.95) for variety. Generation is batched with a
plain KV-cached loop (left padding), which on CPU is many times faster than ``generate``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HOLDOUT_EVERY = 4  # prompt i of a source is held out when i % HOLDOUT_EVERY == 0


@dataclass(frozen=True)
class TextPrompt:
    source: str  # mt_bench | humaneval | translation | ...
    index: int  # position within its source (decides the split)
    text: str  # the user message

    @property
    def heldout(self) -> bool:
        return self.index % HOLDOUT_EVERY == 0

    @property
    def id(self) -> str:
        return f"{self.source}/{self.index}"


def offline_prompts(sources: tuple[str, ...] | None = None) -> list[TextPrompt]:
    """Every single-turn prompt from the offline sets that are installed (MT-Bench turns counted
    separately: question q's turns get indices 2q and 2q + 1)."""
    from ..suites import OWN_SUITES, load_suite, missing_package

    out: list[TextPrompt] = []
    for name in sources or ("mt_bench", "humaneval") + OWN_SUITES:
        if missing_package(name):
            continue
        items = load_suite(name)
        if name == "mt_bench":
            out += [TextPrompt(name, 2 * q + t, turn) for q, p in enumerate(items) for t, turn in enumerate(p.turns[:2])]
        else:
            out += [TextPrompt(name, i, p.turns[0]) for i, p in enumerate(items)]
    return out


def split(prompts: list[TextPrompt], heldout: bool) -> list[TextPrompt]:
    return [p for p in prompts if p.heldout == heldout]


def chat_ids(tokenizer, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        s = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return tokenizer(s, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), tokenizer):
        e = getattr(src, "eos_token_id", None)
        ids.update([e] if isinstance(e, int) else list(e or []))
    return ids


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], max_new_tokens: int, eos: set[int], pad_id: int,
                   temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """Continue each prompt (left-padded batch, KV cache). Returns each continuation, up to and
    including its first EOS."""
    from transformers import DynamicCache

    from ..models.torch.hf import cache_kwarg

    B, P = len(prompts), max(len(p) for p in prompts)
    dev = next(model.parameters()).device
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    am = torch.zeros(B, P + max_new_tokens, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p)
        am[b, P - len(p):P] = 1
    ids, am = ids.to(dev), am.to(dev)
    pos = (am[:, :P].cumsum(1) - 1).clamp(min=0)  # [B, P]
    cache = DynamicCache()
    kw = cache_kwarg(model)
    out = [[] for _ in range(B)]
    live = torch.ones(B, dtype=torch.bool)
    logits = model(input_ids=ids, attention_mask=am[:, :P], position_ids=pos, **{kw: cache},
                   use_cache=True, logits_to_keep=1).logits[:, -1]  # [B, V]
    nxt_pos = pos[:, -1:] + 1  # [B, 1]
    for j in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, -1)
            if top_p < 1.0:
                sp, si = probs.sort(-1, descending=True)
                drop = sp.cumsum(-1) - sp > top_p
                probs = probs.scatter(-1, si, sp.masked_fill(drop, 0.0))
            tok = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(dev)
        else:
            tok = logits.argmax(-1)
        host = tok.tolist()
        for b in live.nonzero()[:, 0].tolist():
            out[b].append(host[b])
            if host[b] in eos:
                live[b] = False
        if not live.any() or j == max_new_tokens - 1:
            break
        am[:, P + j] = 1
        logits = model(input_ids=tok[:, None], attention_mask=am[:, : P + j + 1], position_ids=nxt_pos,
                       **{kw: cache}, use_cache=True).logits[:, -1]
        nxt_pos = nxt_pos + 1
    return out


@dataclass(frozen=True)
class DataConfig:
    """How ``generate_data`` continues each prompt."""

    max_new_tokens: int = 160  # tokens per continuation
    samples: int = 1  # sampled continuations per prompt, besides the greedy one
    batch: int = 32  # continuations generated together
    seed: int = 0
    minutes: float = 0.0  # > 0: start no new batch after this long (what was written is kept)


def generate_data(model, tokenizer, out_path: str | Path, prompts: list[TextPrompt], cfg: DataConfig = DataConfig(),
                  log=print) -> int:
    """Write one JSON line per continuation: source, index, mode, prompt_ids, response_ids.
    Greedy continuations come first, shortest prompts first. Returns the number of response tokens."""
    max_new_tokens, samples, batch, minutes = cfg.max_new_tokens, cfg.samples, cfg.batch, cfg.minutes
    gen = torch.Generator().manual_seed(cfg.seed)
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    jobs = [(p, "greedy") for p in prompts] + [(p, f"sample{s}") for s in range(samples) for p in prompts]
    # similar prompt lengths together: less padding
    encoded = [(p, mode, chat_ids(tokenizer, p.text)) for p, mode in jobs]
    encoded.sort(key=lambda e: (e[1] != "greedy", len(e[2])))
    n_tok, t0 = 0, time.time()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for i in range(0, len(encoded), batch):
            if minutes and time.time() - t0 > 60 * minutes:
                log(f"data: time budget of {minutes} min reached after {i} continuations")
                break
            chunk = encoded[i : i + batch]
            greedy = chunk[0][1] == "greedy"
            groups = [[c for c in chunk if (c[1] == "greedy") == g] for g in (True, False)]
            for grp in groups:
                if not grp:
                    continue
                g = grp[0][1] == "greedy"
                conts = generate_batch(model, [c[2] for c in grp], max_new_tokens, eos, pad, 0.0 if g else 0.8, 0.95, gen)
                for (p, mode, ids), cont in zip(grp, conts):
                    f.write(json.dumps({"source": p.source, "index": p.index, "mode": mode, "prompt_ids": ids,
                                        "response_ids": cont}) + "\n")
                    n_tok += len(cont)
            f.flush()
            log(f"data: {min(i + batch, len(encoded))}/{len(encoded)} continuations, {n_tok} tokens, "
                f"{time.time() - t0:.0f}s" + ("" if greedy else " (sampled)"))
    return n_tok


def read_data(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
