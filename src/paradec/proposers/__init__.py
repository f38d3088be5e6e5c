"""Drafters by method name. Each lives in its own module behind the ``Proposer`` protocol."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ParadecError
from ..models.causal_lm import CausalLM, HiddenStatesLM, NativeLM
from .base import NoDraft, ProposeContext, Proposer, StepResult
from .draft_model import DraftModelConfig, DraftModelProposer
from .aded import ADED, ADEDConfig
from .auto import AutoConfig, AutoDrafter, AutoMemory, LazyModel
from .deer import DeerConfig, DeerProposer
from .deer_fused import FusedDeer, FusedDeerConfig
from .head import HeadConfig, HeadProposer
from .lookahead import Lookahead, LookaheadConfig
from .pld import PLDConfig, PromptLookup
from .qdraft import QDraftConfig, QuantizedSelfDraft
from .recycle import RecycleConfig, TokenRecycling
from .suffix import SuffixConfig, SuffixDrafter
from ..params import text
from .options import Limits, bounded, build, from_text, real_path

__all__ = ["METHODS", "CONFIGS", "Limits", "Models", "check_options", "make_proposer", "text_options", "Proposer", "ProposeContext", "StepResult", "NoDraft"]


@dataclass
class Models:
    """What proposers may draft with: the target (never its cache), an optional draft model,
    and lazily built cheaper copies of the target for self-drafting."""

    target: CausalLM
    draft: CausalLM | None = None
    gguf_path: str | None = None  # the target's GGUF file, when it was loaded from one
    max_loaded: int = 4  # drafters loaded by name (heads, adapters) kept at once, least recently used dropped
    max_memories: int = 64  # adaptive proposers' cross-request states kept at once (one per configuration)
    _self_drafters: dict = field(default_factory=dict, repr=False)
    _loaded: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _memories: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @staticmethod
    def _lru(table: OrderedDict, bound: int, key, make: Callable[[], Any]):
        if key in table:
            table.move_to_end(key)
        else:
            value = make()  # a failure caches nothing
            table[key] = value
            while len(table) > bound:
                table.popitem(last=False)
        return table[key]

    def memory(self, key, make: Callable[[], Any]):
        """State an adaptive proposer keeps across requests on these models (``auto``'s cost
        model), one per ``key``, made by ``make()`` on first use (a bounded LRU)."""
        return self._lru(self._memories, self.max_memories, key, make)

    def loaded(self, key, make: Callable[[], Any]):
        """A drafter loaded by name (a head, a converted adapter), once per ``key`` (the
        resolved name), made by ``make()`` on first use; at most ``max_loaded`` kept."""
        return self._lru(self._loaded, self.max_loaded, key, make)

    def self_drafter_backend(self, backend: str = "auto") -> str:
        """The backend ``qdraft`` uses for ``backend`` (``auto`` resolved)."""
        from ..models.drafter import llama_cpp_available

        if backend == "auto":
            return "llama.cpp" if self.gguf_path and llama_cpp_available() else "int8"
        return backend

    def self_drafter(self, backend: str = "auto"):
        from ..models.drafter import HFDrafter, LlamaCppDrafter, llama_cpp_available

        backend = self.self_drafter_backend(backend)
        if backend not in self._self_drafters:
            if backend == "llama.cpp":
                if not self.gguf_path:
                    raise ParadecError("qdraft backend llama.cpp needs a target loaded from a GGUF file")
                if not llama_cpp_available():
                    raise ParadecError("qdraft backend llama.cpp needs llama-cpp-python (pip install llama-cpp-python)")
                self._self_drafters[backend] = LlamaCppDrafter(self.gguf_path, n_ctx=self.target.max_context)
            else:
                from ..models.torch.hf import HFCausalLM
                from ..models.torch.quantize import int8_copy

                int8 = HFCausalLM(int8_copy(self.target.model), max_context=self.target.max_context)
                self._self_drafters[backend] = HFDrafter(int8)
        return self._self_drafters[backend]


# name -> (one-line description, needs a draft model)
METHODS: dict[str, tuple[str, bool]] = {
    "ar": ("plain autoregressive decoding (the baseline; same loop, no draft)", False),
    "pld": ("prompt lookup: n-gram matches in prompt + output, chain or small tree", False),
    "draft": ("a smaller model with the same tokenizer drafts a chain or top-k tree", True),
    "qdraft": ("the target drafts for itself: its GGUF via llama.cpp if installed, else an int8 copy", False),
    "suffix": ("suffix automaton over prompt + output: tree of the most frequent continuations", False),
    "recycle": ("Token Recycling: top-k next-token matrix from past target logits, static tree", False),
    "aded": ("adaptive n-gram model of the target, drafts by UCB tree search", False),
    "lookahead": ("Jacobi chains + n-gram pool, verified in the same tree forward", False),
    "auto": ("per step: suffix lookup, a model drafter or none, by expected tokens/s (online cost model)", False),
    "deer": ("DEER: a converted block-diffusion model drafts a block in one pass (its adapter, e.g. smollm2-135m-dlm)", False),
    "deer-fused": ("DEER in one model: each target forward verifies the block and drafts the next (no drafter pass)", False),
    "head": ("a trained head on the target's hidden states drafts a tree (EAGLE-style; e.g. smollm2-135m-head)", False),
}


def _qdraft(models: Models, vocab: int, cfg: QDraftConfig) -> Proposer:
    return QuantizedSelfDraft(models.self_drafter(cfg.backend), vocab, cfg)


def _auto_model(models: Models, have_llama_cpp: bool) -> str:
    """``auto``'s model drafter when none is named: a draft model if given; else, where a
    verifying forward over a dozen tokens costs little more than one (bfloat16/float16 targets,
    GPUs), the trained head shipped for this target, if there is one; else the target's GGUF
    through llama.cpp; else none."""
    import torch

    if models.draft is not None:
        return "draft"
    t = models.target
    flat = t.dtype in (torch.bfloat16, torch.float16) or t.device.type == "cuda"
    if flat and isinstance(t, HiddenStatesLM):
        missing = ("no head", id(t))
        if missing not in models._self_drafters:
            try:
                _shipped_head(models, "auto")
                return "head"
            except ParadecError:
                models._self_drafters[missing] = True
    return "qdraft" if models.gguf_path and have_llama_cpp else "none"


def _auto(models: Models, vocab: int, cfg: AutoConfig) -> Proposer:
    from ..models.drafter import llama_cpp_available

    model = None
    which = cfg.model
    if which == "auto":
        which = _auto_model(models, llama_cpp_available())
    if which == "draft":
        if models.draft is None:
            raise ParadecError("auto model=draft needs a draft model (--draft-model)")
        model = DraftModelProposer(models.draft, vocab, DraftModelConfig())
    elif which == "qdraft":  # loaded on first use: auto may never run it (under a grammar)
        model = LazyModel(lambda: _qdraft(models, vocab, QDraftConfig()), "qdraft")
    elif which == "head":
        # the head with its lookup branch: auto still weighs it against the lookup alone
        model = _head(models, HeadConfig())
    return AutoDrafter(model, cfg, models.memory(("auto", which, cfg), lambda: AutoMemory(cfg.ema)))


def _deer(models: Models, vocab: int, cfg: DeerConfig) -> Proposer:
    from ..dllm.loaders import converted_for

    base = models.draft if models.draft is not None else models.target
    drafter = models.loaded(("deer", cfg.adapter, id(base)),  # over the base's own weights (the adapter only adds LoRA)
                            lambda: converted_for(base.model, cfg.adapter, max_context=base.max_context, copy_base="share"))
    return DeerProposer(drafter, vocab, cfg)


def _deer_fused(models: Models, vocab: int, cfg: FusedDeerConfig) -> Proposer:
    from ..dllm.loaders import converted_for

    t = models.target
    if isinstance(t, NativeLM) and t.native:
        raise ParadecError("deer-fused drafts inside the target's transformers forward; on the native backend use "
                           "deer (or --backend torch)")
    drafter = models.loaded(("deer-fused", cfg.adapter, id(t)),  # the target's own weights, plus the adapter
                            lambda: converted_for(t.model, cfg.adapter, max_context=t.max_context, copy_base="share"))
    return FusedDeer(drafter, vocab, cfg)


def _head(models: Models, cfg: HeadConfig) -> Proposer:
    t = models.target
    if not isinstance(t, HiddenStatesLM):
        raise ParadecError("method head needs a target that returns hidden states (a transformers model)")
    return HeadProposer(_shipped_head(models, cfg.head), cfg)


def _shipped_head(models: Models, name: str):
    """The draft head ``name`` for the target (loaded once, packed for drafting)."""
    from ..heads import head_for

    return models.loaded(("head", name, id(models.target)), lambda: head_for(models.target.model, name).pack())


CONFIGS: dict[str, type | None] = {
    "ar": None, "pld": PLDConfig, "draft": DraftModelConfig, "qdraft": QDraftConfig, "suffix": SuffixConfig,
    "recycle": RecycleConfig, "aded": ADEDConfig, "lookahead": LookaheadConfig, "auto": AutoConfig,
    "deer": DeerConfig, "deer-fused": FusedDeerConfig, "head": HeadConfig,
}


def _shipped(option: str) -> list[str]:
    """Names a path option accepts without a path (shipped heads or converted adapters)."""
    if option == "head":
        from ..heads import head_dirs

        return list(head_dirs())
    if option == "adapter":
        from ..dllm.loaders import converted_dirs

        return list(converted_dirs())
    return []


def _method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ParadecError(f"unknown method {str(method)[:40]!r} (choose from {', '.join(METHODS)})")
    return method


def _options(method: str, options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ParadecError(f"options must be a dict of option name -> value, got {type(options).__name__}")
    if method == "ar" and options:
        raise ParadecError("method 'ar' takes no options")
    return dict(options)


def text_options(method: str, options: dict[str, str]) -> dict[str, Any]:
    """``--opt key=value`` pairs (strings) parsed to the types of ``method``'s options."""
    return from_text(CONFIGS.get(method) if isinstance(method, str) else None, options)


def check_options(method: str, options: Any, limits: Limits) -> dict[str, Any]:
    """Check a request's options for ``method`` (types, values) and refuse any past ``limits``
    (cost bounds, path options). Loads nothing."""
    method = _method(method)
    options = _options(method, options)
    if CONFIGS[method] is not None:
        bounded(build(CONFIGS[method], options), options, limits, _shipped)
    return options


def _resolved(options: dict[str, Any]) -> dict[str, Any]:
    """Path options as real paths (shipped names as they are), so each drafter loads once."""
    out = dict(options)
    for k in ("head", "adapter"):
        v = out.get(k)
        if isinstance(v, str) and v not in ("", "auto") and v not in _shipped(k):
            out[k] = real_path(text(f"option {k}", v))
    return out


def make_proposer(method: str, models: Models, options: dict | None = None) -> Proposer:
    method = _method(method)
    options = _resolved(_options(method, options))
    if METHODS[method][1] and models.draft is None:
        raise ParadecError(f"method '{method}' needs a draft model (--draft-model / paradec.load(..., draft=...))")
    vocab = models.target.vocab_size
    builders: dict[str, Callable[[], Proposer]] = {
        "ar": lambda: NoDraft(),
        "pld": lambda: PromptLookup(build(PLDConfig, options)),
        "draft": lambda: DraftModelProposer(models.draft, vocab, build(DraftModelConfig, options)),
        "qdraft": lambda: _qdraft(models, vocab, build(QDraftConfig, options)),
        "suffix": lambda: SuffixDrafter(build(SuffixConfig, options)),
        "recycle": lambda: TokenRecycling(build(RecycleConfig, options)),
        "aded": lambda: ADED(build(ADEDConfig, options)),
        "lookahead": lambda: Lookahead(build(LookaheadConfig, options)),
        "auto": lambda: _auto(models, vocab, build(AutoConfig, options)),
        "deer": lambda: _deer(models, vocab, build(DeerConfig, options)),
        "deer-fused": lambda: _deer_fused(models, vocab, build(FusedDeerConfig, options)),
        "head": lambda: _head(models, build(HeadConfig, options)),
    }
    return builders[method]()
