"""Quality of a converted model on held-out prompts (never trained on):

- masked-token accuracy per block position: fully masked blocks over the AR model's greedy
  continuation; position 0 is the clean token's own (AR) prediction;
- one-token-per-step decoding (the dLLM loop's ``one`` policy, the converted model's quality
  reference): the perplexity the AR model assigns to that output, next to the perplexity of the
  AR model's own greedy output, and how many leading tokens the two share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .train import ConvertConfig, masked_accuracy
from ..distill.data import DataConfig, TextPrompt, generate_data, read_data
from ..dllm.converted import BlockDiffusionAR


def pick(prompts: list[TextPrompt], n: int) -> list[TextPrompt]:
    """``n`` prompts spread evenly over the list (so every source is represented)."""
    if n >= len(prompts):
        return list(prompts)
    return [prompts[(i * len(prompts)) // n] for i in range(n)]


@torch.no_grad()
def ar_nll(model: BlockDiffusionAR, prompt: list[int], cont: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of ``cont`` after ``prompt`` under the base AR model."""
    if not cont:
        return 0.0, 0
    ids = torch.tensor([prompt + cont], device=model.device)
    logits = model.hf(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # [n, V]
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(cont, device=logits.device), reduction="sum")
    return float(nll), len(cont)


def _until_eos(toks: list[int], eos: int) -> list[int]:
    return toks[: toks.index(eos) + 1] if eos in toks else toks


@dataclass(frozen=True)
class QualityConfig:
    """What ``quality`` measures on the held-out prompts."""

    prompts: int = 24  # held-out prompts
    gen: int = 64  # tokens generated per prompt (AR greedy, and the dLLM one token per step)
    blocks: tuple[int, ...] = (4, 8, 16)  # block sizes of the masked-token accuracy


def quality(model: BlockDiffusionAR, tokenizer, heldout: list[TextPrompt], cfg: ConvertConfig, qcfg: QualityConfig,
            path, log=print) -> dict:
    from ..dllm.converted_dlm import ConvertedDLM
    from ..dllm.loop import generate
    from ..dllm.methods import make_settings

    gen, blocks = qcfg.gen, qcfg.blocks
    chosen = pick(heldout, qcfg.prompts)
    log(f"quality: greedy AR continuations of {len(chosen)} held-out prompts")
    generate_data(model.hf, tokenizer, path, chosen, DataConfig(max_new_tokens=gen, samples=0, batch=8), log=log)
    rows = [r for r in read_data(path) if r["response_ids"]]
    acc = {str(b): masked_accuracy(model, rows, b, cfg) for b in blocks if b <= cfg.max_block}
    for b, a in acc.items():
        log(f"masked-token accuracy, block {b}: {a['per_position']}")
    dlm = ConvertedDLM(model, tokenizer, block_size=cfg.block_size)
    s, _ = make_settings("one", {"block_size": str(cfg.block_size)}, gen_length=gen, eos_id=dlm.spec.eos_id)
    res = generate(dlm, [r["prompt_ids"] for r in rows], s, batch_size=4)
    eos = dlm.spec.eos_id
    nll_d = n_d = nll_a = n_a = 0.0
    shared = []
    for r, out in zip(rows, res):
        d_toks = _until_eos(out.tokens, eos)
        a, k = ar_nll(model, r["prompt_ids"], d_toks)
        nll_d, n_d = nll_d + a, n_d + k
        a, k = ar_nll(model, r["prompt_ids"], r["response_ids"])
        nll_a, n_a = nll_a + a, n_a + k
        same = 0
        while same < min(len(d_toks), len(r["response_ids"])) and d_toks[same] == r["response_ids"][same]:
            same += 1
        shared.append(same)
    return {
        "heldout_prompts": [p.id for p in chosen],
        "masked_accuracy": acc,
        "one_token_per_step": {
            "gen_length": gen, "block_size": cfg.block_size,
            "ar_perplexity_of_dllm_output": round(math.exp(nll_d / max(n_d, 1)), 3),
            "ar_perplexity_of_ar_greedy_output": round(math.exp(nll_a / max(n_a, 1)), 3),
            "mean_leading_tokens_equal_to_ar": round(sum(shared) / max(len(shared), 1), 2),
            "forwards_per_token": round(sum(o.stats.forwards for o in res) / max(sum(o.stats.committed for o in res), 1), 3),
        },
    }
