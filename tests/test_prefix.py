"""Kept prompt prefixes (``prefix.py``): on the native backend a prompt that begins like an
earlier one takes that prompt's keys and values and prefills only the rest, with the very bits a
whole prefill leaves (so no output changes); the store's matching, replacement and budget; the
torch backend never reuses; the benches decide who shares a store."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from paradec.models.native import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"native kernels unavailable: {kernels.unavailable_reason()}")

from helpers.lossless import VOCAB  # noqa: E402
from helpers.native_tiny import one_kernel_thread, tiny_hf, write_gguf  # noqa: E402
from helpers.tiny import tiny_llama  # noqa: E402
from paradec.decode import DecodeConfig, decode  # noqa: E402
from paradec.errors import ParadecError  # noqa: E402
from paradec.models.native.backend import NativeCausalLM  # noqa: E402
from paradec.models.native.gguf_model import read_gguf  # noqa: E402
from paradec.models.torch.hf import HFCausalLM  # noqa: E402
from paradec.prefix import PrefixCache  # noqa: E402
from paradec.proposers import Models, make_proposer  # noqa: E402
from paradec.proposers.base import NoDraft  # noqa: E402
from paradec.stats import DecodeStats  # noqa: E402


_one_kernel_thread = pytest.fixture(autouse=True, scope="module")(one_kernel_thread)


@pytest.fixture(scope="module")
def nat(tmp_path_factory):
    hf = tiny_hf("llama", seed=0, vocab=VOCAB, std=0.5)
    return NativeCausalLM(read_gguf(write_gguf(hf, tmp_path_factory.mktemp("prefix") / "t.gguf")))


def _prefilled(nat, tokens, prefixes=None):
    c = nat.new_cache(len(tokens) + 4)
    n = prefixes.restore(tokens, c) if prefixes is not None else 0
    if len(tokens) > n:
        nat.prefill(torch.tensor([tokens[n:]]), c)
    return c, n


def test_a_kept_prefix_plus_the_rest_is_bit_identical_to_a_whole_prefill(nat):
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(3, VOCAB, (90,), generator=gen).tolist()
    store = PrefixCache()
    c, n = _prefilled(nat, first, store)
    assert n == 0
    store.keep(first, c)
    for cut in (4, 17, 63, 64, 65, 89):  # new prompts sharing `cut` tokens with the kept one
        tail = torch.randint(3, VOCAB, (20,), generator=gen).tolist()
        tail[0] = (first[cut] + 1) % VOCAB if cut < len(first) else tail[0]
        prompt = first[:cut] + tail
        whole, _ = _prefilled(nat, prompt)
        part, reused = _prefilled(nat, prompt, store)
        assert reused == cut
        assert part.seq_len == whole.seq_len == len(prompt)
        assert np.array_equal(part.keys[:, :, : len(prompt)], whole.keys[:, :, : len(prompt)])
        assert np.array_equal(part.values[:, :, : len(prompt)], whole.values[:, :, : len(prompt)])
        nxt = torch.tensor([[5]])
        mask = torch.ones(1, 1, len(prompt) + 1, dtype=torch.bool)
        pos = torch.tensor([[len(prompt)]])
        assert torch.equal(nat.forward(nxt, pos, part, mask), nat.forward(nxt, pos, whole, mask))


def test_matching_replacement_and_budget(nat):
    c, _ = _prefilled(nat, list(range(3, 43)))  # 40 tokens prefilled
    per = c.slot_bytes
    store = PrefixCache(max_bytes=50 * per, min_tokens=4)
    store.keep(list(range(3, 23)), c)  # 20 tokens
    assert len(store) == 1 and store.nbytes == 20 * per
    store.keep(list(range(3, 13)), c)  # a prefix of a kept prompt: nothing new
    assert len(store) == 1
    store.keep(list(range(3, 33)), c)  # extends the kept prompt: replaces it
    assert len(store) == 1 and store.nbytes == 30 * per
    other = [70] * 10 + list(range(13, 33))
    o, _ = _prefilled(nat, other)
    store.keep(other, o)  # 30 + 30 > 50: the least recently used goes
    assert len(store) == 1 and store.nbytes == 30 * per
    fresh = nat.new_cache(8)
    assert store.restore(list(range(3, 20)), fresh) == 0  # it was evicted
    assert store.restore([70] * 10 + [1, 2], nat.new_cache(16)) == 10
    assert store.restore([70, 70, 70, 1], nat.new_cache(8)) == 0  # 3 < min_tokens
    long = list(range(3, 43))
    big = PrefixCache(max_bytes=25 * per)
    big.keep(long, c)  # longer than the budget: its first 25 tokens are kept
    assert big.nbytes == 25 * per and big.restore(long, nat.new_cache(48)) == 25
    with pytest.raises(ParadecError):
        big.restore(long, c)  # not an empty cache
    with pytest.raises(ParadecError):
        PrefixCache(max_bytes=-1)
    PrefixCache(max_bytes=0).keep(long, c)  # a zero budget keeps nothing (and does not fail)
    few = PrefixCache(max_entries=2)
    for i in range(4):  # four different prompts: the two most recent stay
        few.keep([60 + i] + list(range(3, 12)), c)
    assert len(few) == 2 and few.restore([63] + list(range(3, 12)), nat.new_cache(16)) == 10
    assert few.restore([60] + list(range(3, 12)), nat.new_cache(16)) == 0


def test_concurrent_requests_share_one_store(nat):
    store = PrefixCache()
    shared = list(range(3, 30))
    c, _ = _prefilled(nat, shared)
    store.keep(shared, c)
    got, errors = [], []

    def one(i):
        try:
            prompt = shared + [40 + i, 41 + i]
            cache, n = _prefilled(nat, prompt, store)
            store.keep(prompt, cache)
            got.append(n)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(got) == [len(shared)] * 6


@pytest.mark.parametrize("method", ["ar", "suffix", "auto"])
def test_decoding_with_kept_prefixes_gives_the_same_tokens(nat, method):
    """Requests that share a system-prompt-like head: the second and later take it from the
    store (stats say how much) and decode exactly what a full prefill gives."""
    head = [1, 9, 8, 7, 6, 5, 4, 3, 9, 8, 7, 6]
    prompts = [head + [20 + i, 21, 22 + i, 21] for i in range(4)]
    store = PrefixCache()
    for i, p in enumerate(prompts):
        plain, with_store = DecodeStats(), DecodeStats()
        cfg = DecodeConfig(max_new_tokens=24)
        models = Models(nat)
        want = [t for s in decode(nat, make_proposer(method, models) if method != "ar" else NoDraft(), p, cfg, plain) for t in s]
        got = [t for s in decode(nat, make_proposer(method, models) if method != "ar" else NoDraft(), p, cfg, with_store,
                                 prefixes=store) for t in s]
        assert got == want
        assert plain.cached_prompt_tokens == 0
        assert with_store.cached_prompt_tokens == (len(head) if i else 0)  # the head, from the previous prompt


@pytest.mark.parametrize("n_prompt", [1, 2, 12, 64, 65, 150])
def test_the_prompts_last_tokens_ride_the_first_steps_forward(nat, n_prompt, monkeypatch):
    """The first step's forward also prefills the prompt's last tokens (up to one chunk): its
    logits are bit for bit those of a separate prefill and forward, and so is the cache."""
    import paradec.decode as D

    prompt = torch.randint(3, VOCAB, (n_prompt,), generator=torch.Generator().manual_seed(n_prompt)).tolist()
    draft_tokens = [5, 6, 7]

    class Chain:  # a fixed three-token draft
        name = "chain"

        def begin(self, prompt, sampling):
            pass

        def propose(self, ctx):
            from paradec.tree import DraftTree

            return DraftTree(tuple(draft_tokens), (-1, 0, 1))

        def observe(self, result):
            pass

    def first_step(merged_rows):
        monkeypatch.setattr(D, "MERGED_PROMPT_ROWS", merged_rows)
        dec = D.Decoder(nat, Chain(), prompt, D.DecodeConfig(max_new_tokens=8))
        step = dec.prepare()
        logits = dec.forward(step)
        return step, logits, dec

    rows = D.MERGED_PROMPT_ROWS
    assert rows >= 16
    sep_step, sep_logits, sep = first_step(0)
    step, logits, dec = first_step(rows)
    assert sep_step.prompt_rows == 0
    assert step.prompt_rows == min(n_prompt - 1, rows)
    assert not step.plain and step.ids.shape[1] == step.prompt_rows + len(draft_tokens) + 1
    assert torch.equal(logits, sep_logits)  # [n+1, V]
    n = sep.cache.length
    assert dec.cache.length == n
    assert np.array_equal(dec.cache.keys[:, :, :n], sep.cache.keys[:, :, :n])
    assert np.array_equal(dec.cache.values[:, :, :n], sep.cache.values[:, :, :n])
    assert dec.commit(logits) == sep.commit(sep_logits)
    assert dec.stats.prefill_s > 0 and dec.stats.forward_s >= 0


@pytest.mark.parametrize("method", ["ar", "suffix", "auto"])
def test_decoding_with_the_prompts_end_in_the_first_step_gives_the_same_tokens(nat, method, monkeypatch):
    """Whole requests, with and without the merged first step, with a store filled after it
    (the next request takes its head from there): the same tokens every time."""
    import paradec.decode as D

    head = [3 + (7 * i) % (VOCAB - 3) for i in range(77)]  # longer than one merged chunk
    prompts = [head + [10 + i, 11, 12 + i] for i in range(3)]
    got = {}
    for rows in (0, D.MERGED_PROMPT_ROWS):
        monkeypatch.setattr(D, "MERGED_PROMPT_ROWS", rows)
        store, models = PrefixCache(), Models(nat)
        for i, p in enumerate(prompts):
            stats = DecodeStats()
            proposer = make_proposer(method, models) if method != "ar" else NoDraft()
            got.setdefault(i, []).append([t for s in decode(nat, proposer, p, DecodeConfig(max_new_tokens=24), stats,
                                                            prefixes=store) for t in s])
            assert stats.cached_prompt_tokens == (len(head) if i else 0)
    assert all(a == b for a, b in got.values())


def test_the_torch_backend_never_reuses():
    hf = tiny_llama(vocab=VOCAB)
    target = HFCausalLM(hf)
    store = PrefixCache()
    p = [1, 9, 8, 7, 6, 5, 4, 3, 9, 8]
    for _ in range(2):
        st = DecodeStats()
        list(decode(target, NoDraft(), p, DecodeConfig(max_new_tokens=4), st, prefixes=store))
        assert st.cached_prompt_tokens == 0
    assert len(store) == 0


class _Recorder:
    """An engine stand-in that records the keyword arguments of ``generate``."""

    eos_ids = frozenset({2})
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.kwargs = []

    def generate(self, ids, **kw):
        self.kwargs.append(kw)
        stats = DecodeStats(new_tokens=1)
        return type("G", (), {"token_ids": [5], "text": "x", "stats": stats})()

    def constraint(self, fmt):
        return type("C", (), {"eos": 2})()


def test_the_benches_decide_who_shares_kept_prefixes():
    """The speed bench prefills every prompt in full (its llama.cpp rows reset their cache);
    in the structured suite each paradec row keeps its own prefixes, as its own server would
    (never another row's run of the same prompt)."""
    from paradec.bench.runners.paradec_runner import ParadecRunner
    from paradec.bench.structured import Row, StructuredConfig, _paradec

    eng = _Recorder()
    r = ParadecRunner.__new__(ParadecRunner)
    r.engine, r.name = eng, "ar"
    r.run([1, 2, 3], 4, 0.0, 0)
    assert eng.kwargs[-1]["prefix_cache"] is False
    a, b = Row("ar", "paradec", prefixes=PrefixCache()), Row("auto", "paradec", prefixes=PrefixCache())
    for row in (a, b):
        _paradec(eng, row, {"schema": {"type": "object"}}, [1, 2, 3], StructuredConfig())
        assert eng.kwargs[-1]["prefix_cache"] is row.prefixes
    assert a.prefixes is not b.prefixes


@pytest.mark.slow
def test_real_model_reuses_the_system_prompt_with_the_same_output():
    """The default model on the native backend: chat requests share the chat template's system
    prompt, so the second and later take it from the engine's store; the tokens are those of a
    full prefill, for plain decoding and a drafter, unconstrained and under a schema."""
    import paradec

    eng = paradec.load()
    assert eng.backend == "native" and eng.prefixes is not None
    eng.prefixes.clear()
    questions = ["Name three primary colors.", "What is the capital of France?", "Count from one to five."]
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"]}
    for i, q in enumerate(questions):
        for method, fmt in (("ar", None), ("suffix", None), ("auto", schema)):
            full = eng.generate([{"role": "user", "content": q}], method=method, max_new_tokens=24, response_format=fmt,
                                prefix_cache=False)
            kept = eng.generate([{"role": "user", "content": q}], method=method, max_new_tokens=24, response_format=fmt)
            assert kept.token_ids == full.token_ids, f"{method} on {q!r}"
            assert full.stats.cached_prompt_tokens == 0
            assert kept.stats.cached_prompt_tokens >= (10 if i or method != "ar" else 0)
