"""A bounded load test: 16 concurrent openai clients send 200 requests (completions and chat,
streaming and not, several methods) to a live server on a tiny model; every response must be
complete and equal to the library's greedy output. Prints throughput and p50/p99 latency (the
numbers in docs/benchmarks.md come from this test)."""

from __future__ import annotations

import asyncio
import statistics
import time

import openai
import pytest

import paradec
from helpers.load import MAX_TOKENS, METHODS, PROMPTS, percentile
from helpers.server import live_server, metric

MODEL = "tiny"
CLIENTS = 16
REQUESTS = 200


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64"), paradec.load(tiny_model_dir, dtype="float64")


def test_concurrent_clients_all_complete_and_correct(engines):
    engine, ref = engines
    jobs = []
    for i in range(REQUESTS):
        prompt = PROMPTS[i % len(PROMPTS)]
        chat, stream, method = bool(i % 2), bool((i // 2) % 2), METHODS[(i // 4) % len(METHODS)]
        jobs.append((i, prompt, chat, stream, method))
    want = {}
    for _, prompt, chat, _, _ in jobs:
        key = (prompt, chat)
        if key not in want:
            src = [{"role": "user", "content": prompt}] if chat else prompt
            g = ref.generate(src, method="ar", chat=chat, max_new_tokens=MAX_TOKENS)
            want[key] = (g.text, len(g.token_ids))

    with live_server(engine, served_name=MODEL, max_queue=REQUESTS, max_active=CLIENTS) as url:
        results: dict[int, tuple[str, int, float]] = {}

        async def one(client: openai.AsyncOpenAI, job) -> None:
            i, prompt, chat, stream, method = job
            kw = dict(model=MODEL, max_tokens=MAX_TOKENS, temperature=0, extra_body={"paradec": {"method": method}})
            t = time.perf_counter()
            if chat:
                msgs = [{"role": "user", "content": prompt}]
                if stream:
                    text, usage = "", None
                    async for c in await client.chat.completions.create(messages=msgs, stream=True, **kw):
                        text += "".join(ch.delta.content or "" for ch in c.choices)
                        usage = c.usage or usage
                    n = usage.completion_tokens
                else:
                    r = await client.chat.completions.create(messages=msgs, **kw)
                    text, n = r.choices[0].message.content, r.usage.completion_tokens
            else:
                if stream:
                    text, usage = "", None
                    async for c in await client.completions.create(prompt=prompt, stream=True, **kw):
                        text += "".join(ch.text for ch in c.choices)
                        usage = c.usage or usage
                    n = usage.completion_tokens
                else:
                    r = await client.completions.create(prompt=prompt, **kw)
                    text, n = r.choices[0].text, r.usage.completion_tokens
            results[i] = (text, n, time.perf_counter() - t)

        async def worker(queue: asyncio.Queue) -> None:
            async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
                while not queue.empty():
                    await one(client, queue.get_nowait())

        async def main() -> float:
            queue: asyncio.Queue = asyncio.Queue()
            for job in jobs:
                queue.put_nowait(job)
            t = time.perf_counter()
            await asyncio.gather(*(worker(queue) for _ in range(CLIENTS)))
            return time.perf_counter() - t

        wall = asyncio.run(main())
        import httpx

        metrics = httpx.get(f"{url}/metrics").text

    assert len(results) == REQUESTS  # none lost
    for i, prompt, chat, stream, method in jobs:
        text, n, _ = results[i]
        assert (text, n) == want[(prompt, chat)], (i, prompt, chat, stream, method)
    ok = metric(metrics, "paradec_requests_total", endpoint="/v1/completions", status="200") + metric(
        metrics, "paradec_requests_total", endpoint="/v1/chat/completions", status="200"
    )
    assert ok == REQUESTS
    assert metric(metrics, "paradec_batch_size_count") > 0  # plain steps of concurrent requests ran batched
    latencies = [r[2] for r in results.values()]
    tokens = sum(r[1] for r in results.values())
    print(
        f"\nserver load test (tiny model, {CLIENTS} clients, {REQUESTS} requests, max_tokens {MAX_TOKENS}): "
        f"{REQUESTS / wall:.1f} req/s, {tokens / wall:.0f} tokens/s, latency p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, mean {statistics.mean(latencies) * 1000:.0f} ms, wall {wall:.2f} s, "
        f"worker busy {metric(metrics, 'paradec_worker_busy_seconds_total') / wall:.0%}, "
        f"mean batch {metric(metrics, 'paradec_batch_size_sum') / max(1.0, metric(metrics, 'paradec_batch_size_count')):.1f}"
    )
