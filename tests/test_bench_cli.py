"""``paradec bench`` end to end on a tiny model: a --quick run with paradec's methods and the
transformers peers writes JSON and a report; bad input fails fast with one line."""

from __future__ import annotations

import json

import pytest

from helpers.tiny import char_tokenizer, tiny_llama
from helpers.cli import run_cli


@pytest.fixture(scope="module")
def long_tiny_dirs(tmp_path_factory):
    """A tiny target and draft with a context long enough for the RAG prompts (characters are
    tokens here)."""
    tok = char_tokenizer()
    dirs = []
    for seed, layers in ((0, 2), (1, 1)):
        d = tmp_path_factory.mktemp(f"bench-tiny-{seed}")
        m = tiny_llama(seed, vocab=len(tok), layers=layers, max_pos=4096)
        m.generation_config.eos_token_id = 2
        m.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(str(d))
    return dirs


def test_quick_run_writes_json_and_report(long_tiny_dirs, tmp_path, capsys):
    target, draft = long_tiny_dirs
    out_json, rep = tmp_path / "bench.json", tmp_path / "report"
    code, out, err = run_cli(
        ["bench", "--model", target, "--draft-model", draft, "--suite", "mt_bench,qa,rag", "--quick", "-n", "12",
         "--dtype", "float64", "--device", "cpu", "--json", str(out_json), "--report", str(rep)],
        capsys,
    )
    assert code == 0, err
    r = json.loads(out_json.read_text())
    names = [row["name"] for row in r["rows"]]
    assert names[0] == "ar" and {"pld", "draft", "suffix", "lookahead"} <= set(names)
    assert {"hf", "hf-pld", "hf-assisted", "llama.cpp", "llama.cpp-pld"} <= set(names)
    rows = {row["name"]: row for row in r["rows"]}
    # llama.cpp needs a GGUF target: the row stays, with the reason
    assert rows["llama.cpp"]["status"] == "failed" and "GGUF" in rows["llama.cpp"]["error"]
    for n in ("ar", "pld", "hf", "hf-pld", "hf-assisted"):
        assert rows[n]["status"] == "ok", rows[n]
    assert r["categories"] == ["mt_bench", "qa", "rag"]
    # MT-Bench: the second turn is asked after the first answer, so its prompt is longer
    mt = [s for s in r["samples"] if s["category"] == "mt_bench" and s["runner"] == "ar"]
    assert [s["turn"] for s in mt] == [0, 1] and mt[1]["prompt_tokens"] > mt[0]["prompt_tokens"]
    # every row got the same prompt ids and at most 12 new tokens
    by_prompt: dict = {}
    for s in r["samples"]:
        by_prompt.setdefault((s["prompt_id"], s["turn"]), set()).add(s["prompt_tokens"])
        assert 0 < s["new_tokens"] <= 12 and s["seconds"] > 0
    assert all(len(v) == 1 for v in by_prompt.values()) and len(by_prompt) == 4
    # lossless methods reproduce ar exactly (float64); a method that cannot run on this model (deer,
    # deer-fused need a converted adapter, head a trained head) stays in the table with its reason
    needs = {"deer": "adapter", "deer-fused": "adapter", "head": "no trained head"}
    for row in r["rows"]:
        if row["kind"] == "paradec" and row["name"] in needs and row["status"] == "failed":
            assert needs[row["name"]] in row["error"]
            continue
        if row["kind"] == "paradec":
            assert row["status"] == "ok", row
            o = r["summary"][row["name"]]["overall"]
            assert o["identity_rate"] == 1.0 and o["compared"] == 4, row["name"]
            assert o["mean_accepted"] >= 1.0 and o["tokens_per_s"] > 0
    assert r["summary"]["pld"]["overall"]["speedup_vs_ar"] > 0
    assert r["summary"]["pld"]["overall"]["speedup_vs_hf"] > 0
    assert r["summary"]["ar"]["overall"]["ideal_speedup"] == pytest.approx(1.0)
    assert r["roofline"]["k"][:3] == [1, 2, 4] and all(t > 0 for t in r["roofline"]["seconds"])
    assert all(rows[n]["peak_rss_mb"] > 0 for n in ("ar", "hf"))
    for f in ("report.md", "speedup.png", "accept_hist.png", "roofline.png"):
        assert (rep / f).is_file()
    assert "speedup vs ar per category" in out and "llama.cpp failed" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "qa,nosuch"], "unknown suite 'nosuch'"),
        (["--methods", "pld,bogus"], "unknown method 'bogus'"),
        (["--methods", "draft"], "needs --draft-model"),
        (["--peers", "hf,vllm"], "unknown peer 'vllm'"),
        (["--peers", "hf-assisted"], "needs --draft-model"),
        (["--json", "{tmp}/missing/out.json"], "does not exist"),
        (["--report", "{tmp}/file.txt"], "not a directory"),
        (["--repeats", "0"], "--repeats"),
        (["--threads", "0"], "--threads"),
        (["--device", "tpu"], "device"),
        (["--suite", "structured", "--json", "{tmp}/missing/out.json"], "does not exist"),
        (["--suite", "structured", "--report", "{tmp}/file.txt"], "not a directory"),
    ],
)
def test_bad_input_fails_before_loading_a_model(args, message, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # the model does not exist: the error must be about the option, found before any load
    code, out, err = run_cli(["bench", "--model", "no-such-model", *args], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


def test_failing_peer_keeps_its_row_and_interrupt_keeps_whole_turns(long_tiny_dirs, monkeypatch):
    from paradec.bench import BenchConfig, run_bench
    from paradec.bench.runners import HFRunner, ParadecRunner

    def broken(self, *a, **k):
        raise RuntimeError("peer exploded\nwith a second line")

    monkeypatch.setattr(HFRunner, "run", broken)
    def cfg(peers):
        return BenchConfig(model=long_tiny_dirs[0], suite="qa,math", methods="pld", peers=peers, quick=True,
                           max_new_tokens=6, dtype="float64", device="cpu", roofline=False)

    r = run_bench(cfg("hf"), progress=False)
    rows = {row["name"]: row for row in r["rows"]}
    assert rows["hf"]["status"] == "failed" and rows["hf"]["error"] == "RuntimeError: peer exploded with a second line"
    assert r["summary"]["hf"]["overall"]["samples"] == 0 and r["summary"]["pld"]["overall"]["samples"] == 2
    assert r["interrupted"] is False and r["roofline"] == {}

    calls = {"n": 0}
    real = ParadecRunner.run

    def interrupt_in_math(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # 2 warm-ups, qa (ar, pld), math: ar runs, then Ctrl-C during pld
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(ParadecRunner, "run", interrupt_in_math)
    r = run_bench(cfg("none"), progress=False)
    assert r["interrupted"] is True
    assert [(s["category"], s["runner"]) for s in r["samples"]] == [("qa", "ar"), ("qa", "pld")]
