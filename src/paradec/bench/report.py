"""Benchmark output: rich tables for the terminal, and a markdown report with PNG plots. Both
work from the result dict that ``run_bench`` returns (the same dict as ``--json``), so a report
can be rebuilt from a saved JSON file."""

from __future__ import annotations

from pathlib import Path

from .metrics import OVERALL, STEP_PARTS
from .records import BenchResult

DEFINITIONS = """\
- **tokens/s**: generated tokens over wall time, prefill included, summed over the samples.
  Every row stops at the end-of-sequence token or at the token limit, and every row gets the
  same prompt token ids.
- **vs ar / vs hf**: tokens/s over paradec `ar`'s (plain decoding in paradec's loop) and over
  transformers `generate` greedy (`hf`) on the same samples.
- **accepted/fwd**: tokens committed per target forward (accepted draft tokens + the target's
  own token; 1 for plain decoding). For peers it is generated tokens over target forwards.
- **fwd/token**: target forwards per generated token.
- **draft share**: time spent drafting over total time (paradec methods).
- **time per forward** (paradec methods): milliseconds per target forward spent drafting, in the
  target forward, verifying, and in the rest of the loop (*other*: cache rollback, the
  proposers' bookkeeping, Python), with the prefill apart; *per token* is their sum over the
  tokens committed per forward.
- **identical**: outputs whose token ids equal `ar`'s greedy output (greedy runs only).
- **ideal**: the speedup the row's acceptance would give if drafting and verification were free,
  from the roofline probe: `accepted/fwd × t(1) / t(tokens fed per forward)`, where `t(k)` is the
  transformers target's forward time for k tokens (not shown for llama.cpp rows, whose forwards
  cost differently).
- **RSS**: the process's peak resident memory (`getrusage`) after the row's last run. It is a
  high-water mark of the whole process, so it never goes down from one row to the next; `rss`
  in the JSON is the largest current RSS seen right after the row's runs.
- **RSS +**: the resident memory the row added when it was prepared and ran for the first time
  (current RSS before and after its warm-up): its own model copy, drafter and caches. Memory the
  allocator keeps from earlier rows can make it small or negative.
"""


def _f(v, fmt="{:.2f}", none="–") -> str:
    return none if v is None else fmt.format(v)


def _pct(v) -> str:
    return _f(None if v is None else 100 * v, "{:.0f}%")


def _row_label(row: dict, peer_suffix: bool = True) -> str:
    return row["name"] if row["kind"] == "paradec" or not peer_suffix else f"{row['name']} (peer)"


def overall_rows(result: BenchResult, peer_suffix: bool = True) -> list[list[str]]:
    out = []
    for row in result["rows"]:
        s = result["summary"][row["name"]][OVERALL]
        status = row["status"]  # failure reasons are listed under the table
        if row["status"] == "ok" and not s["samples"]:
            status = "no samples"
        ident = f"{s['identical']}/{s['compared']}" if s["compared"] else "–"
        out.append([
            _row_label(row, peer_suffix),
            _f(s["tokens_per_s"] if s["samples"] else None, "{:.1f}"),
            _f(s["speedup_vs_ar"], "{:.2f}x"),
            _f(s["speedup_vs_hf"], "{:.2f}x"),
            _f(s["mean_accepted"]),
            _f(s["forwards_per_token"]),
            _pct(s["draft_share"]),
            ident,
            _f(s["ideal_speedup"], "{:.2f}x"),
            _f(row["peak_rss_mb"], "{:.0f}"),
            _f(row.get("rss_growth_mb"), "{:+.0f}"),
            status,
        ])
    return out


# short category names for the terminal table (the markdown report has the full names)
SHORT_CATEGORY = {"mt_bench": "mt", "humaneval": "code", "translation": "transl", "summarization": "summ",
                  OVERALL: "all"}
TERMINAL_HEADERS = {"tokens/s": "tok/s", "accepted/fwd": "acc/fwd", "fwd/token": "fwd/tok", "draft share": "draft",
                    "identical": "same"}
OVERALL_COLUMNS = ["row", "tokens/s", "vs ar", "vs hf", "accepted/fwd", "fwd/token", "draft share", "identical",
                   "ideal", "RSS MB", "RSS + MB", "status"]


def category_rows(result: BenchResult, key: str = "speedup_vs_ar", fmt: str = "{:.2f}x", peer_suffix: bool = True) -> list[list[str]]:
    cats = result["categories"] + [OVERALL]
    out = []
    for row in result["rows"]:
        per = result["summary"][row["name"]]
        out.append([_row_label(row, peer_suffix)] + [_f(per[c][key] if per[c]["samples"] else None, fmt) for c in cats])
    return out


def print_tables(result: BenchResult, console=None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    cfg = result["config"]
    title = (f"{cfg['model']} · {cfg['dtype']} · {cfg['device']} · T={cfg['temperature']} · "
             f"{sum(result['prompts'].values())} prompts × ≤{cfg['max_new_tokens']} new tokens × {cfg['repeats']} repeat(s)")
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    # the terminal table leaves out fwd/token (1 / accepted for paradec), RSS and status: they are in
    # the report and the JSON, and failures are listed below the table
    keep = [i for i, c in enumerate(OVERALL_COLUMNS) if c not in ("fwd/token", "RSS MB", "RSS + MB", "status")]
    for i in keep:
        c = TERMINAL_HEADERS.get(OVERALL_COLUMNS[i], OVERALL_COLUMNS[i])
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for r in overall_rows(result, peer_suffix=False):
        t.add_row(*[r[i] for i in keep])
    console.print(t)
    for row in result["rows"]:
        if row["status"] != "ok":
            console.print(f"[red]{row['name']} failed:[/] {row['error']}", highlight=False)
    if result.get("peak_rss_mb"):
        console.print(f"process peak RSS {result['peak_rss_mb']:.0f} MB", highlight=False)
    segs = result.get("segments") or []
    if len(segs) > 1 or result.get("interrupted"):
        done = "complete" if result.get("complete") else "incomplete"
        console.print(f"{done}: {result.get('measurements', 0)} measurements over {len(segs)} segment(s)", highlight=False)
    t = Table(title="speedup vs ar per category", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ["row"] + result["categories"] + [OVERALL]:
        t.add_column(SHORT_CATEGORY.get(c, c), justify="left" if c == "row" else "right", no_wrap=True)
    for r in category_rows(result, peer_suffix=False):
        t.add_row(*r)
    console.print(t)


def step_rows(result: BenchResult) -> list[list[str]]:
    """The time-per-forward table: draft, forward, verify and other ms per target forward."""
    out = []
    for r in result["rows"]:
        s = result["summary"].get(r["name"], {}).get(OVERALL) or {}
        ms = s.get("step_ms")
        if not ms:
            continue
        total = sum(ms.values())
        out.append([_row_label(r)] + [f"{ms[k]:.1f}" for k in STEP_PARTS]
                   + [f"{total:.1f}", _f(s.get("mean_accepted")), f"{total / s['mean_accepted']:.1f}", _pct(s.get("prefill_share"))])
    return out


def _segment_lines(result: BenchResult) -> list[str]:
    segs = result.get("segments") or []
    if not segs:
        return []
    if len(segs) == 1:
        s = segs[0]
        return [f"- ran in one segment, {s['start']} to {s['end']}, {s['measurements']} measurements"]
    out = [f"- the run spanned {len(segs)} segments (sessions), resumed from its records file:"]
    commits = {s.get("git_commit") for s in segs}
    machines = {s.get("machine") for s in segs}
    for s in segs:
        load = (f"; load average {_f(s['loadavg_start'])} at the start, {_f(s['loadavg_end'])} at the end, "
                f"{_f(s['loadavg_max'])} at most" if s.get("loadavg_start") is not None else "")
        commit = f"; commit {str(s['git_commit'])[:10]}{' (modified)' if s.get('git_dirty') else ''}" if len(commits) > 1 else ""
        where = f"; on {s.get('machine')}" if len(machines) > 1 else ""
        out.append(f"  - segment {s['segment']}: {s['start']} to {s['end']} ({s['wall_s'] / 60:.1f} min, "
                   f"{s['ended']}), {s['measurements']} measurements{load}{commit}{where}")
    if len(commits) > 1:
        out.append("  - **the segments ran different paradec commits**: compare their rows with care")
    if len(machines) > 1:
        out.append("  - **the segments ran on different machines**: every row ran each prompt turn on the same "
                   "machine, so speedups compare rows fairly, but absolute tokens/s mix the machines, and the "
                   "roofline curve is the first segment's machine's")
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s):
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: BenchResult, images: dict[str, str] | None = None) -> str:
    """The report: the run's setting, the tables (with the plots in ``images`` by name), the
    roofline, what failed or was skipped, and the definitions."""
    images = images or {}
    parts = _md_setting(result) + _segment_lines(result)
    parts += _md_tables(result, images)
    parts += _md_roofline(result, images)
    parts += _md_left_out(result)
    parts += ["## Definitions", "", DEFINITIONS]
    return "\n".join(parts)


def _md_setting(result: BenchResult) -> list[str]:
    """The title, the command, and what ran where: date, machine, software, model and settings."""
    cfg, m = result["config"], result["machine"]
    parts = [f"# paradec bench: {cfg['model']}", ""]
    if result.get("command"):
        parts += ["```bash", result["command"], "```", ""]
    parts += [
        f"- date: {result['date']}",
        f"- machine: {m.get('cpu') or 'unknown CPU'}, {m.get('cpu_count')} cores, "
        f"{m.get('memory_gb', '?')} GB; torch threads {m.get('torch_threads')}"
        + (f"; GPU {m['gpu']}" if m.get("gpu") else "")
        + (f"; load average {m['loadavg_start']} at the start, {m.get('loadavg_end')} at the end"
           if m.get("loadavg_start") is not None else ""),
        f"- software: {m.get('platform')}, Python {m.get('python')}, torch {m.get('torch')}, "
        f"transformers {m.get('transformers')}, llama-cpp-python {m.get('llama_cpp_python') or 'not installed'}",
        f"- model: {cfg['model']}" + (f", draft {cfg['draft_model']}" if cfg.get("draft_model") else "")
        + f"; {cfg['dtype']} on {cfg['device']} for paradec and transformers rows",
    ]
    if cfg.get("backend"):
        parts.append(f"- paradec rows' target backend: {cfg['backend']}")
    if cfg.get("llama_cpp_quantization"):
        parts.append(f"- llama.cpp rows run the GGUF's own quantization ({cfg['llama_cpp_quantization']}), not {cfg['dtype']}")
    parts += [
        f"- temperature {cfg['temperature']}; at most {cfg['max_new_tokens']} new tokens; {cfg['repeats']} repeat(s); "
        f"prompts per category: {', '.join(f'{c} {n}' for c, n in result['prompts'].items())}",
        f"- prompts use the chat template: {'yes' if cfg.get('chat_template') else 'no (raw completion / Q&A transcript)'}",
        f"- wall time {result['wall_s'] / 60:.1f} min"
        + ("; **incomplete**: these are the whole prompt turns measured so far" if result.get("interrupted") else ""),
    ]
    if result.get("peak_rss_mb"):
        parts.append(f"- process peak RSS {result['peak_rss_mb']:.0f} MB (`getrusage`, the highest of all segments)")
    return parts


def _md_tables(result: BenchResult, images: dict[str, str]) -> list[str]:
    """The overall table, the per-category tables and the time per forward."""
    cats = result["categories"]
    parts = [
        "",
        "## Overall",
        "",
        _md_table(OVERALL_COLUMNS, overall_rows(result)),
        "",
        "## Speedup vs ar per category",
        "",
        _md_table(["row"] + cats + [OVERALL], category_rows(result)),
        "",
    ]
    if "speedup" in images:
        parts += [f"![speedup per category]({images['speedup']})", ""]
    parts += ["## Tokens/s per category", "", _md_table(["row"] + cats + [OVERALL], category_rows(result, "tokens_per_s", "{:.1f}")), ""]
    parts += ["## Mean accepted tokens per forward", "", _md_table(["row"] + cats + [OVERALL], category_rows(result, "mean_accepted")), ""]
    steps = step_rows(result)
    if steps:
        parts += ["## Time per forward", "",
                  "Where each paradec row's time goes, in ms per target forward (overall; prefill apart):", "",
                  _md_table(["row", "draft", "forward", "verify", "other", "total", "accepted/fwd", "ms per token",
                             "prefill share"], steps), ""]
    if "accept_hist" in images:
        parts += [f"![accepted tokens per forward]({images['accept_hist']})", ""]
    return parts


def _md_roofline(result: BenchResult, images: dict[str, str]) -> list[str]:
    """The roofline probe's curve and each row's ideal speedup beside its measured one (none without a probe)."""
    rl = result.get("roofline") or {}
    if not rl:
        return []
    t1 = rl["seconds"][0]
    parts = [
        "## Roofline",
        "",
        f"Target forward time for k new tokens after a {rl['prompt_tokens']}-token prompt in the cache "
        "(median of repeated forwards):",
        "",
        _md_table(["k", "forward ms", "relative to k=1", "k / t(k) tokens/s"],
                  [[str(k), f"{s * 1000:.2f}", f"{s / t1:.2f}", f"{k / s:.0f}"] for k, s in zip(rl["k"], rl["seconds"])]),
        "",
        _md_table(["row", "accepted/fwd", "tokens fed/fwd", "ideal speedup", "measured vs ar"],
                  [[_row_label(r), _f(result["summary"][r["name"]][OVERALL]["mean_accepted"]),
                    _f(result["summary"][r["name"]][OVERALL]["mean_forward_tokens"]),
                    _f(result["summary"][r["name"]][OVERALL]["ideal_speedup"], "{:.2f}x"),
                    _f(result["summary"][r["name"]][OVERALL]["speedup_vs_ar"], "{:.2f}x")] for r in result["rows"]]),
        "",
    ]
    parts += _other_curves_md(rl)
    if "roofline" in images:
        parts += [f"![roofline]({images['roofline']})", ""]
    return parts


def _md_left_out(result: BenchResult) -> list[str]:
    """The rows that failed, the prompts skipped and the suites not installed."""
    parts: list[str] = []
    failed = [r for r in result["rows"] if r["status"] != "ok"]
    if failed:
        parts += ["## Rows that failed", ""] + [f"- `{r['name']}`: {r['error']}" for r in failed] + [""]
    if result.get("skipped"):
        parts += ["## Prompts skipped", ""] + [
            f"- {s['prompt_id']}" + (f" turn {s['turn'] + 1}" if "turn" in s else "") + f": {s['reason']}" for s in result["skipped"]
        ] + [""]
    if result["config"].get("skipped_suites"):
        parts += [f"Suites not installed, so not run: {', '.join(result['config']['skipped_suites'])}.", ""]
    return parts


# ---- plots ------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(plt, n: int) -> list:
    """n distinct colours: tab10 up to 10 rows, tab20 beyond (tab10 repeats after 10)."""
    return list(plt.get_cmap("tab10" if n <= 10 else "tab20").colors)[:n] if n <= 20 else [None] * n


def plot_speedup(result: BenchResult, path: Path) -> None:
    plt = _plt()
    cats = result["categories"] + [OVERALL]
    rows = [r for r in result["rows"] if r["name"] != "ar" and result["summary"][r["name"]][OVERALL]["samples"]]
    fig, ax = plt.subplots(figsize=(min(14, max(7, 1.2 * len(cats) + 0.15 * len(rows) * len(cats))), 5))
    width = 0.8 / max(1, len(rows))
    colors = _colors(plt, len(rows))
    for i, r in enumerate(rows):
        vals = [result["summary"][r["name"]][c]["speedup_vs_ar"] or 0.0 for c in cats]
        ax.bar([x + i * width - 0.4 + width / 2 for x in range(len(cats))], vals, width, label=_row_label(r),
               color=colors[i], hatch="//" if r.get("kind") == "peer" else None, edgecolor="white", linewidth=0)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cats)), cats, rotation=20)
    ax.set_ylabel("speedup vs paradec ar")
    ax.set_title(f"{result['config']['model']}: speedup per category (hatched: peers)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accept_hist(result: BenchResult, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [r["name"] for r in result["rows"] if r["kind"] == "paradec" and r["name"] != "ar"]
    for name in names:
        counts: dict[int, int] = {}
        for s in result["samples"]:
            if s["runner"] == name:
                for a in s["accept_lengths"]:
                    counts[a] = counts.get(a, 0) + 1
        total = sum(counts.values())
        if not total:
            continue
        ks = sorted(counts)
        ax.plot(ks, [counts[k] / total for k in ks], marker="o", label=name)
    ax.set_xlabel("tokens committed per forward")
    ax.set_ylabel("share of forwards")
    ax.set_title("accepted length per forward")
    if names:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bandwidth_limit_s(rl: dict) -> float | None:
    """The physical limit of one forward: the GGUF's bytes read once over the measured read
    bandwidth (seconds), or None where either is unknown."""
    if rl.get("weight_bytes") and rl.get("bandwidth_gbs"):
        return rl["weight_bytes"] / (rl["bandwidth_gbs"] * 1e9)
    return None


def _other_curves_md(rl: dict) -> list[str]:
    curves = rl.get("curves") or {}
    if not curves and not bandwidth_limit_s(rl):
        return []
    own = f"{rl.get('backend', 'target')} (rows above)"
    head = ["k", own] + list(curves)
    table = []
    for i, k in enumerate(rl["k"]):
        vals = [rl["seconds"][i]] + [c[i] if i < len(c) else None for c in curves.values()]
        table.append([str(k)] + [f"{v * 1000:.2f}" if v else "-" for v in vals])
    out = ["Every backend on the same prompt, forward ms for k new tokens (llama.cpp: one batched `eval`, "
           "logits of every position):", "", _md_table(head, table), ""]
    lim = bandwidth_limit_s(rl)
    if lim:
        out += [f"Memory limit: the GGUF's {rl['weight_bytes'] / 1e6:.0f} MB read once per forward at the measured "
                f"{rl['bandwidth_gbs']:.1f} GB/s read bandwidth = **{lim * 1000:.2f} ms** a forward "
                f"({1 / lim:.0f} forwards/s); the {rl.get('backend', 'target')} k=1 forward is at "
                f"{lim / rl['seconds'][0]:.0%} of it.", ""]
    return out


def plot_roofline(result: BenchResult, path: Path) -> None:
    plt = _plt()
    rl = result["roofline"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    a1.plot(rl["k"], [s * 1000 for s in rl["seconds"]], marker="o", color="black", label=rl.get("backend", "target"))
    for label, c in (rl.get("curves") or {}).items():
        pts = [(k, v * 1000) for k, v in zip(rl["k"], c) if v]
        if pts:
            a1.plot(*zip(*pts), marker=".", label=label)
    lim = bandwidth_limit_s(rl)
    if lim:
        a1.axhline(lim * 1000, color="gray", linestyle="--", linewidth=1,
                   label=f"memory limit ({rl['weight_bytes'] / 1e6:.0f} MB at {rl['bandwidth_gbs']:.0f} GB/s)")
    if rl.get("curves") or lim:
        a1.set_yscale("log")
        a1.legend(fontsize=7)
    a1.set_xscale("log", base=2)
    a1.set_xlabel("new tokens per forward (k)")
    a1.set_ylabel("forward time (ms)")
    a1.set_title(f"target forward time, {rl['prompt_tokens']}-token cache")
    rows = [r for r in result["rows"] if result["summary"][r["name"]][OVERALL]["ideal_speedup"]]
    labels = [r["name"] for r in rows]
    ideal = [result["summary"][r["name"]][OVERALL]["ideal_speedup"] for r in rows]
    measured = [result["summary"][r["name"]][OVERALL]["speedup_vs_ar"] or 0.0 for r in rows]
    xs = range(len(rows))
    a2.bar([x - 0.2 for x in xs], ideal, 0.4, label="ideal (free drafting)")
    a2.bar([x + 0.2 for x in xs], measured, 0.4, label="measured vs ar")
    a2.axhline(1.0, color="black", linewidth=0.8)
    a2.set_xticks(list(xs), labels, rotation=30, fontsize=8)
    a2.set_ylabel("speedup")
    a2.set_title("ideal vs measured speedup")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: BenchResult, out_dir: str) -> dict[str, str]:
    """Write ``report.md`` and its PNGs into ``out_dir``; return {name: path}."""
    d = Path(out_dir).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    images = {"speedup": "speedup.png", "accept_hist": "accept_hist.png"}
    plot_speedup(result, d / images["speedup"])
    plot_accept_hist(result, d / images["accept_hist"])
    if result.get("roofline"):
        images["roofline"] = "roofline.png"
        plot_roofline(result, d / images["roofline"])
    (d / "report.md").write_text(markdown(result, images))
    return {"report": str(d / "report.md"), **{k: str(d / v) for k, v in images.items()}}
