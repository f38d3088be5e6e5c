"""What decoding a batch returns per sequence; the loop and FreeDave build it the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .stats import DiffusionStats


@dataclass
class DllmResult:
    tokens: list[int]  # the answer region, as decoded (length max_new_tokens)
    answer: list[int]  # tokens before the first EOS
    stats: DiffusionStats


def new_stats(prompts: list[list[int]], method: str, max_new_tokens: int) -> list[DiffusionStats]:
    """One DiffusionStats per prompt of a batch."""
    return [DiffusionStats(method=method, prompt_tokens=len(p), gen_length=max_new_tokens, batch_size=len(prompts))
            for p in prompts]


def fill_with_eos(answer: torch.Tensor, mask_id: int, eos_id: int) -> int:
    """End-of-text: the still-masked positions of one answer region [G] (a view, filled in place)
    become EOS instead of being decoded. Returns how many were filled."""
    still = answer == mask_id
    n = int(still.sum())
    answer[still] = eos_id
    return n


def results(answers: torch.Tensor, eos_id: int, stats: list[DiffusionStats], total_s: float) -> list[DllmResult]:
    """The batch's results from its decoded answer regions [B, G]; finishes each row's stats."""
    out = []
    for toks, st in zip(answers.tolist(), stats):
        ans = toks[: toks.index(eos_id)] if eos_id in toks else toks
        st.new_tokens = min(len(ans) + 1, len(toks))
        st.total_s = total_s
        st.stop_reason = "eos" if eos_id in toks else "length"
        out.append(DllmResult(toks, ans, st))
    return out
