"""paradec bench: suite loading, metrics on hand-made samples, the roofline arithmetic, the
report writer, and option validation (all without loading a model)."""

from __future__ import annotations

import json

import pytest

from paradec.bench.config import BenchConfig, parse_methods, parse_peers, validate
from paradec.bench.metrics import OVERALL, Sample, accept_histogram, aggregate, identical_to, summarize
from paradec.bench.report import markdown, write_report
from paradec.bench.roofline import forward_time, ideal_speedup
from paradec.bench.runners import cut_at_eos
from paradec.suites import OWN_SUITES, SUITES, BenchPrompt, load_suite, load_suites, parse_suites, run_order, spread
from paradec.errors import ParadecError


# ---- suites -------------------------------------------------------------------------------------
def test_mt_bench_has_80_two_turn_questions():
    ps = load_suite("mt_bench")
    assert len(ps) == 80
    assert all(len(p.turns) == 2 and all(t.strip() for t in p.turns) for p in ps)
    assert len({p.meta["subcategory"] for p in ps}) == 8
    assert len({p.id for p in ps}) == 80


def test_humaneval_has_164_problems_chat_and_raw():
    ps = load_suite("humaneval")
    assert len(ps) == 164
    p = ps[0]
    assert p.id == "HumanEval/0" and p.raw.lstrip().startswith(("from", "def", "import"))
    assert len(p.turns) == 1 and p.raw in p.turns[0] and "```python" in p.turns[0]


@pytest.mark.parametrize("name", OWN_SUITES)
def test_own_suites_have_at_least_20_prompts(name):
    ps = load_suite(name)
    assert len(ps) >= 20
    assert len({p.id for p in ps}) == len(ps)
    assert all(p.category == name and len(p.turns) == 1 and len(p.turns[0]) > 20 for p in ps)
    if name in ("summarization", "rag"):  # several hundred tokens of source text
        assert min(len(p.turns[0].split()) for p in ps) >= 200


def test_spread_and_per_category_limit():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread([1, 2], 5) == [1, 2] and spread([1, 2], None) == [1, 2]
    ps = load_suites(["mt_bench", "qa"], per_category=2)
    assert [p.category for p in ps] == ["mt_bench", "mt_bench", "qa", "qa"]
    assert ps[0].meta["subcategory"] != ps[1].meta["subcategory"]  # spread over sub-categories


def test_run_order_interleaves_categories_in_proportion_and_spreads_each():
    sizes = {"a": 80, "b": 164, "c": 21}
    prompts = [BenchPrompt(f"{c}/{i}", c, ("q",)) for c, n in sizes.items() for i in range(n)]
    order = run_order(prompts)
    assert sorted(order) == list(range(len(prompts)))  # a permutation: every prompt once
    total = len(prompts)
    for cut in (10, 40, 100, 200, total):  # every prefix holds each category in proportion
        head = [prompts[i] for i in order[:cut]]
        for c, n in sizes.items():
            got = sum(p.category == c for p in head)
            assert abs(got - cut * n / total) <= 1.5, (cut, c, got)
    # inside a category, a prefix covers the whole suite: the first 4 of "a" are one per quarter
    first_a = [int(prompts[i].id.split("/")[1]) for i in order if prompts[i].category == "a"][:4]
    assert sorted(q // 20 for q in first_a) == [0, 1, 2, 3]


def test_parse_suites():
    assert parse_suites("all")[0] == list(SUITES)
    assert parse_suites("qa, math,qa") == (["qa", "math"], [])
    with pytest.raises(ParadecError, match="unknown suite 'nope'"):
        parse_suites("qa,nope")


# ---- metrics on hand-made samples ----------------------------------------------------------------
def _s(runner, cat, tokens, seconds, forwards=None, committed=None, fed=None, draft_s=None, ident=None, acc=(), **kw):
    return Sample(runner, cat, f"{cat}/0", 0, 0, 10, tokens, seconds, forwards=forwards, forward_tokens=fed,
                  committed=committed, accept_lengths=list(acc), draft_s=draft_s, identical=ident, **kw)


def test_time_per_forward_splits_draft_forward_verify_and_the_rest():
    timed = dict(forward_s=0.5, verify_s=0.05, prefill_s=0.1)
    samples = [
        _s("auto", "qa", 30, 1.0, forwards=10, committed=30, draft_s=0.2, **timed),
        _s("auto", "qa", 10, 1.0, forwards=10, committed=10, draft_s=0.0, **timed),
    ]
    a = aggregate(samples, "auto", "qa")
    # per forward over 20 forwards: draft 0.2 s, forward 1.0 s, verify 0.1 s, prefill 0.2 s, other the rest
    assert a.step_ms == pytest.approx({"draft": 10.0, "forward": 50.0, "verify": 5.0, "other": 25.0})
    assert a.prefill_share == pytest.approx(0.1)
    assert aggregate([_s("hf", "qa", 30, 1.0, forwards=12)], "hf", "qa").step_ms is None  # a peer: no split
    untimed = aggregate([_s("pld", "qa", 30, 1.0, forwards=12, committed=30, draft_s=0.1)], "pld", "qa")
    assert untimed.step_ms is None  # only when every sample has every part


def test_aggregate_accepted_tokens_identity_and_draft_share():
    samples = [
        _s("pld", "qa", 30, 1.0, forwards=10, committed=31, fed=40, draft_s=0.1, ident=True, acc=[4, 1, 3]),
        _s("pld", "qa", 10, 1.0, forwards=5, committed=10, fed=20, draft_s=0.3, ident=False, acc=[2, 2]),
        _s("pld", "math", 20, 2.0, forwards=20, committed=20, fed=20, draft_s=0.0, ident=True),
    ]
    qa = aggregate(samples, "pld", "qa")
    assert qa.samples == 2 and qa.tokens == 40 and qa.tokens_per_s == pytest.approx(20.0)
    assert qa.mean_accepted == pytest.approx(41 / 15)  # committed per forward
    assert qa.forwards_per_token == pytest.approx(15 / 40)
    assert qa.mean_forward_tokens == pytest.approx(60 / 15)
    assert qa.draft_share == pytest.approx(0.4 / 2.0)
    assert (qa.identical, qa.compared, qa.identity_rate) == (1, 2, 0.5)
    allr = aggregate(samples, "pld", OVERALL)
    assert allr.tokens == 60 and allr.tokens_per_s == pytest.approx(15.0) and allr.identity_rate == pytest.approx(2 / 3)
    assert accept_histogram(samples, "pld") == {1: 1, 2: 2, 3: 1, 4: 1}


def test_peer_without_internals_counts_tokens_per_forward():
    s = aggregate([_s("hf-pld", "qa", 30, 1.0, forwards=12)], "hf-pld", "qa")
    assert s.mean_accepted == pytest.approx(2.5) and s.draft_share is None and s.identity_rate is None
    s = aggregate([_s("llama.cpp", "qa", 30, 1.0)], "llama.cpp", "qa")  # no forward count at all
    assert s.mean_accepted is None and s.forwards_per_token is None


def test_summarize_speedups_vs_ar_and_hf():
    samples = [
        _s("ar", "qa", 40, 2.0), _s("ar", "math", 10, 1.0),
        _s("hf", "qa", 40, 4.0), _s("hf", "math", 10, 1.0),
        _s("pld", "qa", 40, 1.0), _s("pld", "math", 10, 0.5),
    ]
    t = summarize(samples, ["ar", "hf", "pld"], ["qa", "math"])
    assert t["pld"]["qa"].speedup_vs_ar == pytest.approx(2.0)
    assert t["pld"]["qa"].speedup_vs_hf == pytest.approx(4.0)
    assert t["pld"]["math"].speedup_vs_ar == pytest.approx(2.0)
    assert t["pld"][OVERALL].speedup_vs_ar == pytest.approx((50 / 1.5) / (50 / 3.0))
    assert t["ar"]["qa"].speedup_vs_ar == pytest.approx(1.0)
    assert t["hf"]["qa"].speedup_vs_ar == pytest.approx(0.5)
    # no hf row: no speedup against it
    t = summarize(samples, ["ar", "pld"], ["qa"], hf="missing")
    assert t["pld"]["qa"].speedup_vs_hf is None


def test_identity_and_eos_cut():
    assert identical_to([1, 2, 3], [1, 2, 3]) is True
    assert identical_to([1, 2, 3], [1, 2]) is False
    assert identical_to(None, [1]) is None
    assert cut_at_eos([5, 6, 2, 7], {2}, 10) == [5, 6, 2]
    assert cut_at_eos([5, 6, 7, 8], {2}, 3) == [5, 6, 7]


def test_roofline_interpolation_and_ideal_speedup():
    curve = {1: 0.010, 2: 0.011, 4: 0.012, 8: 0.016}
    assert forward_time(curve, 1) == pytest.approx(0.010)
    assert forward_time(curve, 3) == pytest.approx(0.0115)
    assert forward_time(curve, 16) == pytest.approx(0.024)  # extrapolated from the last segment
    assert ideal_speedup(curve, 1.0, 1.0) == pytest.approx(1.0)
    assert ideal_speedup(curve, 3.0, 4.0) == pytest.approx(3.0 * 0.010 / 0.012)
    assert ideal_speedup(curve, None, 4.0) is None


# ---- report writer -------------------------------------------------------------------------------
def fake_result() -> dict:
    samples = [
        _s("ar", "qa", 40, 2.0, forwards=40, committed=40, fed=40, draft_s=0.0, ident=True, acc=[1] * 40),
        _s("pld", "qa", 40, 1.0, forwards=16, committed=40, fed=64, draft_s=0.1, ident=True, acc=[3, 2, 1, 4] * 4,
           forward_s=0.64, verify_s=0.08, prefill_s=0.1),
        _s("hf", "qa", 40, 2.2, forwards=40),
    ]
    table = summarize(samples, ["ar", "pld", "hf", "llama.cpp"], ["qa"])
    curve = {1: 0.01, 2: 0.011, 4: 0.012}
    for r in table.values():
        for s in r.values():
            s.ideal_speedup = ideal_speedup(curve, s.mean_accepted, s.mean_forward_tokens)
    rows = [
        {"name": n, "kind": k, "description": "", "status": "ok", "error": "", "peak_rss_mb": 500.0, "rss_mb": 480.0, "peak_gpu_mb": None}
        for n, k in [("ar", "paradec"), ("pld", "paradec"), ("hf", "peer")]
    ] + [{"name": "llama.cpp", "kind": "peer", "description": "", "status": "failed",
          "error": "RuntimeError: no GGUF", "peak_rss_mb": None, "rss_mb": None, "peak_gpu_mb": None}]
    return {
        "date": "2025-01-01 00:00 UTC", "command": "paradec bench --quick",
        "config": {"model": "tiny", "draft_model": None, "dtype": "float32", "device": "cpu", "temperature": 0.0,
                   "max_new_tokens": 40, "repeats": 1, "chat_template": True, "llama_cpp_quantization": "Q4_1",
                   "skipped_suites": []},
        "machine": {"cpu": "test cpu", "cpu_count": 2, "torch_threads": 2},
        "categories": ["qa"], "prompts": {"qa": 1}, "rows": rows,
        "roofline": {"prompt_tokens": 100, "k": list(curve), "seconds": list(curve.values())},
        "summary": {r: {c: s.to_dict() for c, s in table[r].items()} for r in table},
        "samples": [s.to_dict() for s in samples], "skipped": [], "wall_s": 12.0,
    }


def test_report_writes_markdown_and_pngs(tmp_path):
    result = fake_result()
    paths = write_report(result, str(tmp_path / "rep"))
    for key in ("report", "speedup", "accept_hist", "roofline"):
        p = tmp_path / "rep" / paths[key].split("/")[-1]
        assert p.is_file() and p.stat().st_size > 0
        if key != "report":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "paradec bench --quick" in md and "## Roofline" in md and "Q4_1" in md
    assert "| pld | 40.0 | 2.00x |" in md  # tokens/s and speedup vs ar
    assert "llama.cpp`: RuntimeError: no GGUF" in md  # a failed peer stays, with its reason
    assert "![roofline](roofline.png)" in md
    # time per forward, pld: 0.1 s draft, 0.64 forward, 0.08 verify, 0.08 other over 16 forwards
    assert "| pld | 6.2 | 40.0 | 5.0 | 5.0 | 56.2 | 2.50 | 22.5 | 10% |" in md
    json.dumps(result)  # the result is plain JSON
    assert "identical" in markdown(result)


# ---- option validation ---------------------------------------------------------------------------
def test_parse_methods_and_peers():
    assert parse_methods("pld,suffix", has_draft=False) == ["ar", "pld", "suffix"]
    assert "draft" not in parse_methods("all", has_draft=False) and "draft" in parse_methods("all", has_draft=True)
    with pytest.raises(ParadecError, match="unknown method 'nope'"):
        parse_methods("pld,nope", False)
    with pytest.raises(ParadecError, match="needs --draft-model"):
        parse_methods("draft", False)
    assert parse_peers("none", False) == []
    assert "hf-assisted" not in parse_peers("all", False) and "hf-assisted" in parse_peers("all", True)
    with pytest.raises(ParadecError, match="unknown peer 'vllm'"):
        parse_peers("hf,vllm", False)
    with pytest.raises(ParadecError, match="needs --draft-model"):
        parse_peers("hf-assisted", False)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"repeats": 0}, "--repeats"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"prompts_per_category": 0}, "--prompts-per-category"),
        ({"temperature": -0.5}, "--temperature"),
        ({"dtype": "int3"}, "dtype"),
        ({"suite": ""}, "--suite is empty"),
    ],
)
def test_validate_rejects(kw, message):
    with pytest.raises(ParadecError, match=message):
        validate(BenchConfig(**kw, device="cpu"))


def test_validate_output_paths(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ParadecError, match="does not exist"):
        validate(BenchConfig(device="cpu", json_path=str(tmp_path / "no" / "dir" / "out.json")))
    with pytest.raises(ParadecError, match="is a directory"):
        validate(BenchConfig(device="cpu", json_path=str(tmp_path)))
    with pytest.raises(ParadecError, match="not a directory"):
        validate(BenchConfig(device="cpu", report_dir=str(f)))
    with pytest.raises(ParadecError, match="--report"):
        validate(BenchConfig(device="cpu", report_dir=str(f / "sub")))
    cfg = validate(BenchConfig(device="cpu", json_path=str(tmp_path / "o.json"), report_dir=str(tmp_path / "r"), quick=True))
    assert cfg.new_tokens == 24 and cfg.per_category == 1 and cfg.method_list[0] == "ar"
