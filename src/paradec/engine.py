"""The user-facing engine: text in, text + token ids + stats out."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from .decode import DecodeConfig, Decoder, context_room
from .errors import ParadecError
from .models.torch.hf import HFCausalLM
from .models.loader import Loaded, load_hf
from .prefix import PrefixCache, reuses_prefixes
from .proposers import METHODS, Models, make_proposer
from . import params
from .stats import DecodeStats
from .structured import Constraint, compile_constraint

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class GenerationConfig:
    """One request's settings (everything but the prompt and a reused drafter). ``Engine.stream``
    and ``Engine.generate`` build it from their keyword arguments; the values are checked when
    the stream is made (``params``), so a config can be built before a model is loaded."""

    method: str = "pld"
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: Sequence[str] | str | None = None  # strings that end the output (not included in it)
    chat: bool | None = None  # None: the chat template when the model has one
    options: dict | None = None  # the method's options (``paradec methods`` lists them)
    response_format: Any = None  # structured output (see Engine.stream)

    def replace(self, **settings: Any) -> "GenerationConfig":
        """This config with ``settings`` changed; ParadecError naming a setting that does not exist."""
        names = [f.name for f in dataclasses.fields(self)]
        for name in settings:
            if name not in names:
                raise ParadecError(f"unknown generation setting '{name}' (settings: {', '.join(names)})")
        return dataclasses.replace(self, **settings) if settings else self


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    stats: DecodeStats
    prompt_ids: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": self.token_ids, "stats": self.stats.to_dict()}


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Stream:
    """Iterate for text pieces; afterwards ``text``, ``token_ids`` and ``stats`` hold the result."""

    def __init__(self, engine: "Engine", prompt_ids: list[int], proposer, cfg: DecodeConfig, stop: Sequence[str],
                 prefixes: PrefixCache | None = None):
        self.engine, self.prompt_ids, self.stop = engine, prompt_ids, [s for s in stop if s]
        self._prefixes = prefixes
        self.stats = DecodeStats()
        self.token_ids: list[int] = []
        self.text = ""
        self._proposer, self._cfg = proposer, cfg
        self._decoder: Decoder | None = None
        self._sent = 0  # characters of text already handed out

    def _decode(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(ids, skip_special_tokens=True)

    def _hit(self, generated: list[int]) -> bool:
        text = self._decode(generated)
        return any(s in text for s in self.stop)

    def __iter__(self) -> Iterator[str]:
        return (piece for piece in self.steps() if piece)

    @property
    def decoder(self) -> Decoder:
        """The request's decode loop state (made on first use); a scheduler that batches
        forwards across requests drives it with ``prepare``/``commit`` and reads ``absorb``."""
        if self._decoder is None:
            stop_fn = self._hit if self.stop else None
            self._decoder = Decoder(self.engine.target, self._proposer, self.prompt_ids, self._cfg, self.stats, stop_fn,
                                    self._prefixes)
        return self._decoder

    def steps(self) -> Iterator[str]:
        """Like iterating, but yield once per decode step (one target forward), with the text
        that step made safe to show; often "" (a held-back stop-string prefix or an incomplete
        character)."""
        dec = self.decoder
        try:
            while (new := dec.step()) is not None:
                yield self.absorb(new)
            if tail := self.tail():
                yield tail
        finally:
            dec.close()

    def absorb(self, new: list[int]) -> str:
        """Take a step's committed tokens; return the text that is now safe to show."""
        self.token_ids.extend(new)
        text = self._decode(self.token_ids)
        if self.stats.stop_reason == "stop":
            cut = min(text.find(s) for s in self.stop if s in text)
            text = text[:cut]
            safe = len(text)
        else:
            safe = len(text) - _stop_prefix_len(text, self.stop)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
                safe = min(safe, len(text) - 1)
        self.text = text
        piece = text[self._sent : safe] if safe > self._sent else ""
        self._sent = max(self._sent, safe)
        return piece

    def tail(self) -> str:
        """After the last step: whatever text was still held back."""
        piece = self.text[self._sent :]
        self._sent = len(self.text)
        return piece


class Engine:
    """A loaded target model (and optional draft model), ready to generate with any method."""

    def __init__(self, target: Loaded, draft: Loaded | None = None) -> None:
        self.name = target.source.name
        self.tokenizer = target.tokenizer
        self.target = target.causal_lm or HFCausalLM(target.model, fast=True)
        self.backend = "native" if target.causal_lm is not None else "torch"
        self._generation_config = getattr(target.model, "generation_config", None) or target.generation_config
        self.draft = None
        if draft is not None:
            if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
                raise ParadecError(
                    f"draft model '{draft.source.name}' has a different tokenizer than '{self.name}'; "
                    "a draft model must share the target's tokenizer"
                )
            self.draft = HFCausalLM(draft.model, fast=True)
            self.draft_name = draft.source.name
        gguf = target.source.path if target.source.kind == "gguf" else None
        self.models = Models(self.target, self.draft, gguf_path=gguf)
        self.chat_default = target.source.chat if target.source.chat is not None else bool(
            getattr(self.tokenizer, "chat_template", None)
        )
        self.eos_ids = self._eos_ids()
        # kept prompt prefixes, shared by this engine's requests (a backend whose prefill is not
        # exact when split never uses them: prefix.py)
        self.prefixes = PrefixCache() if reuses_prefixes(self.target) else None

    @property
    def hf_model(self):
        """The transformers model of the target (on the native backend, loaded on first use)."""
        return self.target.model

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def methods(self) -> list[str]:
        return [m for m, (_, needs_draft) in METHODS.items() if self.draft is not None or not needs_draft]

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for src in (self._generation_config, self.tokenizer):
            eos = getattr(src, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        return frozenset(ids)

    # ---- tokenization ------------------------------------------------------------------------
    def encode(self, prompt: str | Messages, chat: bool | None = None) -> list[int]:
        prompt = params.prompt(prompt)
        if isinstance(prompt, list) and not isinstance(prompt[0], dict):
            raise ParadecError("encode takes text or chat messages; token ids are already encoded")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        use_chat = self.chat_default if chat is None else chat
        if use_chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ParadecError(f"model '{self.name}' has no chat template; pass a plain prompt")
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not isinstance(prompt, str):
                raise ParadecError("messages need a chat model; pass a plain prompt")
            ids = self.tokenizer(prompt)["input_ids"]
        if not ids:
            raise ParadecError("the prompt is empty after tokenization")
        return self._fits(list(ids))

    def _fits(self, ids: list[int]) -> list[int]:
        context_room(len(ids), self.target.max_context, self.name)
        return ids

    def prompt_ids(self, prompt: str | Messages | list[int], chat: bool | None = None) -> list[int]:
        """The checked token ids of any prompt: text, chat messages or token ids."""
        p = params.prompt(prompt)
        if isinstance(p, list) and not isinstance(p[0], dict):
            return self._fits(params.token_ids(p, self.target.vocab_size))
        return self.encode(p, chat)

    # ---- generation ----------------------------------------------------------------------------
    def stream(
        self,
        prompt: str | Messages | list[int],
        method: str | None = None,
        *,
        config: GenerationConfig | None = None,
        proposer=None,
        prefix_cache: PrefixCache | bool = True,
        **settings: Any,
    ) -> Stream:
        """Generate from ``prompt`` as a stream of text pieces. The request's settings are a
        ``GenerationConfig``: ``config=``, or keyword arguments (``method``, ``max_new_tokens``,
        ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ``chat``, ``options``,
        ``response_format``), which override its fields; an unknown one is a ParadecError.
        ``proposer``: a drafter to reuse (one made with ``keep_state``, say) instead of a fresh one
        for ``method``/``options``. ``response_format`` constrains the output (structured output): a
        JSON Schema (dict or pydantic model class), ``{"type": "json_object"}``, OpenAI's
        ``{"type": "json_schema", "json_schema": {...}}``, ``{"type": "regex", "regex": ...}``,
        ``{"type": "grammar", "grammar": ...}`` (llguidance's Lark-like syntax), or a compiled
        ``Constraint``. ``prefix_cache``: the kept prompt prefixes to start from and keep this
        prompt in: True (default) the engine's own (``prefixes``), False none (every prompt
        prefilled in full), or a ``PrefixCache`` of the caller's."""
        if method is not None:
            settings["method"] = method
        g = (config or GenerationConfig()).replace(**settings)
        if g.chat is not None and not isinstance(g.chat, bool):
            raise ParadecError(f"chat must be True, False or None, got {g.chat!r}")
        sampling = params.sampling(g.temperature, g.top_p, g.top_k, g.seed)
        constraint = self.constraint(g.response_format)
        cfg = DecodeConfig(max_new_tokens=params.max_new_tokens(g.max_new_tokens), sampling=sampling, eos_ids=self.eos_ids,
                           constraint=constraint)
        stops = params.stops(g.stop)
        ids = self.prompt_ids(prompt, g.chat)
        proposer = proposer if proposer is not None else make_proposer(g.method, self.models, g.options)
        if isinstance(prefix_cache, bool):
            prefixes = self.prefixes if prefix_cache else None
        elif isinstance(prefix_cache, PrefixCache):
            prefixes = prefix_cache
        else:
            raise ParadecError(f"prefix_cache must be True, False or a PrefixCache, got {type(prefix_cache).__name__}")
        return Stream(self, ids, proposer, cfg, stops, prefixes)

    def constraint(self, response_format: Any) -> Constraint | None:
        """Compile ``response_format`` for this model (None: unconstrained); ParadecError if bad."""
        if response_format is None or isinstance(response_format, Constraint):
            return response_format
        return compile_constraint(response_format, self.tokenizer, self.target.vocab_size)

    def generate(
        self,
        prompt: str | Messages | list[int],
        method: str | None = None,
        *,
        config: GenerationConfig | None = None,
        proposer=None,
        prefix_cache: PrefixCache | bool = True,
        **settings: Any,
    ) -> Generation:
        """The whole generation at once; the arguments are ``stream``'s."""
        s = self.stream(prompt, method, config=config, proposer=proposer, prefix_cache=prefix_cache, **settings)
        for _ in s:
            pass
        return Generation(s.text, s.token_ids, s.stats, s.prompt_ids)


def load(
    model: str | None = None,
    draft: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
    backend: str = "auto",
) -> Engine:
    """Load a target model (and optionally a draft model) by packaged name, directory or GGUF.

    ``backend``: ``native`` runs the target on the GGUF's own quantized weights (CPU), ``torch``
    on transformers; ``auto`` (default) = native for a GGUF on a CPU in float32 where the native
    library is available, else torch with a one-line note why."""
    from .models.loader import parse_device, parse_dtype, resolve
    from .models.native.select import choose, load_native

    from .models.native.gguf_model import NativeUnsupported

    src = resolve(model)
    target = None
    if choose(backend, src.kind, parse_device(device), parse_dtype(dtype)) == "native":
        try:
            target = load_native(src)
        except NativeUnsupported as e:
            if backend == "native":
                raise
            print(f"paradec: note: using the torch backend ({e})", file=sys.stderr)
    if target is None:
        target = load_hf(model, dtype, device)
    draft_loaded = load_hf(draft, dtype, device) if draft else None
    return Engine(target, draft_loaded)
