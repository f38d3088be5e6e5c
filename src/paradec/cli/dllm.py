"""``paradec dllm ...`` (train, bench, methods) and ``paradec generate`` for diffusion models."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from ..errors import ParadecError
from ..outpath import writable_dir

dllm_app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Diffusion LMs: train the tiny dLLM and its AR reference, benchmark the decoding policies.",
)


def _check_only(only: list[str] | None, configs) -> None:
    """Every ``--only`` value names a method or a label of the benchmark's configurations."""
    known = {m for _, m, _ in configs} | {label for label, _, _ in configs}
    unknown = [o for o in only or [] if o not in known]
    if unknown:
        raise ParadecError(f"--only {', '.join(unknown)}: not a method or label of this benchmark "
                           f"(methods: {', '.join(dict.fromkeys(m for _, m, _ in configs))})")


@dllm_app.command("train")
def train_cmd(
    out: str = typer.Option("dllm-model", "--out", "-o", help="Output folder: OUT/dllm and OUT/ar."),
    kind: str = typer.Option("all", "--kind", help="all, dllm (with its Learn2PD filter) or ar."),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(1500, "--steps", min=1),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads (CPU)."),
    eval_n: int = typer.Option(100, "--eval-n", min=1, help="Held-out instances per task for the recorded accuracy."),
    filter_n: int = typer.Option(60, "--filter-n", min=1, help="Training instances per task whose trajectories train the filter."),
) -> None:
    """Train the shipped tiny masked diffusion LM (and/or the AR reference) on CPU from a seed,
    then measure one-token-per-step accuracy on held-out instances and record it in config.json."""
    import torch

    from ..dllm.toy.train import TrainConfig, train

    if kind not in ("all", "dllm", "ar"):
        raise ParadecError(f"--kind must be all, dllm or ar, got '{kind}'")
    writable_dir(out)  # before the training, not after it
    torch.set_num_threads(threads)
    log = lambda s: print(s, flush=True)
    for k in (["dllm", "ar"] if kind == "all" else [kind]):
        t0 = time.time()
        model = train(TrainConfig(kind=k, seed=seed, steps=steps, threads=threads), log=log)
        finish(model, k, Path(out) / k, seed, steps, threads, time.time() - t0, eval_n, log, filter_n)


def finish(model, kind: str, d: Path, seed: int, steps: int, threads: int, secs: float, eval_n: int, log=print,
           filter_n: int = 60) -> dict:
    """Save a trained model (float16 weights), train the dLLM's Learn2PD filter on its own
    trajectories, measure held-out accuracy of what is saved and record it in config.json."""
    import torch

    from ..dllm.toy.evaluate import heldout, run_ar, run_method
    from ..dllm.loaders import load_diffusion
    from ..dllm.policies.learned import collect, save_filter, train_filter
    from ..dllm.toy.tasks import GEN_LENGTH, TASKS, dataset

    cmd = f"paradec dllm train --kind {kind} --seed {seed} --steps {steps} --threads {threads}"
    meta = {"train": {"kind": kind, "seed": seed, "steps": steps, "threads": threads, "seconds": round(secs),
                      "command": cmd, "gen_length": GEN_LENGTH, "params": model.n_params()}}
    model.save(d, meta, dtype=torch.float16)
    m = load_diffusion(str(d))  # evaluate what is shipped (float16 weights, float32 compute)
    insts = heldout(eval_n)
    if kind == "dllm":
        sc, _ = run_method(m, "one", {}, insts)
        log("training the Learn2PD filter on the model's own one-token-per-step trajectories")
        train_prompts = [i.prompt_ids for t in TASKS for i in dataset(t, filter_n, seed + 1)]
        X, Y = collect(m, train_prompts, GEN_LENGTH)
        save_filter(train_filter(X, Y, seed=seed, epochs=300 if filter_n >= 20 else 5, log=log), d / "filter.safetensors")
    else:
        sc = run_ar(m, insts)
    measured = {"method": "one token per step" if kind == "dllm" else "greedy AR", "n_per_task": eval_n,
                "accuracy": round(sc.accuracy, 4), "by_task": {t: round(v, 4) for t, v in sc.by_task.items()}}
    c = json.loads((d / "config.json").read_text())
    c["measured"] = measured
    (d / "config.json").write_text(json.dumps(c, indent=1))
    log(f"{kind}: {model.n_params() / 1e6:.2f}M params, {secs / 60:.1f} min, held-out accuracy {100 * sc.accuracy:.1f}% "
        + " ".join(f"{t} {100 * v:.0f}" for t, v in sc.by_task.items()) + f" -> {d}")
    return measured


@dllm_app.command("bench")
def bench_cmd(
    model: str = typer.Option("tiny-dllm", "--model", "-m"),
    ar: str = typer.Option("tiny-ar", "--ar", help="AR reference model ('' to skip)."),
    n: int = typer.Option(100, "--n", min=1, help="Held-out instances per task."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    out: str = typer.Option("dllm-bench", "--out", "-o", help="Folder for results.json, results.md, frontier.png."),
    only: list[str] | None = typer.Option(None, "--only", help="Run only these methods or labels (repeatable)."),
    threads: int = typer.Option(1, "--threads", min=1),
) -> None:
    """Every decoding policy on held-out task instances: accuracy, forwards, tokens per forward,
    tokens/s, vs one-token-per-step and the AR reference; a frontier plot."""
    import torch

    from ..dllm.toy.bench import CONFIGS, run_bench
    from ..dllm.loaders import load_diffusion
    from ..dllm.policies.learned import filter_of

    _check_only(only, CONFIGS)
    writable_dir(out)
    torch.set_num_threads(threads)
    m = load_diffusion(model)
    arm = load_diffusion(ar) if ar else None
    run_bench(m, arm, n_per_task=n, batch_size=batch_size, out_dir=out, only=only, filter_model=filter_of(m),
              log=lambda s: print(s, flush=True))
    print(f"wrote {out}/results.json, results.md, frontier.png")


@dllm_app.command("text-bench")
def text_bench_cmd(
    model: str = typer.Option("smollm2-135m-dlm", "--model", "-m", help="A converted text dLLM (name or directory)."),
    mt: int = typer.Option(8, "--mt", min=0, help="Held-out MT-Bench first turns."),
    humaneval: int = typer.Option(8, "--humaneval", min=0, help="Held-out HumanEval problems (pass@1, sandboxed)."),
    gen_mt: int = typer.Option(64, "--gen-mt", min=1),
    gen_he: int = typer.Option(128, "--gen-he", min=1),
    only: list[str] | None = typer.Option(None, "--only", help="Run only these methods or labels (repeatable)."),
    out: str = typer.Option("dllm-text-bench", "--out", "-o"),
    threads: int = typer.Option(1, "--threads", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
) -> None:
    """Speed/quality frontier of a converted text dLLM: every policy on held-out MT-Bench
    prompts (AR perplexity of the output) and HumanEval problems (pass@1, sandboxed execution)."""
    import torch

    from ..convert.text_bench import CONFIGS, run

    if mt + humaneval == 0:
        raise ParadecError("--mt and --humaneval are both 0: nothing to measure")
    _check_only(only, CONFIGS)
    writable_dir(out)
    torch.set_num_threads(threads)
    run(model, mt, humaneval, gen_mt, gen_he, only=only, out_dir=out, log=lambda s: print(s, flush=True), device=device)
    print(f"wrote {out}/text_results.json, text_results.md, text_frontier.png")


@dllm_app.command("methods")
def methods_cmd() -> None:
    """List the diffusion decoding methods."""
    from ..dllm.policies import METHODS

    for k, v in METHODS.items():
        print(f"{k:10s} {v}")


def generate_dllm(prompt: str, model: str, method: str, options: dict, dtype: str, device: str,
                  temperature: float, seed: int | None, as_json: bool, max_new_tokens: int | None = None) -> None:
    """``paradec generate`` for a diffusion model: a task prompt in, the answer and stats out
    (``max_new_tokens``: the answer length; default the model's trained one)."""
    from ..dllm import freedave
    from ..dllm.loaders import load_diffusion
    from ..dllm.loop import generate
    from ..dllm.policies import make_settings
    from ..dllm.policies.learned import filter_of
    from ..dllm.protocol import ChatPrompted, Stored
    from ..dllm.toy.tasks import decode_answer, encode_prompt

    m = load_diffusion(model, dtype=dtype, device=device)
    if getattr(getattr(m, "model", None), "config", None) is not None and getattr(m.model.config, "attention", "") == "causal":
        return _generate_ar(m, prompt, model, method, as_json, max_new_tokens)  # tiny-ar, the AR reference
    if method == "pld":  # the AR default: use the dLLM default instead
        method = "threshold"
    opts = dict(options)
    if temperature:
        opts.setdefault("temperature", str(temperature))
    if seed is not None:
        opts.setdefault("seed", str(seed))
    gen_length = 18
    d = m.directory if isinstance(m, Stored) else None
    if d is not None:
        gen_length = json.loads((Path(d) / "config.json").read_text()).get("train", {}).get("gen_length", 18)
    if isinstance(m, ChatPrompted):  # a converted AR model: chat prompts, its own block size
        gen_length = 64
        if method != "adablock":
            opts.setdefault("block_size", str(m.spec.block_size))
    if max_new_tokens is not None:
        gen_length = max_new_tokens
    s, extra = make_settings(method, opts, gen_length=gen_length, eos_id=m.spec.eos_id, filter_model=filter_of(m))
    tok = getattr(m, "tokenizer", None)
    if isinstance(m, ChatPrompted):
        ids = m.encode(prompt)
    else:
        ids = tok(prompt)["input_ids"] if tok is not None else encode_prompt(prompt)
    if method == "freedave":
        r = freedave.generate(m, [ids], s, depth=extra["depth"])[0]
    else:
        r = generate(m, [ids], s)[0]
    text = tok.decode(r.answer, skip_special_tokens=True) if tok is not None else decode_answer(r.tokens)
    st = r.stats
    if as_json:
        print(json.dumps({"text": text, "token_ids": r.answer, "model": model, "method": method,
                          "stats": {**st.to_dict(), "tokens_per_s": st.tokens_per_s}}))
        return
    print(text)
    print(f"[{method}] {st.new_tokens} tokens in {st.total_s:.3f}s = {st.tokens_per_s:.1f} tok/s | {st.forwards} forwards, "
          f"{st.mean_accepted:.2f} tokens/forward | stop: {st.stop_reason}", file=sys.stderr)


def _generate_ar(m, prompt: str, model: str, method: str, as_json: bool, max_new_tokens: int | None = None) -> None:
    """Greedy decoding with paradec's AR reference (one token per forward)."""
    from ..dllm.toy.evaluate import ar_generate
    from ..dllm.stats import DiffusionStats
    from ..dllm.toy.tasks import GEN_LENGTH
    from ..dllm.toy.tasks import EOS, decode_answer, encode_prompt

    if method not in ("ar", "pld"):
        raise ParadecError(f"'{model}' is an AR model: use --method ar")
    ids = encode_prompt(prompt)
    max_new = GEN_LENGTH if max_new_tokens is None else max_new_tokens
    if len(ids) + max_new > m.spec.max_len:
        raise ParadecError(f"prompt + generation length = {len(ids) + max_new} exceeds the model's {m.spec.max_len} positions")
    t0 = time.perf_counter()
    outs, fws = ar_generate(m.model, [ids], max_new_tokens=max_new)
    st = DiffusionStats(method="ar", prompt_tokens=len(ids), new_tokens=len(outs[0]), forwards=fws[0], committed=fws[0],
                        accept_lengths=[1] * fws[0], total_s=time.perf_counter() - t0,
                        stop_reason="eos" if EOS in outs[0] else "length")
    text = decode_answer(outs[0])
    if as_json:
        print(json.dumps({"text": text, "token_ids": outs[0], "model": model, "method": "ar",
                          "stats": {**st.to_dict(), "tokens_per_s": st.tokens_per_s}}))
        return
    print(text)
    print(f"[ar] {st.new_tokens} tokens in {st.total_s:.3f}s = {st.tokens_per_s:.1f} tok/s | {st.forwards} forwards, "
          f"1.00 tokens/forward | stop: {st.stop_reason}", file=sys.stderr)
