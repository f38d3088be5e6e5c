"""Benchmark records: every finished measurement as one JSON line, so that a run can stop at
any moment (a killed process included) and continue later with ``--resume PATH``, and so that
the results can be rebuilt from the file alone (``--from PATH``).

The file is JSON Lines, one object per line, each with a ``type``:

- ``header`` (the first line): the run's configuration fingerprint. Resuming with another
  configuration is an error (``--fresh`` starts the file over);
- ``segment``: a process started measuring (start time, load average, machine, command, git
  commit, the prompts it planned). A run that spans several sessions has several segments;
- ``row``: a row was prepared and warmed up in a segment (its description, the resident memory
  its preparation and first run added), or failed (the failure sticks: a resumed run does not
  retry it, as a single run would not have);
- ``roofline``: the roofline probe (measured once per file);
- ``skip``: a later prompt turn that did not fit the context window;
- ``sample``: one measurement of one row on one prompt turn and repeat, with the time, the load
  average and the process's memory figures right after it;
- ``segment_end``: the segment finished or was stopped with Ctrl-C. A killed one has none.

Every line is written with one ``write`` and flushed to disk (``fsync``) before the run goes
on, so at most the line being written is lost. A damaged line (cut short by a kill, not JSON,
a field missing or of the wrong type: ``record_schema``) is never used and never silently
dropped: ``--resume`` moves it to ``<file>.damaged`` and says which lines it moved, ``--from``
says which lines it ignored. A run whose last ``segment_end`` was lost is marked complete by
the next ``--resume`` that finds nothing left to measure.

Everything a later segment needs is in the file: the finished (prompt, turn, row, repeat)
items are skipped, and ``ar``'s answers (the reference for identity, and the history that
MT-Bench's second turn is asked after) come from its recorded token ids.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from ..errors import ParadecError
from .machine import loadavg
from .metrics import Sample
from .record_schema import fingerprint_problem, problem

FORMAT = 1
# fingerprint fields shown but not enforced: a commit between two sessions (say, to another part
# of the package) should not throw hours of measurements away; the report lists each segment's
# commit so that a change is visible.
INFORMATIONAL = ("git_commit", "git_dirty")
# machine fields a resumed run must share: the device kind. The CPU model, memory and library
# versions are shown, not enforced: a run that spans sessions may get another machine of the same
# kind, and every row still runs each prompt turn on the same machine in the same minutes (rows
# are interleaved per turn), so the rows stay comparable; the report lists each segment's
# machine and says when they differ (absolute tokens/s then mix machines).
MACHINE_ENFORCED = ("gpu",)
# fingerprint lists that a resumed run may extend: a new method or peer is measured on every
# prompt, the ones done before included, and nothing recorded changes meaning
GROWABLE = ("methods", "peers")
SAMPLE_FIELDS = tuple(Sample.__dataclass_fields__)
HEADER_START = b'{"type":"header"'  # how the writer starts the first line


def iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _model_spec(spec: str) -> str:
    """A local path as an absolute path (the same model from another working directory matches),
    anything else (a packaged name, a hub id) as given."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def fingerprint(cfg) -> dict:
    """What a resumed run must share with the records it continues (``cfg`` validated)."""
    from ..models.registry import DEFAULT_MODEL
    from .machine import git_state, machine_info, paradec_version

    m = machine_info(cfg.device)
    commit, dirty = git_state()
    return {
        "model": _model_spec(cfg.model or DEFAULT_MODEL),
        "draft_model": _model_spec(cfg.draft_model) if cfg.draft_model else None,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "backend": getattr(cfg, "backend", "auto"),
        "temperature": float(cfg.temperature),
        "max_new_tokens": cfg.new_tokens,
        "methods": list(cfg.method_list),
        "peers": list(cfg.peer_list),
        "suites": list(cfg.suites),
        "prompts_per_category": cfg.per_category,
        "repeats": cfg.repeats,
        "seed": cfg.seed,
        "threads": cfg.threads,
        "paradec": paradec_version(),
        "machine": {k: m.get(k) for k in ("cpu", "cpu_count", "memory_gb", "gpu", "python", "torch", "transformers",
                                           "llama_cpp_python")},
        "git_commit": commit,
        "git_dirty": dirty,
    }


def diff_fingerprint(old: dict, new: dict) -> list[str]:
    """The enforced fields that differ, as 'field: old -> new'."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k in INFORMATIONAL:
            continue
        a, b = old.get(k), new.get(k)
        if k in GROWABLE and isinstance(a, list) and isinstance(b, list) and set(a) <= set(b):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = MACHINE_ENFORCED if k == "machine" else sorted(set(a) | set(b))
            out += [f"{k}.{kk}: {a.get(kk)!r} -> {b.get(kk)!r}" for kk in keys if a.get(kk) != b.get(kk)]
        elif a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


@dataclass(frozen=True)
class Damaged:
    """A line that is not a well-formed record: kept aside (``--resume``) or ignored (``--from``)."""

    line: int  # 1-based line number in the file
    reason: str
    raw: bytes


@dataclass(frozen=True)
class Scan:
    records: list[dict]  # the well-formed records, in file order (the header first)
    raw: list[bytes]  # their lines as read
    damaged: list[Damaged]
    no_newline: bool  # the file ends without a newline (and nothing is damaged)


def read_records(path: str | os.PathLike, option: str = "--resume") -> Scan:
    """The records of ``path`` and its damaged lines: a line that is not JSON or not a
    well-formed record (a field missing or of the wrong type, see ``record_schema``), a last
    line cut short by a kill. Only a file that does not start with a records header is an error."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ParadecError(f"{option} {path} cannot be read ({e.strerror or e})") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends with a newline
    records: list[dict] = []
    raw: list[bytes] = []
    damaged: list[Damaged] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i == len(lines) - 1 and not data.endswith(b"\n")
        try:
            rec = json.loads(line)
            bad = problem(rec, first=not records)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            rec, bad = None, "cut short (a killed run?)" if last else "not JSON"
        if not records and bad is not None:
            if last and line.startswith(HEADER_START):
                damaged.append(Damaged(i + 1, "a header cut short (a killed run?)", line))
                continue
            raise ParadecError(f"{option} {path} is not a paradec bench records file (from --resume)")
        if not records and rec.get("format") != FORMAT:
            raise ParadecError(f"{option} {path} is not a paradec bench records file (from --resume)")
        if bad is not None:
            damaged.append(Damaged(i + 1, bad, line))
            continue
        records.append(rec)
        raw.append(line)
    return Scan(records, raw, damaged, bool(data) and not damaged and not data.endswith(b"\n"))


def describe_damage(damaged: list[Damaged], most: int = 4) -> str:
    """'line 3 (not JSON), line 9 (a sample record lacks field 'turn'), ...' on one line."""
    parts = [f"line {d.line} ({d.reason})" for d in damaged[:most]]
    more = len(damaged) - most
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _set_aside(p: Path, fd: int, scan: Scan, path: str) -> int:
    """Append the damaged lines to ``<file>.damaged``, then replace the file by its good lines
    (a new file, locked before it takes the old one's place). Returns the new file's descriptor."""
    aside = p.with_name(p.name + ".damaged")
    with open(aside, "ab") as f:
        f.write(b"".join(d.raw + b"\n" for d in scan.damaged))
        f.flush()
        os.fsync(f.fileno())
    tmp = p.with_name(p.name + ".tmp")
    new = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _lock(new, path)
        _write_all(new, b"".join(line + b"\n" for line in scan.raw))
        os.fsync(new)
        os.replace(tmp, p)
    except BaseException:
        os.close(new)
        raise
    os.close(fd)
    n = len(scan.damaged)
    _warn(f"--resume {path}: {n} damaged line{'s' if n > 1 else ''} moved to {aside}: {describe_damage(scan.damaged)}")
    return new


def sample_key(rec: dict) -> tuple[str, int, str, int]:
    return rec["prompt_id"], int(rec["turn"]), rec["runner"], int(rec["repeat"])


class RecordStore:
    """The records of one run: kept in memory, and appended to a file when there is one.

    ``begin_segment`` holds the segment's record until something else is recorded, so a resumed
    run with nothing left to do adds no segment."""

    def __init__(self, records: list[dict], fd: int | None = None, path: str | None = None) -> None:
        self.records: list[dict] = []
        self.fd, self.path = fd, path
        self.samples: dict[tuple[str, int, str, int], dict] = {}
        self.failed: dict[str, str] = {}  # row -> error
        self.skips: set[tuple[str, int]] = set()
        self.roofline: dict | None = None
        self.segment = 0
        self._pending: dict | None = None
        self._started = False
        for r in records:
            self._index(r)
        self.resumed = any(r.get("type") == "segment" for r in records)

    # ---- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | None, fp: dict, fresh: bool = False) -> RecordStore:
        header = {"type": "header", "format": FORMAT, "created": iso(_now()), "fingerprint": fp}
        if path is None:
            return cls([header])
        p = Path(path).expanduser()
        if fresh and p.exists() and p.stat().st_size:
            old = os.open(p, os.O_RDWR)
            try:
                _lock(old, path)  # never move a file another run is writing
                os.replace(p, p.with_name(p.name + ".bak"))
            finally:
                os.close(old)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, path)
            scan = read_records(p)
            records = scan.records
            if records:
                diff = diff_fingerprint(records[0]["fingerprint"], fp)
                if diff:
                    raise ParadecError(
                        f"--resume {path} holds a run with another configuration ({'; '.join(diff[:3])}"
                        f"{'; ...' if len(diff) > 3 else ''}): pass --fresh to start it over, or use another file"
                    )
            if scan.damaged:  # kept aside, never dropped: the file keeps its good records only
                fd = _set_aside(p, fd, scan, str(path))
            os.lseek(fd, 0, os.SEEK_END)
            store = cls(records, fd, str(path))
            if scan.no_newline:
                _write_all(fd, b"\n")
            if not records:
                store._write(header)
                store._index(header)
            return store
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # ---- writing ----------------------------------------------------------------------------------
    def begin_segment(self, info: dict) -> None:
        self.segment = 1 + max((r["segment"] for r in self.records if r["type"] == "segment"), default=0)
        self._pending = {"type": "segment", "segment": self.segment, **info}

    def add(self, rec: dict) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._started = True
            self.add(pending)
        if rec["type"] != "header":
            rec = {"segment": self.segment, "t": round(_now(), 3), "loadavg": loadavg(), **rec}
        if self.fd is not None:
            self._write(rec)
        self._index(rec)

    def end_segment(self, info: dict) -> None:
        """Record how the segment ended. A resumed run that found nothing left to do records one
        too when the file does not yet say that the run is complete (its last ``segment_end``
        was lost to a kill), so a finished run is never reported incomplete forever."""
        if self._started or (info.get("complete") and self._pending is not None and not self._complete_on_file()):
            self.add({"type": "segment_end", **info})

    def _complete_on_file(self) -> bool:
        segs = [r["segment"] for r in self.records if r["type"] == "segment"]
        return bool(segs) and any(r["type"] == "segment_end" and r["segment"] == segs[-1] and r.get("complete")
                                  for r in self.records)

    def _write(self, rec: dict) -> None:
        _write_all(self.fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())
        os.fsync(self.fd)

    def _index(self, rec: dict) -> None:
        self.records.append(rec)
        t = rec.get("type")
        if t == "sample":
            self.samples[sample_key(rec)] = rec
        elif t == "row" and rec.get("status") == "failed":
            self.failed.setdefault(rec["name"], rec.get("error", ""))
        elif t == "skip":
            self.skips.add((rec["prompt_id"], int(rec["turn"])))
        elif t == "roofline":
            self.roofline = rec

    def sample(self, prompt_id: str, turn: int, runner: str, repeat: int) -> dict | None:
        return self.samples.get((prompt_id, turn, runner, repeat))


def _now() -> float:
    import time

    return time.time()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _lock(fd: int, path: str) -> None:
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ParadecError(f"--resume {path} is in use by another paradec bench process") from None


# ---- the result, from the records alone ------------------------------------------------------------
def load_records(path: str) -> list[dict]:
    """The records of ``path`` for ``--from`` (read only): damaged lines are ignored and named."""
    if not Path(path).expanduser().is_file():
        raise ParadecError(f"--from {path}: no such file")
    scan = read_records(path, "--from")
    records = scan.records
    ignored = f" (ignored damaged {describe_damage(scan.damaged)})" if scan.damaged else ""
    if not records:
        raise ParadecError(f"--from {path} is empty{ignored}")
    if not any(r["type"] == "segment" for r in records):
        raise ParadecError(f"--from {path} holds no measurements yet{ignored}")
    if scan.damaged:
        n = len(scan.damaged)
        _warn(f"--from {path}: ignored {n} damaged line{'s' if n > 1 else ''}: {describe_damage(scan.damaged)}")
    return records


def _row_kind(name: str) -> str:
    from ..proposers import METHODS

    return "paradec" if name in METHODS else "peer"


def _row_description(name: str) -> str:
    from ..proposers import METHODS
    from .runners import PEERS

    return METHODS[name][0] if name in METHODS else PEERS.get(name, "")


def _max(values) -> float | None:
    vs = [v for v in values if v is not None]
    return max(vs) if vs else None


class BenchResult(TypedDict):
    """The result of a run (what ``--json`` writes, the tables and the report read), built by
    ``result_from_records``; its keys are written in this order."""

    paradec_bench: int  # the result format
    date: str  # the first segment's start
    command: str | None  # the last segment's command line
    config: dict[str, Any]  # the settings that ran (model, methods, peers, temperature, ...)
    fingerprint: dict[str, Any]  # the records' header
    machine: dict[str, Any]  # the last segment's machine, with the load average at both ends
    load_s: float | None
    categories: list[str]
    prompts: dict[str, int]  # prompts per category
    rows: list[dict[str, Any]]  # per row: name, kind, description, status, error, memory figures
    roofline: dict[str, Any]  # the probe's curve ({} when none was measured)
    summary: dict[str, dict[str, dict[str, Any]]]  # row -> category -> Summary.to_dict()
    samples: list[dict[str, Any]]  # the measurements of whole prompt turns
    skipped: list[dict[str, Any]]
    interrupted: bool
    complete: bool
    segments: list[dict[str, Any]]
    peak_rss_mb: float | None
    measurements: int  # every sample recorded, partial turns included
    wall_s: float


@dataclass
class _RowRecords:
    """The ``row`` records: each row's latest, its failure (a failure sticks) and the resident
    memory each of its preparations added."""

    latest: dict[str, dict]
    failed: dict[str, str]
    growth: dict[str, list[float]]

    @classmethod
    def of(cls, records: list[dict]) -> "_RowRecords":
        rows = cls({}, {}, {})
        for r in records:
            if r["type"] == "row":
                rows.latest[r["name"]] = r
                if r.get("status") == "failed":
                    rows.failed.setdefault(r["name"], r.get("error", ""))
                if r.get("rss_growth_mb") is not None:
                    rows.growth.setdefault(r["name"], []).append(r["rss_growth_mb"])
        return rows

    def result(self, n: str, sample_recs: dict[tuple, dict]) -> dict[str, Any]:
        """Row ``n`` as the result lists it, with the memory figures of all its samples."""
        rec = self.latest.get(n, {})
        mine = [r for r in sample_recs.values() if r["runner"] == n]
        return {
            "name": n,
            "kind": rec.get("kind") or _row_kind(n),
            "description": rec.get("description") or _row_description(n),
            "status": "failed" if n in self.failed else "ok",
            "error": self.failed.get(n, ""),
            "peak_rss_mb": _max(r.get("peak_rss_mb") for r in mine),
            "rss_mb": _max(r.get("rss_mb") for r in mine),
            "rss_growth_mb": _max(self.growth.get(n, [])),
            "peak_gpu_mb": _max(r.get("peak_gpu_mb") for r in mine),
        }


def _checked_header(records: list[dict]) -> tuple[dict, list[dict]]:
    """The fingerprint and the segment records; ParadecError when there is nothing to read."""
    fp = records[0]["fingerprint"]
    segs = [r for r in records if r["type"] == "segment"]
    if not segs:
        raise ParadecError("the records hold no measurements yet")
    bad = fingerprint_problem(fp)
    if bad:
        raise ParadecError(f"the records' header is damaged: {bad}")
    return fp, segs


def _whole_turns(sample_recs: dict[tuple, dict], names: list[str], failed: dict[str, str], repeats: int) -> list[Sample]:
    """The samples of whole prompt turns only: those where every row still running has all its repeats."""
    have: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for pid, turn, runner, rep in sample_recs:
        have.setdefault((pid, turn), set()).add((runner, rep))
    need = {(n, rep) for n in names if n not in failed for rep in range(repeats)}
    whole = {k for k, v in have.items() if need <= v}
    kept = [r for k, r in sample_recs.items() if k[:2] in whole]
    return [Sample(**{f: r[f] for f in SAMPLE_FIELDS if f in r}) for r in kept]


def _roofline(records: list[dict]) -> dict[str, Any]:
    """The roofline probe as the result lists it (the last one recorded; {} when none)."""
    roofline: dict[str, Any] = {}
    for r in records:
        if r["type"] == "roofline":
            roofline = {"prompt_tokens": r["prompt_tokens"], "k": r["k"], "seconds": r["seconds"]}
            roofline.update({f: r[f] for f in ("backend", "curves", "bandwidth_gbs", "weight_bytes") if r.get(f) is not None})
    return roofline


def _set_ideal_speedups(roofline: dict[str, Any], rows: list[dict[str, Any]], summary: dict) -> None:
    """Each summary's speedup bound from the probe's curve, for the rows that run the probed forward."""
    from .roofline import ideal_speedup
    from .runners.hf import HFRunner

    HF_PEERS = HFRunner.MODES

    curve = dict(zip(roofline["k"], roofline["seconds"]))
    on_torch = roofline.get("backend", "torch") == "torch"  # records before the field: torch targets
    for row in rows:
        # the curve is the target's forward: paradec's rows run it, the transformers peers run
        # the same model only on a torch target; llama.cpp and the torch-ar rows cost differently
        if not (row["kind"] == "paradec" or (on_torch and row["name"] in HF_PEERS)):
            continue
        for s in summary[row["name"]].values():
            s.ideal_speedup = ideal_speedup(curve, s.mean_accepted, s.mean_forward_tokens)


def _skipped(last: dict, records: list[dict]) -> list[dict[str, Any]]:
    """The prompts the last segment skipped, then every later turn skipped (each once)."""
    skipped = list(last.get("skipped") or [])
    seen_skips = set()
    for r in records:
        if r["type"] == "skip" and (r["prompt_id"], r["turn"]) not in seen_skips:
            seen_skips.add((r["prompt_id"], r["turn"]))
            skipped.append({"prompt_id": r["prompt_id"], "turn": r["turn"], "reason": r["reason"]})
    return skipped


def _config(fp: dict, last: dict, quant: str) -> dict[str, Any]:
    """The run's settings: the fingerprint's, and what the last segment found (model name, backend, ...)."""
    return {
        "model": last.get("model_name") or fp["model"],
        "draft_model": fp["draft_model"],
        "suites": fp["suites"],
        "skipped_suites": last.get("skipped_suites", []),
        "methods": fp["methods"],
        "peers": fp["peers"],
        "temperature": fp["temperature"],
        "dtype": fp["dtype"],
        "device": fp["device"],
        "max_new_tokens": fp["max_new_tokens"],
        "prompts_per_category": fp["prompts_per_category"],
        "repeats": int(fp["repeats"]),
        "quick": last.get("quick", False),
        "seed": fp["seed"],
        "threads": fp["threads"],
        "chat_template": last.get("chat_template"),
        "backend": last.get("backend"),
        "llama_cpp_quantization": quant,
    }


def result_from_records(records: list[dict]) -> BenchResult:
    """The result (what ``--json`` writes, the tables and the report read) from the records
    of a run, however many segments it took. Figures come from whole prompt turns only: a turn
    counts once every row still running has all its repeats of it."""
    from .metrics import summarize

    fp, segs = _checked_header(records)
    first, last = segs[0], segs[-1]
    names = list(fp["methods"]) + list(fp["peers"])
    row_recs = _RowRecords.of(records)
    sample_recs = {sample_key(r): r for r in records if r["type"] == "sample"}
    samples = _whole_turns(sample_recs, names, row_recs.failed, int(fp["repeats"]))
    rows = [row_recs.result(n, sample_recs) for n in names]

    categories = list(last.get("categories") or dict.fromkeys(s.category for s in samples))
    summary = summarize(samples, names, categories, baseline="ar", hf="hf")
    roofline = _roofline(records)
    if roofline:
        _set_ideal_speedups(roofline, rows, summary)

    segments = _segments(records)
    complete = bool(segments[-1]["complete"])
    quant = next((r.get("quantization") for r in row_recs.latest.values() if r.get("quantization")), "")
    peak = _max([s["peak_rss_mb"] for s in segments] + [r.get("peak_rss_mb") for r in sample_recs.values()])
    return BenchResult(
        paradec_bench=1,
        date=first["start"],
        command=last.get("command"),
        config=_config(fp, last, quant),
        fingerprint=fp,
        machine={**(last.get("machine") or {}), "loadavg_start": first.get("loadavg"),
                 "loadavg_end": segments[-1]["loadavg_end"]},
        load_s=last.get("load_s"),
        categories=categories,
        prompts=last.get("prompts") or {},
        rows=rows,
        roofline=roofline,
        summary={r: {c: s.to_dict() for c, s in summary[r].items()} for r in names},
        samples=[s.to_dict() for s in samples],
        skipped=_skipped(last, records),
        interrupted=not complete,
        complete=complete,
        segments=segments,
        peak_rss_mb=peak,
        measurements=len(sample_recs),
        wall_s=sum(s["wall_s"] for s in segments),
    )


def machine_label(m: dict) -> str:
    """A segment's machine in one line: CPU model, cores, GPU."""
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m.get('cpu') or 'unknown CPU'}, {m.get('cpu_count')} cores{gpu}"


def _segments(records: list[dict]) -> list[dict]:
    """Per segment: start and end time, load average at both ends (and its maximum over the
    measurements), measurements, how it ended, git commit and peak RSS."""
    out: dict[int, dict] = {}
    for r in records:
        t = r["type"]
        if t == "segment":
            out[r["segment"]] = {
                "segment": r["segment"], "start": r["start"], "end": r["start"], "t0": r["t"], "t1": r["t"],
                "loadavg_start": r.get("loadavg"), "loadavg_end": r.get("loadavg"), "loadavg_max": r.get("loadavg"),
                "measurements": 0, "ended": "killed", "complete": False, "git_commit": r.get("git_commit"),
                "git_dirty": r.get("git_dirty"), "peak_rss_mb": None, "command": r.get("command"),
                "machine": machine_label(r.get("machine") or {}),
            }
            continue
        s = out.get(r.get("segment"))
        if s is None or "t" not in r:
            continue
        s["t1"], s["end"] = r["t"], iso(r["t"])
        if r.get("loadavg") is not None:
            s["loadavg_end"] = r["loadavg"]
            s["loadavg_max"] = _max([s["loadavg_max"], r["loadavg"]])
        if r.get("peak_rss_mb") is not None:
            s["peak_rss_mb"] = _max([s["peak_rss_mb"], r["peak_rss_mb"]])
        if t == "sample":
            s["measurements"] += 1
        elif t == "segment_end":
            s["complete"] = bool(r.get("complete"))
            s["ended"] = "finished" if s["complete"] else "interrupted"
    segs = sorted(out.values(), key=lambda s: s["segment"])
    for s in segs:
        s["wall_s"] = max(0.0, s.pop("t1") - s.pop("t0"))
    return segs
