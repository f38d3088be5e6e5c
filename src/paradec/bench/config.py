"""Benchmark options and their validation. Everything here runs before any model is loaded, so
bad input fails in a second with a one-line error."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ParadecError
from ..options import like, option
from ..server.config import LaunchConfig

QUICK_PROMPTS_PER_CATEGORY = 1
QUICK_MAX_NEW_TOKENS = 24
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class BenchConfig:
    """``paradec bench``'s options (each field with an ``option`` spec is one), then what
    ``validate`` fills in."""

    model: Optional[str] = option(None, "--model", "-m", help="Target: packaged name, model dir, .gguf file or cached hub "
                                  "id (default smollm2-135m).")
    draft_model: Optional[str] = option(None, "--draft-model", help="Draft model (same tokenizer): enables method draft "
                                        "and peer hf-assisted.")
    suite: str = option("all", "--suite", help="Comma list of mt_bench, humaneval, translation, summarization, qa, math, "
                        "rag; or all; or structured (JSON Schemas, constrained; runs alone).")
    methods: str = option("all", "--methods", help="Comma list of paradec methods, or all (ar always runs: it is the "
                          "baseline).")
    peers: str = option("all", "--peers", help="Comma list of hf, hf-pld, hf-assisted, llama.cpp, llama.cpp-pld, "
                        "torch-ar, torch-ar-bf16 (paradec ar on the torch backend beside a native target; not in all); "
                        "all or none.")
    temperature: float = option(0.0, "--temperature", "-t", help="0 = greedy (identity is checked); > 0 benchmarks "
                                "sampling.")
    dtype: str = option("float32", "--dtype", help="float32, bfloat16 or float16.")
    device: str = option("auto", "--device", help="cpu, cuda, or auto (cuda when present).")
    backend: str = like(LaunchConfig, "backend")  # the target's backend, as paradec serve takes it
    max_new_tokens: Optional[int] = option(None, "--max-new-tokens", "-n", help="Token limit per answer (default 128; 24 "
                                           "with --quick).")
    prompts_per_category: Optional[int] = option(None, "--prompts-per-category", help="Evenly spaced prompts per "
                                                 "category (default all; 1 with --quick).")
    repeats: int = option(1, "--repeats", help="Timed runs of every prompt per row.")
    quick: bool = option(False, "--quick", help="A few prompts per category and short outputs (a smoke run).")
    json_path: Optional[str] = option(None, "--json", help="Write every raw figure to this JSON file.")
    report_dir: Optional[str] = option(None, "--report", help="Write report.md and PNG plots into this directory.")
    seed: int = option(0, "--seed", help="Base seed for sampling runs.")
    threads: Optional[int] = option(None, "--threads", help="CPU threads for torch and llama.cpp (default: torch's "
                                    "choice).")
    roofline: bool = True
    resume: Optional[str] = option(None, "--resume", help="Records file (JSON lines): every finished measurement is "
                                   "appended at once; run the same command again to continue where it stopped.")
    fresh: bool = option(False, "--fresh", help="With --resume: start the records file over (the old one is kept as "
                         "PATH.bak).")
    from_path: Optional[str] = option(None, "--from", help="Rebuild the tables, --json and --report from a --resume "
                                      "records file; runs nothing.")
    # filled in by validate()
    suites: list[str] = field(default_factory=list)
    skipped_suites: list[str] = field(default_factory=list)
    method_list: list[str] = field(default_factory=list)
    peer_list: list[str] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return QUICK_MAX_NEW_TOKENS if self.quick else DEFAULT_MAX_NEW_TOKENS

    @property
    def per_category(self) -> int | None:
        if self.prompts_per_category is not None:
            return self.prompts_per_category
        return QUICK_PROMPTS_PER_CATEGORY if self.quick else None


def _names(spec: str | None, what: str) -> list[str]:
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if not names:
        raise ParadecError(f"--{what} is empty")
    return list(dict.fromkeys(names))


def parse_methods(spec: str | None, has_draft: bool) -> list[str]:
    """``--methods`` -> paradec methods, ``ar`` first (it is the baseline and the reference)."""
    from ..proposers import METHODS

    names = _names("all" if spec is None else spec, "methods")
    if names == ["all"]:
        names = [m for m, (_, needs_draft) in METHODS.items() if has_draft or not needs_draft]
    for m in names:
        if m not in METHODS:
            raise ParadecError(f"unknown method '{m}' (choose from {', '.join(METHODS)}, or all)")
        if METHODS[m][1] and not has_draft:
            raise ParadecError(f"method '{m}' needs --draft-model")
    return ["ar"] + [m for m in names if m != "ar"]


def parse_peers(spec: str | None, has_draft: bool) -> list[str]:
    from .runners import OPT_IN_PEERS, PEERS

    names = _names("all" if spec is None else spec, "peers")
    if names == ["none"]:
        return []
    if names == ["all"]:
        return [p for p in PEERS if (has_draft or p != "hf-assisted") and p not in OPT_IN_PEERS]
    for p in names:
        if p not in PEERS:
            raise ParadecError(f"unknown peer '{p}' (choose from {', '.join(PEERS)}, all or none)")
    if "hf-assisted" in names and not has_draft:
        raise ParadecError("peer 'hf-assisted' needs --draft-model")
    return names


def check_writable_file(path: str, option: str) -> None:
    p = Path(path).expanduser()
    if p.is_dir():
        raise ParadecError(f"{option} {path} is a directory, not a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ParadecError(f"{option} {path}: directory {parent} does not exist")
    _probe_dir(parent, option, path)
    if p.exists() and not os.access(p, os.W_OK):
        raise ParadecError(f"{option} {path} is not writable")


def check_writable_dir(path: str, option: str) -> None:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ParadecError(f"{option} {path} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParadecError(f"{option} {path} cannot be created ({e.strerror or e})") from None
    _probe_dir(p, option, path)


def _probe_dir(d: Path, option: str, shown: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        raise ParadecError(f"{option} {shown} is not writable ({e.strerror or e})") from None


def validate(cfg: BenchConfig) -> BenchConfig:
    from ..models.loader import parse_device, parse_dtype
    from ..suites import parse_suites

    parse_dtype(cfg.dtype)
    from ..models.native.select import BACKENDS

    if cfg.backend not in BACKENDS:
        raise ParadecError(f"--backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if cfg.device in (None, "", "auto"):
        cfg.device = str(parse_device(None))
    else:
        parse_device(cfg.device)
    if cfg.temperature is None or cfg.temperature < 0:
        raise ParadecError(f"--temperature must be >= 0, got {cfg.temperature}")
    if cfg.new_tokens <= 0:
        raise ParadecError(f"--max-new-tokens must be positive, got {cfg.new_tokens}")
    if cfg.prompts_per_category is not None and cfg.prompts_per_category <= 0:
        raise ParadecError(f"--prompts-per-category must be positive, got {cfg.prompts_per_category}")
    if cfg.repeats <= 0:
        raise ParadecError(f"--repeats must be positive, got {cfg.repeats}")
    if cfg.threads is not None and cfg.threads <= 0:
        raise ParadecError(f"--threads must be positive, got {cfg.threads}")
    cfg.suites, cfg.skipped_suites = parse_suites(cfg.suite)
    if not cfg.suites:
        raise ParadecError("no suite is installed: run `pip install 'paradec[bench]'`")
    has_draft = bool(cfg.draft_model)
    cfg.method_list = parse_methods(cfg.methods, has_draft)
    cfg.peer_list = parse_peers(cfg.peers, has_draft)
    if cfg.json_path:
        check_writable_file(cfg.json_path, "--json")
    if cfg.report_dir:
        check_writable_dir(cfg.report_dir, "--report")
    if cfg.fresh and not cfg.resume:
        raise ParadecError("--fresh needs --resume PATH (it starts that records file over)")
    if cfg.resume:
        check_writable_file(cfg.resume, "--resume")
        if cfg.json_path and same_file(cfg.json_path, cfg.resume):
            raise ParadecError("--json and --resume name the same file: the JSON would overwrite the records")
    return cfg


def same_file(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
