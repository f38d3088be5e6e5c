"""The server load of ``test_server_load`` (16 openai clients; completions and chat, streaming
and not, cycling through the methods), sent to any URL, and reported.

Run it against a live server (``paradec serve ...``) to measure:
    python tests/helpers/load.py http://127.0.0.1:8000 --model smollm2-135m --requests 200 --clients 16
or, with ``--mt-bench N``, N multi-turn MT-Bench conversations (each turn sends the history back;
``--clients`` conversations at once), reporting tokens per forward by turn and tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass

import openai

# The load test_server_load sends: its prompts, methods and answer length.
MAX_TOKENS = 16
PROMPTS = [
    "abc abc abc", "hello world", "one two one two", "The cat sat on the", "xyz xyz", "aaaa bbbb",
    "Once upon a time", "1 2 3 4 5", "to be or not to be", "red green blue red",
]
METHODS = ["ar", "pld", "suffix", "recycle", "aded", "lookahead", "qdraft"]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


@dataclass(frozen=True)
class Job:
    i: int
    prompt: str
    chat: bool
    stream: bool
    method: str


@dataclass
class Outcome:
    text: str = ""
    tokens: int = 0
    latency: float = 0.0
    replica: str = ""
    error: BaseException | None = None


def mixed_jobs(n: int, methods=METHODS) -> list[Job]:
    return [Job(i, PROMPTS[i % len(PROMPTS)], bool(i % 2), bool((i // 2) % 2), methods[(i // 4) % len(methods)]) for i in range(n)]


async def one(client: openai.AsyncOpenAI, model: str, job: Job, max_tokens: int) -> Outcome:
    kw = dict(model=model, max_tokens=max_tokens, temperature=0, extra_body={"paradec": {"method": job.method}})
    t = time.perf_counter()
    out = Outcome()
    try:
        if job.chat:
            msgs = [{"role": "user", "content": job.prompt}]
            if job.stream:
                async for c in await client.chat.completions.create(messages=msgs, stream=True, **kw):
                    out.text += "".join(ch.delta.content or "" for ch in c.choices)
                    if c.usage:
                        out.tokens, out.replica = c.usage.completion_tokens, (c.model_extra or {}).get("paradec", {}).get("replica", "")
            else:
                r = await client.chat.completions.create(messages=msgs, **kw)
                out.text, out.tokens = r.choices[0].message.content, r.usage.completion_tokens
                out.replica = (r.model_extra or {}).get("paradec", {}).get("replica", "")
        else:
            if job.stream:
                async for c in await client.completions.create(prompt=job.prompt, stream=True, **kw):
                    out.text += "".join(ch.text for ch in c.choices)
                    if c.usage:
                        out.tokens, out.replica = c.usage.completion_tokens, (c.model_extra or {}).get("paradec", {}).get("replica", "")
            else:
                r = await client.completions.create(prompt=job.prompt, **kw)
                out.text, out.tokens = r.choices[0].text, r.usage.completion_tokens
                out.replica = (r.model_extra or {}).get("paradec", {}).get("replica", "")
    except openai.APIError as e:
        out.error = e
    out.latency = time.perf_counter() - t
    return out


def run_load(url: str, jobs: list[Job], clients: int = 16, model: str = "tiny", max_tokens: int = MAX_TOKENS,
             timeout: float = 120) -> tuple[dict[int, Outcome], float]:
    """Send ``jobs`` from ``clients`` concurrent clients; (outcome per job index, wall seconds)."""
    results: dict[int, Outcome] = {}

    async def worker(queue: asyncio.Queue) -> None:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout) as client:
            while not queue.empty():
                job = queue.get_nowait()
                results[job.i] = await one(client, model, job, max_tokens)

    async def main() -> float:
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        t = time.perf_counter()
        await asyncio.gather(*(worker(queue) for _ in range(clients)))
        return time.perf_counter() - t

    return results, asyncio.run(main())


def summary(results: dict[int, Outcome], wall: float) -> str:
    ok = [r for r in results.values() if r.error is None]
    lat = [r.latency for r in ok] or [0.0]
    tokens = sum(r.tokens for r in ok)
    return (f"{len(ok)}/{len(results)} ok, {len(ok) / wall:.1f} req/s, {tokens / wall:.0f} tokens/s, "
            f"latency p50 {percentile(lat, 0.5) * 1000:.0f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms, "
            f"mean {statistics.mean(lat) * 1000:.0f} ms, wall {wall:.2f} s")


def run_conversations(url: str, conversations: list[tuple[str, ...]], clients: int, model: str, max_tokens: int,
                      method: str | None = None) -> tuple[list[list[dict]], float]:
    """Each conversation's turns in order (the answers sent back as history); the ``paradec``
    stats of every turn, per conversation, and the wall seconds."""
    import httpx

    stats: list[list[dict]] = [[] for _ in conversations]
    ext = {"paradec": {"method": method}} if method else {}

    async def talk(client: httpx.AsyncClient, k: int) -> None:
        msgs: list[dict] = []
        for turn in conversations[k]:
            msgs.append({"role": "user", "content": turn})
            r = await client.post("/v1/chat/completions", json={"model": model, "messages": msgs, "max_tokens": max_tokens,
                                                                "temperature": 0, **ext})
            r.raise_for_status()
            d = r.json()
            msgs.append({"role": "assistant", "content": d["choices"][0]["message"]["content"]})
            stats[k].append(d["paradec"])

    async def main() -> float:
        queue: asyncio.Queue = asyncio.Queue()
        for k in range(len(conversations)):
            queue.put_nowait(k)

        async def worker() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                while not queue.empty():
                    await talk(client, queue.get_nowait())

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t

    return stats, asyncio.run(main())


def conversation_summary(stats: list[list[dict]], wall: float) -> str:
    turns = max(len(s) for s in stats)
    parts = []
    for t in range(turns):
        rows = [s[t] for s in stats if len(s) > t]
        parts.append(f"turn {t + 1}: {sum(r['committed'] for r in rows) / max(1, sum(r['forwards'] for r in rows)):.2f} tokens/forward")
    tokens = sum(r["new_tokens"] for s in stats for r in s)
    return f"{len(stats)} conversations, {', '.join(parts)}, {tokens / wall:.1f} tokens/s, wall {wall:.1f} s"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    ap.add_argument("--mt-bench", type=int, default=0, help="N multi-turn MT-Bench conversations instead")
    ap.add_argument("--method", default=None, help="paradec.method of every request (default: the server's)")
    a = ap.parse_args()
    if a.mt_bench:
        from paradec.suites import load_mt_bench

        convs = [q.turns for q in load_mt_bench()[: a.mt_bench]]
        st, wall = run_conversations(a.url, convs, a.clients, a.model, a.max_tokens, a.method)
        print(conversation_summary(st, wall))
        sys.exit(0)
    res, wall = run_load(a.url, mixed_jobs(a.requests), a.clients, a.model, a.max_tokens, timeout=600)
    print(summary(res, wall))
