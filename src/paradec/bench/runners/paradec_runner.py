"""paradec's own methods, each with its tuned defaults, through ``Engine.generate``."""

from __future__ import annotations

import time

from .base import RunOutput, Runner


class ParadecRunner(Runner):
    kind = "paradec"

    def __init__(self, engine, method: str) -> None:
        from ...proposers import METHODS

        self.engine, self.name = engine, method
        self.description = METHODS[method][0]

    def run(self, prompt_ids, max_new_tokens, temperature, seed) -> RunOutput:
        t0 = time.perf_counter()
        g = self.engine.generate(
            list(prompt_ids),
            method=self.name,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed if temperature > 0 else None,
            prefix_cache=False,  # every row prefills its prompt in full (the llama.cpp rows reset theirs)
        )
        _sync(self.engine.device)
        seconds = time.perf_counter() - t0
        s = g.stats
        return RunOutput(
            token_ids=list(g.token_ids),
            seconds=seconds,
            forwards=s.forwards,
            forward_tokens=s.forwards + s.drafted,
            committed=s.committed,
            accept_lengths=list(s.accept_lengths),
            draft_s=s.draft_s,
            forward_s=s.forward_s,
            verify_s=s.verify_s,
            prefill_s=s.prefill_s,
        )


def _sync(device) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.synchronize(device)
