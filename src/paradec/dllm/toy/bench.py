"""``paradec dllm bench``: every decoding policy on held-out task instances: forwards, tokens per
forward, tokens/s and accuracy, against one-token-per-step decoding and the AR reference; writes
results.json, results.md and frontier.png (accuracy vs tokens per forward)."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import heldout, run_ar, run_method
from .tasks import TASKS

# (label, method, options): sweeps give each policy a curve on the frontier
CONFIGS: list[tuple[str, str, dict]] = [
    ("one", "one", {}),
    ("one semi-AR b6", "one", {"block_size": "6"}),
    ("freedave d4", "freedave", {"depth": "4"}),
    ("freedave d8", "freedave", {"depth": "8"}),
    ("topk 9 steps", "topk", {"steps": "9"}),
    ("topk 6 steps", "topk", {"steps": "6"}),
    ("topk 3 steps", "topk", {"steps": "3"}),
    ("topk b6 2 steps", "topk", {"steps": "2", "block_size": "6"}),
    ("random k1", "random", {"k": "1"}),
    ("random k2", "random", {"k": "2"}),
    ("ascending", "ascending", {}),
    ("eoser", "eoser", {}),
    ("threshold 0.99", "threshold", {"tau": "0.99"}),
    ("threshold 0.9", "threshold", {"tau": "0.9"}),
    ("threshold 0.7", "threshold", {"tau": "0.7"}),
    ("threshold 0.5", "threshold", {"tau": "0.5"}),
    ("factor 0.5", "factor", {"f": "0.5"}),
    ("factor 1", "factor", {"f": "1"}),
    ("factor 2", "factor", {"f": "2"}),
    ("margin 0.9", "margin", {"tau": "0.9"}),
    ("margin 0.6", "margin", {"tau": "0.6"}),
    ("entropy 0.1", "entropy", {"tau": "0.1"}),
    ("entropy 0.5", "entropy", {"tau": "0.5"}),
    ("prophet", "prophet", {}),
    ("localleap", "localleap", {}),
    ("localleap 0.8/0.5", "localleap", {"anchor": "0.8", "local": "0.5"}),
    ("credit 0.9", "credit", {"tau": "0.9"}),
    ("credit 0.7", "credit", {"tau": "0.7"}),
    ("adablock", "adablock", {}),
    ("edit 0.7/0.9", "edit", {"tau": "0.7", "edit_tau": "0.9"}),
    ("edit 0.5/0.9", "edit", {"tau": "0.5", "edit_tau": "0.9"}),
    ("learn2pd 0.9", "learn2pd", {"tau": "0.9"}),
    ("learn2pd 0.7", "learn2pd", {"tau": "0.7"}),
    ("threshold 0.9 b6", "threshold", {"tau": "0.9", "block_size": "6"}),
    ("threshold 0.9 prefix cache", "threshold", {"tau": "0.9", "cache": "prefix", "block_size": "6", "measure_agreement": "1"}),
    ("threshold 0.9 dual cache", "threshold", {"tau": "0.9", "cache": "dual", "block_size": "6", "measure_agreement": "1"}),
    ("threshold 0.9 dual cache r2", "threshold", {"tau": "0.9", "cache": "dual", "block_size": "6", "refresh": "2", "measure_agreement": "1"}),
]


def run_bench(model, ar_model=None, n_per_task: int = 100, batch_size: int = 64, out_dir: str | None = None,
              only: list[str] | None = None, filter_model=None, log=print) -> list[dict]:
    insts = heldout(n_per_task)
    rows = []
    ref_tokens = None
    run_method(model, "one", {}, insts[:8], batch_size=batch_size)  # warm-up, not reported
    for label, method, opts in CONFIGS:
        if only and method not in only and label not in only:
            continue
        if method == "learn2pd" and filter_model is None:
            log(f"skip {label}: the model has no trained filter")
            continue
        agreement = None
        if opts.get("measure_agreement"):
            # the agreement check runs an extra (uncounted) full forward per cached step: measure it
            # in a separate pass, and time the policy without it (the decisions are the same)
            sc, _ = run_method(model, method, opts, insts, batch_size=batch_size, label=label)
            agreement = sc.cache_agreement
            opts = {k: v for k, v in opts.items() if k != "measure_agreement"}
        sc, res = run_method(model, method, opts, insts, batch_size=batch_size, label=label, filter_model=filter_model)
        if agreement is not None:
            sc.cache_agreement = agreement
        toks = [r.tokens for r in res]
        if label == "one":
            ref_tokens = toks
        if ref_tokens is not None:
            sc.agree_one = sum(a == b for a, b in zip(toks, ref_tokens)) / len(toks)
        rows.append(sc.row())
        log(_line(sc.row()))
    if ar_model is not None:
        sc = run_ar(ar_model, insts, batch_size=batch_size)
        rows.append(sc.row())
        log(_line(sc.row()))
    if out_dir:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps({"n_per_task": n_per_task, "batch_size": batch_size, "rows": rows}, indent=1))
        (d / "results.md").write_text(markdown(rows))
        plot(rows, d / "frontier.png")
    return rows


def _line(r: dict) -> str:
    return (f"{r['label']:30s} acc {100 * r['accuracy']:5.1f}%  copy {100 * r['by_task'].get('copy', 0):5.1f}  "
            f"rev {100 * r['by_task'].get('reverse', 0):5.1f}  fw {r['forwards']:5.2f}  tok/fw {r['tokens_per_forward']:4.2f}  "
            f"tok/s {r['tokens_per_s']:7.0f}")


def markdown(rows: list[dict]) -> str:
    tasks = [t for t in TASKS if any(t in r["by_task"] for r in rows)]
    head = ["policy", "accuracy %"] + [t for t in tasks] + ["forwards/seq", "tokens/forward", "answer tok/forward", "tokens/s", "= one %", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        notes = []
        if r.get("cache_agreement") is not None:
            notes.append(f"cache agreement {100 * r['cache_agreement']:.1f}%")
        if r.get("rows_per_forward", 1) > 1.001:
            notes.append(f"{r['rows_per_forward']:.1f} rows/forward")
        if r.get("edits"):
            notes.append(f"{r['edits']} edits")
        agree = "" if r.get("agree_one") is None else f"{100 * r['agree_one']:.1f}"
        out.append("| " + " | ".join(
            [r["label"], f"{100 * r['accuracy']:.1f}"] + [f"{100 * r['by_task'].get(t, 0):.0f}" for t in tasks]
            + [f"{r['forwards']:.2f}", f"{r['tokens_per_forward']:.2f}", f"{r['answer_tokens_per_forward']:.2f}",
               f"{r['tokens_per_s']:.0f}", agree, "; ".join(notes)]) + " |")
    return "\n".join(out) + "\n"


def _group(r: dict) -> str:
    cache = r["options"].get("cache")
    return f"{r['method']} + {cache} cache" if cache and cache != "none" else r["method"]


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] != "ar":
            groups.setdefault(_group(r), []).append(r)
    ar = next((r for r in rows if r["method"] == "ar"), None)
    one = next((r for r in rows if r["label"] == "one"), None)
    markers = "os^vD<>phX*P"
    panels = [("all tasks", None), ("latin + sort (strongly dependent tokens)", ("latin", "sort"))]
    for ax, (title, key) in zip(axes, panels):
        def acc(r, key=key):
            return 100 * (r["accuracy"] if key is None else sum(r["by_task"][t] for t in key) / len(key))

        for k, (name, rs) in enumerate(groups.items()):
            rs = sorted(rs, key=lambda r: r["tokens_per_forward"])
            ax.plot([r["tokens_per_forward"] for r in rs], [acc(r) for r in rs], marker=markers[k % len(markers)],
                    label=name, linestyle="-" if len(rs) > 1 else "none", markersize=7, color=f"C{k % 10}" if k < 10 else None)
        if one is not None:
            ax.axhline(acc(one), color="k", linestyle="--", linewidth=1, label="one token per step")
        if ar is not None:
            ax.axhline(acc(ar), color="gray", linestyle=":", linewidth=1.5, label="AR reference (1 token/forward)")
        ax.set_xlabel("tokens per forward (decoded answer positions / forwards)")
        ax.set_ylabel("exact-match accuracy %")
        ax.set_title(f"tiny dLLM speed/quality frontier: {title}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7.5, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
