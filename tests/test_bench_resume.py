"""Resumable benchmark runs (``--resume``): a run killed at any point and continued gives the
same measurements as one that ran in one go; the records file tolerates a line cut short by the
kill; a configuration mismatch is a one-line error; ``--from`` rebuilds the results from the
records alone. Tiny float64 models, so outputs are exactly reproducible."""

from __future__ import annotations

import json

import pytest

from helpers.cli import run_cli
from helpers.tiny import char_tokenizer, tiny_llama

from paradec.bench import BenchConfig, run_bench
from paradec.bench import run as bench_run
from paradec.bench.records import RecordStore, read_records, result_from_records
from paradec.bench.run import result_from_file
from paradec.bench.runners import HFRunner, ParadecRunner
from paradec.errors import ParadecError

CUT = b'{"type":"sample","prompt_id":"qa/'  # what a kill in the middle of a write leaves behind


class Killed(BaseException):
    """Stands in for the process being killed: nothing catches it, nothing is cleaned up."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = char_tokenizer()
    d = tmp_path_factory.mktemp("bench-resume-tiny")
    m = tiny_llama(0, vocab=len(tok), layers=2, max_pos=4096)
    m.generation_config.eos_token_id = 2
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _cfg(model, path, **kw):
    base = dict(model=model, suite="mt_bench,qa", methods="pld", peers="hf", quick=True, max_new_tokens=8,
                dtype="float64", device="cpu", resume=str(path) if path else None)
    return BenchConfig(**{**base, **kw})


def _kill_at(monkeypatch, category, turn, row):
    """Kill the run when ``row`` is about to measure ``category``'s prompt at ``turn``."""
    real = bench_run._measure

    def measure(r, p, t, *a, **k):
        if (p.category, t, r.name) == (category, turn, row):
            raise Killed
        return real(r, p, t, *a, **k)

    monkeypatch.setattr(bench_run, "_measure", measure)


def _figures(result):
    """What must not depend on how many segments a run took (timings aside)."""
    keys = ("token_ids", "prompt_tokens", "new_tokens", "identical", "forwards", "forward_tokens", "committed",
            "accept_lengths")
    return {(s["prompt_id"], s["turn"], s["runner"], s["repeat"]): tuple(json.dumps(s[k]) for k in keys)
            for s in result["samples"]}


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_killed_twice_and_resumed_equals_one_run(tiny_dir, tmp_path, monkeypatch):
    one = run_bench(_cfg(tiny_dir, tmp_path / "one.jsonl"), progress=False)
    assert one["complete"] and len(one["segments"]) == 1 and one["segments"][0]["ended"] == "finished"

    path = tmp_path / "resumed.jsonl"
    # segment 1: killed before ar answers MT-Bench's second turn (which is asked after ar's first
    # answer: the next segment must rebuild that history from the records)
    _kill_at(monkeypatch, "mt_bench", 1, "ar")
    with pytest.raises(Killed):
        run_bench(_cfg(tiny_dir, path), progress=False)
    with open(path, "ab") as f:
        f.write(CUT)
    # segment 2: killed after ar measured the qa prompt, before pld did (ar's recorded output is
    # then the reference for pld's identity check)
    monkeypatch.undo()
    _kill_at(monkeypatch, "qa", 0, "pld")
    with pytest.raises(Killed):
        run_bench(_cfg(tiny_dir, path), progress=False)
    with open(path, "ab") as f:
        f.write(CUT)
    monkeypatch.undo()

    # segment 3 measures only what is left: ar is done, so it is neither warmed up nor run
    calls: list[str] = []
    for cls in (ParadecRunner, HFRunner):
        real = cls.run

        def counted(self, *a, _real=real, **k):
            calls.append(self.name)
            return _real(self, *a, **k)

        monkeypatch.setattr(cls, "run", counted)
    done = run_bench(_cfg(tiny_dir, path), progress=False)
    assert calls == ["pld", "hf", "pld", "hf"]  # two warm-ups, then qa for pld and hf

    assert _figures(done) == _figures(one)
    assert len(done["samples"]) == 9  # mt_bench 2 turns + qa 1 turn, 3 rows each
    mt2 = [s for s in done["samples"] if s["category"] == "mt_bench" and s["turn"] == 1]
    assert {s["prompt_tokens"] for s in mt2} == {s["prompt_tokens"] for s in one["samples"]
                                                 if s["category"] == "mt_bench" and s["turn"] == 1}
    assert all(s["identical"] for s in done["samples"])
    assert done["complete"] and not done["interrupted"]
    assert [s["ended"] for s in done["segments"]] == ["killed", "killed", "finished"]
    assert [s["measurements"] for s in done["segments"]] == [3, 4, 2]
    assert done["measurements"] == 9 and done["wall_s"] > 0
    assert done["roofline"]["k"][:2] == [1, 2]  # probed once, in segment 1
    assert sum(r["type"] == "roofline" for r in _lines(path)) == 1
    # the cut-short lines are gone, and every line is a record
    assert all("type" in r for r in _lines(path))
    assert done["rows"][0]["peak_rss_mb"] > 0 and done["peak_rss_mb"] > 0

    # resuming a finished run measures nothing and adds no segment
    calls.clear()
    again = run_bench(_cfg(tiny_dir, path), progress=False)
    assert calls == [] and len(again["segments"]) == 3 and _figures(again) == _figures(one)
    # the results are a function of the records alone
    assert result_from_file(str(path))["summary"] == again["summary"]


def test_interrupted_run_keeps_whole_turns_and_says_so(tiny_dir, tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    _kill_at(monkeypatch, "qa", 0, "hf")
    with pytest.raises(Killed):
        run_bench(_cfg(tiny_dir, path), progress=False)
    r = result_from_file(str(path))
    assert r["interrupted"] and not r["complete"] and r["measurements"] == 8
    # qa has ar and pld but not hf: that turn is left out of the figures
    assert {s["category"] for s in r["samples"]} == {"mt_bench"} and len(r["samples"]) == 6


def test_mismatching_configuration_is_a_one_line_error(tiny_dir, tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    args = ["bench", "--model", tiny_dir, "--suite", "qa", "--methods", "pld", "--peers", "none", "--quick",
            "--dtype", "float64", "--device", "cpu", "--resume", str(path)]
    code, out, err = run_cli([*args, "-n", "6"], capsys)
    assert code == 0, err
    assert f"records: {path}" in out
    code, out, err = run_cli([*args, "-n", "5", "--methods", "suffix"], capsys)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1, err
    assert lines[0].startswith("error:") and "max_new_tokens: 6 -> 5" in lines[0] and "--fresh" in lines[0]
    assert "methods" in lines[0]
    # more methods than before: the new row is measured on the prompts already done too
    code, out, err = run_cli([*args, "-n", "6", "--methods", "pld,suffix"], capsys)
    assert code == 0, err
    runners = [r["runner"] for r in _lines(path) if r["type"] == "sample"]
    assert runners.count("suffix") == runners.count("pld") > 0
    # --fresh starts over and keeps the old records aside
    code, out, err = run_cli([*args, "-n", "5", "--fresh"], capsys)
    assert code == 0, err
    assert (tmp_path / "run.jsonl.bak").is_file()
    recs = _lines(path)
    assert recs[0]["fingerprint"]["max_new_tokens"] == 5 and sum(r["type"] == "segment" for r in recs) == 1


def test_report_from_records(tiny_dir, tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.jsonl"
    _kill_at(monkeypatch, "qa", 0, "ar")
    with pytest.raises(Killed):
        run_bench(_cfg(tiny_dir, path), progress=False)
    monkeypatch.undo()
    ran = run_bench(_cfg(tiny_dir, path), progress=False)

    out_json, rep = tmp_path / "from.json", tmp_path / "report"
    code, out, err = run_cli(["bench", "--from", str(path), "--json", str(out_json), "--report", str(rep)], capsys)
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert r["summary"] == json.loads(json.dumps(ran["summary"]))
    assert r["samples"] == json.loads(json.dumps(ran["samples"]))
    md = (rep / "report.md").read_text()
    assert "the run spanned 2 segments" in md and "segment 1:" in md and "killed" in md and "finished" in md
    assert "load average" in md and "process peak RSS" in md
    assert (rep / "speedup.png").is_file()
    assert "speedup vs ar per category" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "{tmp}/missing.jsonl"], "no such file"),
        (["--from", "{tmp}/records.jsonl", "--model", "x"], "--model cannot be used"),
        (["--from", "{tmp}/records.jsonl", "--resume", "{tmp}/other.jsonl"], "--resume cannot be used"),
        (["--from", "{tmp}/records.jsonl", "--json", "{tmp}/records.jsonl"], "same file"),
        (["--from", "{tmp}/plain.json"], "not a paradec bench records file"),
        (["--from", "{tmp}/damaged.jsonl"], "no measurements yet (ignored damaged line 2 (not JSON), line 3 (a second header))"),
        (["--from", "{tmp}/header-only.jsonl"], "no measurements yet"),
        (["--model", "no-such-model", "--fresh"], "--fresh needs --resume"),
        (["--model", "no-such-model", "--resume", "{tmp}/r.jsonl", "--json", "{tmp}/r.jsonl"], "same file"),
        (["--model", "no-such-model", "--resume", "{tmp}"], "is a directory"),
        (["--model", "no-such-model", "--resume", "{tmp}/plain.json"], "not a paradec bench records file"),
    ],
)
def test_bad_records_input_fails_with_one_line(args, message, tmp_path, capsys):
    header = json.dumps({"type": "header", "format": 1, "fingerprint": {}})
    (tmp_path / "records.jsonl").write_text(header + "\n")
    (tmp_path / "header-only.jsonl").write_text(header + "\n")
    (tmp_path / "plain.json").write_text('{"paradec_bench": 1}\n')
    (tmp_path / "damaged.jsonl").write_text(header + "\n{not json\n" + header + "\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(["bench", *args], capsys)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


def test_record_store_drops_a_cut_line_and_appends_after_it(tmp_path):
    path = tmp_path / "r.jsonl"
    fp = {"model": "m", "machine": {"cpu": "x"}, "git_commit": "a"}
    s = RecordStore.open(str(path), fp)
    s.begin_segment({"start": "then", "t": 1.0, "loadavg": 0.5})
    s.add({"type": "skip", "prompt_id": "qa/0", "turn": 1, "reason": "long"})
    s.close()
    data = path.read_bytes()
    path.write_bytes(data + CUT)
    scan = read_records(path)
    assert [r["type"] for r in scan.records] == ["header", "segment", "skip"] and not scan.no_newline
    assert [(d.line, d.raw) for d in scan.damaged] == [(4, CUT)] and "cut short" in scan.damaged[0].reason
    # a last line that is whole but lost its newline is kept, and the next one goes on a new line
    path.write_bytes(data[:-1])
    s = RecordStore.open(str(path), {**fp, "git_commit": "b"})  # another commit: informational only
    assert s.resumed and ("qa/0", 1) in s.skips
    s.begin_segment({"start": "now", "t": 2.0, "loadavg": 0.1})
    s.add({"type": "skip", "prompt_id": "qa/1", "turn": 1, "reason": "long"})
    s.close()
    assert [r.get("segment") for r in _lines(path)] == [None, 1, 1, 2, 2]
    # another CPU of the same kind may continue the run (the report lists each segment's machine);
    # another device may not
    RecordStore.open(str(path), {**fp, "machine": {"cpu": "y"}}).close()
    with pytest.raises(ParadecError, match=r"machine.gpu: None -> 'H100'"):
        RecordStore.open(str(path), {**fp, "machine": {"cpu": "x", "gpu": "H100"}})


def test_store_lock_refuses_a_second_writer(tmp_path):
    path = tmp_path / "r.jsonl"
    s = RecordStore.open(str(path), {"model": "m"})
    try:
        with pytest.raises(ParadecError, match="in use by another"):
            RecordStore.open(str(path), {"model": "m"})
        with pytest.raises(ParadecError, match="in use by another"):
            RecordStore.open(str(path), {"model": "m"}, fresh=True)
        assert not (tmp_path / "r.jsonl.bak").exists()
    finally:
        s.close()


def test_result_without_file_matches_records(tiny_dir):
    r = run_bench(_cfg(tiny_dir, None, suite="qa", peers="none", roofline=False), progress=False)
    assert r["complete"] and len(r["segments"]) == 1 and r["roofline"] == {}
    assert r["fingerprint"]["max_new_tokens"] == 8 and r["fingerprint"]["methods"] == ["ar", "pld"]
    with pytest.raises(ParadecError, match="no measurements"):
        result_from_records([{"type": "header", "format": 1, "fingerprint": {}}])


def test_peak_rss_and_per_row_growth_in_json_and_report(tiny_dir, tmp_path):
    out_json, rep = tmp_path / "r.json", tmp_path / "rep"
    r = run_bench(_cfg(tiny_dir, None, suite="qa", json_path=str(out_json), report_dir=str(rep), roofline=False),
                  progress=False)
    j = json.loads(out_json.read_text())
    assert j["peak_rss_mb"] > 0 and j["peak_rss_mb"] == r["peak_rss_mb"]
    assert j["segments"][0]["peak_rss_mb"] > 0
    for row in j["rows"]:
        assert row["peak_rss_mb"] > 0 and row["rss_mb"] > 0, row
        assert isinstance(row["rss_growth_mb"], float), row  # before/after its preparation and first run
    md = (rep / "report.md").read_text()
    assert f"process peak RSS {j['peak_rss_mb']:.0f} MB" in md
    assert "| RSS MB | RSS + MB | status |" in md
    growth = {row["name"]: row["rss_growth_mb"] for row in j["rows"]}
    assert f"| {j['rows'][0]['peak_rss_mb']:.0f} | {growth['ar']:+.0f} | ok |" in md


def test_a_new_commit_between_segments_is_allowed_and_shown(tiny_dir, tmp_path, monkeypatch):
    from paradec.bench import machine

    path = tmp_path / "r.jsonl"
    monkeypatch.setattr(machine, "git_state", lambda: ("a" * 40, False))
    _kill_at(monkeypatch, "qa", 0, "ar")
    with pytest.raises(Killed):
        run_bench(_cfg(tiny_dir, path, roofline=False), progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(machine, "git_state", lambda: ("b" * 40, True))
    r = run_bench(_cfg(tiny_dir, path, roofline=False), progress=False)
    assert [s["git_commit"][0] for s in r["segments"]] == ["a", "b"] and r["complete"]
    from paradec.bench.report import markdown

    md = markdown(r)
    assert "commit aaaaaaaaaa" in md and "commit bbbbbbbbbb (modified)" in md and "different paradec commits" in md


def test_another_machine_may_continue_the_run_and_is_shown(tiny_dir, tmp_path, monkeypatch):
    from paradec.bench import machine
    from paradec.bench import run as run_mod

    path = tmp_path / "r.jsonl"
    real = machine.machine_info

    def on(cpu):
        for mod in (machine, run_mod):
            monkeypatch.setattr(mod, "machine_info", lambda device: {**real(device), "cpu": cpu})

    on("CPU one")
    _kill_at(monkeypatch, "qa", 0, "ar")
    with pytest.raises(Killed):
        run_bench(_cfg(tiny_dir, path, roofline=False), progress=False)
    monkeypatch.undo()
    on("CPU two")
    r = run_bench(_cfg(tiny_dir, path, roofline=False), progress=False)
    assert r["complete"] and [s["machine"].split(",")[0] for s in r["segments"]] == ["CPU one", "CPU two"]
    from paradec.bench.report import markdown

    md = markdown(r)
    assert "on CPU one" in md and "on CPU two" in md and "different machines" in md


# ---- damaged records files ----------------------------------------------------------------------
def _damaged_lines(path):
    aside = path.with_name(path.name + ".damaged")
    return aside.read_bytes().splitlines() if aside.exists() else []


def test_a_cut_final_segment_end_is_repaired(tiny_dir, tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    run_bench(_cfg(tiny_dir, path, suite="qa", peers="none"), progress=False)
    data = path.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    assert json.loads(last)["type"] == "segment_end"
    path.write_bytes(data[: len(data) - len(last) // 2 - 1])  # the kill cut the segment_end line
    assert not result_from_file(str(path))["complete"]
    capsys.readouterr()
    again = run_bench(_cfg(tiny_dir, path, suite="qa", peers="none"), progress=False)
    err = capsys.readouterr().err
    assert again["complete"] and "1 damaged line moved to" in err and "cut short" in err
    assert _lines(path)[-1]["type"] == "segment_end" and _lines(path)[-1]["complete"]
    assert _damaged_lines(path) == [last[: len(last) - len(last) // 2]]
    assert result_from_file(str(path))["complete"]
    n = len(_lines(path))
    run_bench(_cfg(tiny_dir, path, suite="qa", peers="none"), progress=False)  # nothing more to do or repair
    assert len(_lines(path)) == n


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda r: r.pop("turn"), "a sample record lacks field 'turn'"),
        (lambda r: r.update(token_ids="1 2 3"), "a sample record field 'token_ids' is str, expected a list of ints"),
        (lambda r: r.update(repeat=True), "a sample record field 'repeat' is bool, expected int"),
        (lambda r: r.update(type="sampel"), "unknown record type 'sampel'"),
    ],
)
def test_a_record_with_a_missing_or_wrong_field_is_set_aside(tiny_dir, tmp_path, capsys, edit, reason):
    path = tmp_path / "r.jsonl"
    one = run_bench(_cfg(tiny_dir, path, suite="qa", peers="none"), progress=False)
    lines = path.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if json.loads(ln)["type"] == "sample" and json.loads(ln)["runner"] == "pld")
    rec = json.loads(lines[i])
    edit(rec)
    lines[i] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()

    # --from: no traceback; the line is named and ignored (its turn is then not whole: left out)
    code, out, err = run_cli(["bench", "--from", str(path)], capsys)
    assert code == 0, err
    assert f"--from {path}: ignored 1 damaged line: line {i + 1} ({reason})" in err
    assert path.read_text().splitlines()[i] == lines[i]  # --from never writes
    # --resume: the line moves aside, the measurement is taken again, the run completes
    again = run_bench(_cfg(tiny_dir, path, suite="qa", peers="none"), progress=False)
    err = capsys.readouterr().err
    assert f"line {i + 1} ({reason})" in err and "moved to" in err
    assert _damaged_lines(path) == [lines[i].encode()]
    assert again["complete"] and _figures(again) == _figures(one)
    assert all("type" in r for r in _lines(path))


def test_fault_injection_random_bytes_and_truncation(tiny_dir, tmp_path, capsys):
    """Random bytes over any part of the file, or a cut anywhere: reading never raises anything
    but a one-line ParadecError, and every damaged line is accounted for (kept or set aside)."""
    import random

    src = tmp_path / "src.jsonl"
    run_bench(_cfg(tiny_dir, src, suite="qa", peers="none"), progress=False)
    good = src.read_bytes()
    fp = _lines(src)[0]["fingerprint"]
    rng = random.Random(0)
    for trial in range(40):
        data = bytearray(good)
        if trial % 2:
            data = data[: rng.randrange(len(data))]
        else:
            at = rng.randrange(len(data))
            data[at : at + 64] = rng.randbytes(64)
        path = tmp_path / f"t{trial}.jsonl"
        path.write_bytes(bytes(data))
        for attempt in ("from", "resume"):
            try:
                if attempt == "from":
                    result_from_file(str(path))
                else:
                    store = RecordStore.open(str(path), fp)
                    store.close()
                    if any(r["type"] == "segment" for r in store.records):
                        result_from_records(store.records)
                    kept = path.read_bytes().splitlines()
                    aside = _damaged_lines(path)
                    assert all(json.loads(line) for line in kept)
                    assert len(kept) + len(aside) >= len(bytes(data).splitlines()) - bytes(data).count(b"\n\n")
            except ParadecError as e:
                assert "\n" not in str(e)
    capsys.readouterr()


def test_committed_records_load_as_before():
    """The records under docs/bench/ are well formed: nothing is set aside, and the results are
    those of the plain JSON lines."""
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].glob("docs/bench/*/records.jsonl"))
    assert len(files) >= 4
    for f in files:
        scan = read_records(f, "--from")
        plain = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        assert scan.damaged == [] and scan.records == plain, f
        assert result_from_records(scan.records) == result_from_records(plain)
