"""``paradec generate``: one prompt in, the model's text (streamed) and the decoding stats out."""

from __future__ import annotations

import sys
from dataclasses import dataclass
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
        from .dllm import generate_dllm

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
