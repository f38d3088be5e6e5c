"""Continuous batching: plain decoding steps of several requests in one forward, each row on its
own KV cache (``HFCausalLM.forward_rows``), and the server's scheduler using it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

import paradec
from helpers.tiny import tiny_llama, tiny_target
from paradec.decode import DecodeConfig, Decoder
from paradec.models.torch.hf import HFCausalLM
from paradec.proposers.base import NoDraft
from paradec.proposers.pld import PLDConfig, PromptLookup
from helpers.rows import _forward_rows_matches_single
from helpers.server import live_server, metric

PROMPTS = [[5, 6, 7, 8, 9], [11, 12], list(range(20, 50)), [4, 4, 4, 4, 4, 4, 4]]


@pytest.mark.parametrize("fast", [False, True])  # transformers' forward and the lean path
def test_forward_rows_equals_one_forward_per_request(fast):
    target = HFCausalLM(tiny_llama(0), fast=fast)
    assert (target.lean is not None) == fast
    _forward_rows_matches_single(target, PROMPTS, atol=1e-10)


def test_forward_rows_with_sliding_window_layers():
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], attn_implementation="sdpa",
    )
    target = HFCausalLM(Gemma3ForCausalLM(cfg).to(torch.float64).eval())
    assert target._sliding_window == 4
    _forward_rows_matches_single(target, PROMPTS, atol=1e-10)


def _alone(target, make, prompt, n):
    dec, out = Decoder(target, make(), prompt, DecodeConfig(max_new_tokens=n)), []
    while (e := dec.step()) is not None:
        out += e
    return out


@pytest.mark.parametrize("make", [NoDraft, lambda: PromptLookup(PLDConfig())], ids=["ar", "pld"])
def test_requests_joining_and_leaving_a_batch_decode_exactly_as_alone(make):
    """Rows start at different rounds and stop at different lengths; plain steps run batched,
    drafted steps alone; every request's tokens equal its decoding alone."""
    target = tiny_target(1)
    lengths = [9, 20, 14, 25]
    want = [_alone(target, make, p, n) for p, n in zip(PROMPTS, lengths)]
    decs = [Decoder(target, make(), p, DecodeConfig(max_new_tokens=n)) for p, n in zip(PROMPTS, lengths)]
    got: list[list[int]] = [[] for _ in PROMPTS]
    batched_rows = 0
    for rnd in range(200):
        live = [(i, d) for i, d in enumerate(decs) if i <= rnd // 3]  # request i joins at round 3i
        plain = []
        for i, d in live:
            if (step := d.prepare()) is None:
                continue
            if step.plain:
                plain.append((i, d, step))
            else:
                got[i] += d.commit(target.forward(step.ids, step.positions, step.cache, step.mask)[0])
        if plain:
            logits = target.forward_rows(
                torch.cat([s.ids for _, _, s in plain]), torch.cat([s.positions for _, _, s in plain]),
                [s.cache for _, _, s in plain],
            )
            batched_rows += len(plain) if len(plain) > 1 else 0
            for j, (i, d, _) in enumerate(plain):
                got[i] += d.commit(logits[j])
        if all(d.done for d in decs):
            break
    assert got == want
    assert batched_rows > 0


def _concurrent_ar(url: str, prompts: list[str], max_tokens: int) -> list[str]:
    async def one(client: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "paradec": {"method": "ar"}}
        r = await client.post(f"{url}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    async def main() -> list[str]:
        async with httpx.AsyncClient() as client:
            return list(await asyncio.gather(*(one(client, p) for p in prompts)))

    return asyncio.run(main())


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64"), paradec.load(tiny_model_dir, dtype="float64")


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "no-batch"])
def test_server_batches_plain_steps_only_when_enabled(engines, batch):
    engine, ref = engines
    prompts = ["abc abc", "hello there", "one two three", "The cat sat", "xyz", "red green blue", "1 2 3", "to be"]
    want = [ref.generate(p, method="ar", chat=False, max_new_tokens=24).text for p in prompts]
    with live_server(engine, served_name="tiny", batch=batch, max_active=8) as url:
        got = _concurrent_ar(url, prompts, 24)
        text = httpx.get(f"{url}/metrics").text
    assert got == want
    batches = metric(text, "paradec_batch_size_count")
    assert (batches > 0) if batch else (batches == 0)
