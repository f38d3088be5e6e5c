"""Sequential drafter backends: a model that follows a token sequence and returns next-token
logits, with its own cache rolled back to the longest prefix it shares with the committed text.

``HFDrafter`` wraps any ``CausalLM`` (a smaller HF model, or an int8 copy of the target);
``LlamaCppDrafter`` runs a GGUF file through llama.cpp (``llama-cpp-python``), the cheapest
way to draft on a CPU.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..cache import KVCache, reusable_prefix
from .causal_lm import CausalLM


@runtime_checkable
class Drafter(Protocol):
    def reset(self, capacity: int) -> None: ...

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        """Follow ``tokens`` (reusing the cached prefix) and return logits after the last one [V]."""
        ...

    def feed(self, token: int) -> torch.Tensor:
        """Append one token and return the logits after it [V]."""
        ...

    def score(self, tokens: list[int], chain: list[int]) -> torch.Tensor:
        """Follow ``tokens + chain`` in one batched pass; return the logits after ``tokens`` and
        after each chain token [len(chain) + 1, V]."""
        ...

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` followed tokens."""
        ...


class HFDrafter:
    def __init__(self, model: CausalLM) -> None:
        self.model = model
        self.cache: KVCache | None = None
        self.cached: list[int] = []  # tokens whose KV sits in the cache

    def reset(self, capacity: int) -> None:
        self.cache = self.model.new_cache(capacity)
        self.cached = []

    def _follow_all_but_last(self, tokens: list[int]) -> None:
        """Make the cache hold ``tokens[:-1]``, reusing the longest cached prefix."""
        n = reusable_prefix(self.cached, tokens)
        self.truncate(n)
        if len(tokens) - 1 > n:
            self.model.prefill(torch.tensor([tokens[n:-1]]), self.cache)
            self.cached.extend(tokens[n:-1])

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        self._follow_all_but_last(tokens)
        return self.feed(tokens[-1])

    def score(self, tokens: list[int], chain: list[int]) -> torch.Tensor:
        self._follow_all_but_last(tokens)
        run = [tokens[-1], *chain]
        base, k = self.cache.seq_len, len(run)
        ids = torch.tensor([run])  # [1, k]
        pos = torch.arange(base, base + k)[None]  # [1, k]
        mask = torch.ones(k, base + k, dtype=torch.bool).tril_(base)[None]  # [1, k, base+k]
        logits = self.model.forward(ids, pos, self.cache, mask)[0]  # [k, V]
        self.cached.extend(run)
        return logits

    def truncate(self, n: int) -> None:
        self.cache.truncate(n)
        self.cached = self.cached[:n]

    def feed(self, token: int) -> torch.Tensor:
        base = self.cache.seq_len
        ids = torch.tensor([[token]])  # [1, 1]
        pos = torch.tensor([[base]])  # [1, 1]
        mask = torch.ones(1, 1, base + 1, dtype=torch.bool)  # [1, 1, base+1]
        logits = self.model.forward(ids, pos, self.cache, mask)[0, -1]  # [V]
        self.cached.append(token)
        return logits


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppDrafter:
    """A GGUF model run by llama.cpp; its KV cache is rolled back by resetting ``n_tokens``."""

    def __init__(self, gguf_path: str, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        from .llamacpp import open_llama

        self.llm = open_llama(
            gguf_path,
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=n_threads or torch.get_num_threads(),
            n_threads_batch=n_threads or torch.get_num_threads(),  # else it defaults to every core
            logits_all=False,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()
        # The first evaluation is slow (measured: up to 30 s under CPU contention, lazy set-up in
        # llama.cpp); pay it here, once, rather than inside the first request.
        self.llm.eval([self.llm.token_bos() if self.llm.token_bos() >= 0 else 0])
        self.llm.n_tokens = 0

    def reset(self, capacity: int) -> None:
        # n_ctx is the target's context window, which the decode loop never exceeds
        self.llm.n_tokens = 0

    def _eval(self, tokens: list[int]) -> torch.Tensor:
        self.llm.eval(tokens)  # drops cache entries past n_tokens, then appends
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))
        return torch.from_numpy(logits.copy())

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        cached = self.llm.input_ids[: self.llm.n_tokens].tolist()
        self.llm.n_tokens = reusable_prefix(cached, tokens)
        return self._eval(tokens[self.llm.n_tokens :])

    def feed(self, token: int) -> torch.Tensor:
        return self._eval([token])

    def score(self, tokens: list[int], chain: list[int]) -> torch.Tensor:
        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens].tolist()
        llm.n_tokens = reusable_prefix(cached, tokens)
        if len(tokens) - 1 > llm.n_tokens:
            llm.eval(tokens[llm.n_tokens : -1])
        run = [tokens[-1], *chain]
        n_past = llm.n_tokens
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        llm._batch.set_batch(batch=run, n_past=n_past, logits_all=True)  # logits at every position
        llm._ctx.decode(llm._batch)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(run), self.n_vocab))
        llm.input_ids[n_past : n_past + len(run)] = run
        llm.n_tokens = n_past + len(run)
        return torch.from_numpy(logits.copy())

    def truncate(self, n: int) -> None:
        self.llm.n_tokens = min(self.llm.n_tokens, n)
