"""``paradec generate``: one prompt in, the model's text (streamed) and the decoding stats out."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ParadecError
from ..options import like, option
from ..server.config import LaunchConfig
from .common import Generation, command, parse_options, print_generation


@dataclass(frozen=True)
class GenerateConfig:
    prompt: str = option(help="The prompt (chat-formatted when the model has a chat template).")
    model: str = like(LaunchConfig, "model")  # what to load: as paradec serve
    method: str = option("pld", "--method", help="Decoding method (see `paradec methods`).")
    draft_model: Optional[str] = option(None, "--draft-model", help="Draft model (same tokenizer) for --method draft.")
    dtype: str = like(LaunchConfig, "dtype")
    device: str = like(LaunchConfig, "device")
    backend: str = like(LaunchConfig, "backend")
    max_new_tokens: Optional[int] = option(None, "--max-new-tokens", "-n",
                                           help="Default 128; for a diffusion LM, its trained answer length.")
    temperature: float = option(0.0, "--temperature", "-t", help="0 = greedy.")
    top_p: float = option(1.0, "--top-p")
    top_k: int = option(0, "--top-k")
    seed: Optional[int] = option(None, "--seed")
    stop: tuple[str, ...] = option((), "--stop", help="Stop string (repeatable).")
    raw: bool = option(False, "--raw", help="Do not apply the chat template.")
    opt: tuple[str, ...] = option((), "--opt", help="Method option key=value (repeatable), e.g. draft_len=10.")
    as_json: bool = option(False, "--json", help="Print one JSON object: text, token_ids, stats.")
    json_schema: Optional[str] = option(None, "--json-schema", help="Constrain the output to the JSON Schema in FILE.")
    json_object: bool = option(False, "--json-object", help="Constrain the output to a JSON object.")
    regex: Optional[str] = option(None, "--regex", help="Constrain the output to match the regex R.")
    grammar: Optional[str] = option(None, "--grammar",
                                    help="Constrain the output to the grammar in FILE (llguidance Lark syntax).")


@command(GenerateConfig)
def generate(cfg: GenerateConfig) -> None:
    """Generate text for PROMPT and print it (streamed), then the decoding stats."""
    from ..dllm.loaders import is_diffusion
    from ..structured.formats import from_options

    _check(cfg)
    options = parse_options(cfg.opt)
    response_format = from_options(cfg.json_schema, cfg.json_object, cfg.regex, cfg.grammar)
    if is_diffusion(cfg.model):  # a diffusion LM (e.g. tiny-dllm): its own decoding loop and methods
        if response_format is not None:
            raise ParadecError("structured output (--json-schema, --json-object, --regex, --grammar) needs an AR model")
        return generate_dllm(cfg, options)
    _generate_ar(cfg, options, response_format)


def _check(cfg: GenerateConfig) -> None:
    """Fail fast, before loading anything."""
    from .. import params
    from ..models.loader import parse_device, parse_dtype

    parse_dtype(cfg.dtype), parse_device(cfg.device)
    params.prompt(cfg.prompt)
    params.sampling(cfg.temperature, cfg.top_p, cfg.top_k, cfg.seed)
    params.stops(list(cfg.stop) or None)
    if cfg.max_new_tokens is not None:
        params.max_new_tokens(cfg.max_new_tokens)


def _generate_ar(cfg: GenerateConfig, options: dict, response_format) -> None:
    from ..engine import load
    from ..proposers import text_options

    options = text_options(cfg.method, options)
    engine = load(cfg.model, draft=cfg.draft_model, dtype=cfg.dtype, device=cfg.device, backend=cfg.backend)
    stream = engine.stream(
        cfg.prompt, method=cfg.method, max_new_tokens=128 if cfg.max_new_tokens is None else cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed, stop=list(cfg.stop) or None,
        chat=False if cfg.raw else None, options=options, response_format=response_format,
    )
    for piece in stream:
        if not cfg.as_json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    s = stream.stats
    print_generation(Generation(stream.text, stream.token_ids, engine.name, cfg.method, s, s.backend), cfg.as_json,
                     streamed=True)


def generate_dllm(cfg: GenerateConfig, options: dict) -> None:
    """``paradec generate`` for a diffusion model: a task prompt in, the answer and stats out
    (``cfg.max_new_tokens``: the answer length; default the model's trained one)."""
    from ..dllm import freedave
    from ..dllm.loaders import load_diffusion
    from ..dllm.loop import generate
    from ..dllm.methods import make_settings
    from ..dllm.policies.learned import filter_of
    from ..dllm.protocol import ChatPrompted, Stored, Tokenized
    from ..dllm.toy.tasks import decode_answer, encode_prompt

    m = load_diffusion(cfg.model, dtype=cfg.dtype, device=cfg.device)
    if m.spec.mask_id is None:  # no mask token: an AR model
        return _generate_tiny_ar(m, cfg)  # tiny-ar, the AR reference
    method = "threshold" if cfg.method == "pld" else cfg.method  # the AR default: use the dLLM default instead
    opts = dict(options)
    if cfg.temperature:
        opts.setdefault("temperature", str(cfg.temperature))
    if cfg.seed is not None:
        opts.setdefault("seed", str(cfg.seed))
    gen_length = 18
    d = m.directory if isinstance(m, Stored) else None
    if d is not None:
        gen_length = json.loads((Path(d) / "config.json").read_text()).get("train", {}).get("gen_length", 18)
    if isinstance(m, ChatPrompted):  # a converted AR model: chat prompts, its own block size
        gen_length = 64
        if method != "adablock":
            opts.setdefault("block_size", str(m.spec.block_size))
    if cfg.max_new_tokens is not None:
        gen_length = cfg.max_new_tokens
    s, extra = make_settings(method, opts, gen_length=gen_length, eos_id=m.spec.eos_id, filter_model=filter_of(m))
    tok = m.tokenizer if isinstance(m, Tokenized) else None
    if isinstance(m, ChatPrompted):
        ids = m.encode(cfg.prompt)
    else:
        ids = tok(cfg.prompt)["input_ids"] if tok is not None else encode_prompt(cfg.prompt)
    if method == "freedave":
        r = freedave.generate(m, [ids], s, depth=extra["depth"])[0]
    else:
        r = generate(m, [ids], s)[0]
    text = tok.decode(r.answer, skip_special_tokens=True) if tok is not None else decode_answer(r.tokens)
    print_generation(Generation(text, r.answer, cfg.model, method, r.stats), cfg.as_json)


def _generate_tiny_ar(m, cfg: GenerateConfig) -> None:
    """Greedy decoding with paradec's AR reference (one token per forward)."""
    from ..dllm.toy.evaluate import ar_generate
    from ..dllm.stats import DiffusionStats
    from ..dllm.toy.tasks import EOS, GEN_LENGTH, decode_answer, encode_prompt

    if cfg.method not in ("ar", "pld"):
        raise ParadecError(f"'{cfg.model}' is an AR model: use --method ar")
    ids = encode_prompt(cfg.prompt)
    max_new = GEN_LENGTH if cfg.max_new_tokens is None else cfg.max_new_tokens
    if len(ids) + max_new > m.spec.max_len:
        raise ParadecError(f"prompt + generation length = {len(ids) + max_new} exceeds the model's {m.spec.max_len} positions")
    t0 = time.perf_counter()
    outs, fws = ar_generate(m.model, [ids], max_new_tokens=max_new)
    st = DiffusionStats(method="ar", prompt_tokens=len(ids), new_tokens=len(outs[0]), forwards=fws[0], committed=fws[0],
                        accept_lengths=[1] * fws[0], total_s=time.perf_counter() - t0,
                        stop_reason="eos" if EOS in outs[0] else "length")
    print_generation(Generation(decode_answer(outs[0]), outs[0], cfg.model, "ar", st), cfg.as_json)
