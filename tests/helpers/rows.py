"""Shared by the batching tests (CPU and CUDA): ``forward_rows`` against one forward per request."""

from __future__ import annotations

import torch


def _prefilled(target, prompt):
    cache = target.new_cache(capacity=len(prompt) + 64)
    target.prefill(torch.tensor([prompt[:-1]]), cache)
    return cache


def _forward_rows_matches_single(target, prompts, atol):
    caches = [_prefilled(target, p) for p in prompts]
    alone = [_prefilled(target, p) for p in prompts]
    ids = torch.tensor([[p[-1]] for p in prompts])  # [B, 1]
    positions = torch.tensor([[len(p) - 1] for p in prompts])  # [B, 1]
    batched = target.forward_rows(ids, positions, caches)  # [B, 1, V]
    for b, p in enumerate(prompts):
        n = len(p) - 1
        one = target.forward(ids[b : b + 1], positions[b : b + 1], alone[b], torch.ones(1, 1, n + 1, dtype=torch.bool))
        torch.testing.assert_close(batched[b], one[0], atol=atol, rtol=0)
        assert caches[b].seq_len == alone[b].seq_len == n + 1
        for lb, la in zip(caches[b].layers, alone[b].layers):
            torch.testing.assert_close(lb.keys[:, :, : n + 1], la.keys[:, :, : n + 1], atol=atol, rtol=0)
            torch.testing.assert_close(lb.values[:, :, : n + 1], la.values[:, :, : n + 1], atol=atol, rtol=0)
