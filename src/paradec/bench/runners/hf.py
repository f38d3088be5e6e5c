"""Hugging Face transformers ``generate`` peers on the very model object paradec runs (same
weights, dtype and device): plain greedy/sampling, prompt lookup, and assisted generation."""

from __future__ import annotations

import time
import warnings

from .base import RunOutput, Runner, cut_at_eos

PROMPT_LOOKUP_TOKENS = 10  # transformers' documented choice for prompt_lookup_num_tokens


class HFRunner(Runner):
    MODES = {
        "hf": "transformers generate (plain decoding)",
        "hf-pld": f"transformers prompt lookup (prompt_lookup_num_tokens={PROMPT_LOOKUP_TOKENS})",
        "hf-assisted": "transformers assisted generation with the draft model",
    }

    def __init__(self, engine, name: str) -> None:
        self.engine, self.name = engine, name
        self.description = self.MODES[name]
        self.model = engine.hf_model
        self.assistant = None

    def prepare(self) -> None:
        if self.name == "hf-assisted":
            if self.engine.draft is None:
                raise RuntimeError("needs --draft-model")
            self.assistant = self.engine.draft.model

    def _kwargs(self, max_new_tokens: int, temperature: float) -> dict:
        tok = self.engine.tokenizer
        eos = sorted(self.engine.eos_ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
        kw: dict = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos or None, pad_token_id=pad)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        kw.update(repetition_penalty=None, num_beams=1)
        if self.name == "hf-pld":
            kw["prompt_lookup_num_tokens"] = PROMPT_LOOKUP_TOKENS
        elif self.name == "hf-assisted":
            kw["assistant_model"] = self.assistant
        return kw

    def run(self, prompt_ids, max_new_tokens, temperature, seed) -> RunOutput:
        import torch

        device = self.engine.device
        sizes: list[int] = []

        def count(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            sizes.append(int(ids.shape[-1]) if ids is not None else 1)

        kw = self._kwargs(max_new_tokens, temperature)
        ids = torch.tensor([list(prompt_ids)], device=device)
        handle = self.model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            if temperature > 0:
                torch.manual_seed(seed)
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - t0
        finally:
            handle.remove()
        new = out[0, ids.shape[1] :].tolist()
        tokens = cut_at_eos(new, self.engine.eos_ids, max_new_tokens)
        forwards = len(sizes)
        # the first call is the prefill, which also yields the first token: count it as 1 token
        forward_tokens = (1 + sum(sizes[1:])) if sizes else None
        return RunOutput(
            token_ids=tokens, seconds=seconds, forwards=forwards or None, forward_tokens=forward_tokens, committed=len(new)
        )
