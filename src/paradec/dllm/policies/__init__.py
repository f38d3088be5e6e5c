"""Named decoding methods for diffusion LMs: a commit rule, a block schedule, a cache policy and
optional editing / EOS handling, put together from ``--opt key=value`` options.

``one``        one token per step, most confident first (the quality reference)
``topk``       LLaDA low-confidence remasking with ``steps`` steps per block
``random``     random remasking, ``k`` tokens per step
``ascending``  1, 2, 4, ... tokens per step within a block (ascending step size)
``eoser``      ascending step size + EOS early rejection
``threshold``  Fast-dLLM confidence threshold ``tau``
``factor``     Fast-dLLM factor rule ``f``
``margin``     top-1 minus top-2 probability >= ``tau``
``entropy``    entropy <= ``tau`` nats
``prophet``    one token per step until the top-2 gap says go all-in (Prophet)
``localleap``  anchors >= ``anchor``, neighbours within ``radius`` at the relaxed ``local``
``credit``     CreditDecoding: threshold on logits fused with accumulated trace credit
``adablock``   threshold rule with AdaBlock block boundaries (``size`` default, EOS delimiter)
``edit``       LLaDA2.1 speedy mode: low threshold ``tau`` plus token editing at ``edit_tau``
``learn2pd``   learned "is this token final" filter (needs a model shipped with one)
``freedave``   lossless draft-and-verify of ``one`` (``depth`` drafts per forward)

Common options: ``block_size`` (fixed semi-AR blocks; default none = one block), ``cache``
(none/prefix/dual), ``refresh`` (refresh the cache every n steps; 0 = block starts only),
``eos_stop`` (0/1), ``eos_reject`` (0..1), ``temperature``, ``seed``, ``gen_length``.
"""

from __future__ import annotations

from ...errors import ParadecError
from .blocks import AdaBlock, BlockSchedule, FixedBlocks
from .cache import CachePolicy
from .commit import (
    Commit,
    CommitPolicy,
    Credit,
    Entropy,
    Factor,
    LocalLeap,
    Margin,
    Prophet,
    RandomK,
    StepContext,
    Threshold,
    TopK,
)
from .edit import EditPolicy

METHODS = {
    "one": "one token per step, most confident first (reference)",
    "topk": "LLaDA low-confidence remasking, `steps` steps per block",
    "random": "random remasking, `k` tokens per step",
    "ascending": "ascending step size: 1, 2, 4, ... tokens per step in a block",
    "eoser": "ascending step size + EOS early rejection",
    "threshold": "Fast-dLLM confidence threshold `tau`",
    "factor": "Fast-dLLM factor rule `f`",
    "margin": "top-1 minus top-2 probability >= `tau`",
    "entropy": "entropy <= `tau` nats",
    "prophet": "Prophet early commit (top-2 gap, go all-in)",
    "localleap": "LocalLeap: anchors + local relaxed threshold",
    "credit": "CreditDecoding: accumulated trace credit",
    "adablock": "threshold rule + AdaBlock adaptive block size",
    "edit": "LLaDA2.1 speedy mode: low threshold + token editing",
    "learn2pd": "learned 'is this token final' filter (Learn2PD)",
    "freedave": "FreeDave: lossless draft-and-verify of `one`",
}

_COMMON = {"block_size", "cache", "refresh", "eos_stop", "eos_reject", "temperature", "seed", "gen_length", "measure_agreement"}
_OWN = {
    "one": set(), "topk": {"steps"}, "random": {"k"}, "ascending": set(), "eoser": {"gamma"},
    "threshold": {"tau"}, "factor": {"f"}, "margin": {"tau"}, "entropy": {"tau"}, "prophet": set(),
    "localleap": {"anchor", "local", "radius"}, "credit": {"tau", "gamma", "alpha"},
    "adablock": {"tau", "size", "delim_tau"}, "edit": {"tau", "edit_tau"}, "learn2pd": {"tau"}, "freedave": {"depth"},
}


def _num(opts: dict, key: str, default, cast=float):
    if key not in opts:
        return default
    try:
        v = cast(opts[key])
    except (TypeError, ValueError):
        raise ParadecError(f"option {key} expects a number, got '{opts[key]}'") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ParadecError(f"option {key} expects a finite number, got '{opts[key]}'")
    return v


def make_settings(method: str, options: dict | None = None, gen_length: int = 18, eos_id: int = 3, filter_model=None):
    """(Settings, extra) for a method name and its options; extra holds e.g. FreeDave's depth."""
    from ..loop import Settings

    if method not in METHODS:
        raise ParadecError(f"unknown dLLM method '{method}' (one of {', '.join(METHODS)})")
    o = dict(options or {})
    unknown = set(o) - _COMMON - _OWN[method]
    if unknown:
        raise ParadecError(f"unknown option(s) for {method}: {', '.join(sorted(unknown))}")
    bs = _num(o, "block_size", None, int)
    blocks: BlockSchedule = FixedBlocks(bs or None)
    edit = None
    eos_reject = _num(o, "eos_reject", None)
    extra = {}
    if method in ("one", "freedave"):
        commit: CommitPolicy = TopK(k=1)
        extra["depth"] = _num(o, "depth", 4, int)
    elif method == "topk":
        commit = TopK(steps=_num(o, "steps", 4, int))
    elif method == "random":
        commit = RandomK(k=_num(o, "k", 2, int))
    elif method in ("ascending", "eoser"):
        commit = TopK(schedule="ascending")
        if method == "eoser" and eos_reject is None:
            eos_reject = _num(o, "gamma", 0.1)
    elif method == "threshold":
        commit = Threshold(_num(o, "tau", 0.9))
    elif method == "factor":
        commit = Factor(_num(o, "f", 1.0))
    elif method == "margin":
        commit = Margin(_num(o, "tau", 0.8))
    elif method == "entropy":
        commit = Entropy(_num(o, "tau", 0.3))
    elif method == "prophet":
        commit = Prophet()
    elif method == "localleap":
        commit = LocalLeap(_num(o, "anchor", 0.9), _num(o, "local", 0.6), _num(o, "radius", 3, int))
    elif method == "credit":
        commit = Credit(_num(o, "tau", 0.9), _num(o, "gamma", 0.7), _num(o, "alpha", 1.0))
    elif method == "adablock":
        commit = Threshold(_num(o, "tau", 0.9))
        if bs:
            raise ParadecError("adablock chooses its own block sizes: use size=N, not block_size")
        blocks = AdaBlock(size=_num(o, "size", 6, int), tau=_num(o, "delim_tau", 0.5), delimiters=(eos_id,))
    elif method == "edit":
        commit = Threshold(_num(o, "tau", 0.7))
        edit = EditPolicy(tau=_num(o, "edit_tau", 0.9))
    elif method == "learn2pd":
        from .learned import Learned

        if filter_model is None:
            raise ParadecError("learn2pd needs a model shipped with a trained filter (filter.safetensors)")
        commit = Learned(filter_model, _num(o, "tau", 0.9))
    cache = CachePolicy(str(o.get("cache", "none")), _num(o, "refresh", 0, int), bool(_num(o, "measure_agreement", 0, int)))
    s = Settings(
        max_new_tokens=_num(o, "gen_length", gen_length, int), commit=commit, blocks=blocks, cache=cache, edit=edit,
        eos_stop=bool(_num(o, "eos_stop", 1, int)), eos_reject=eos_reject,
        temperature=_num(o, "temperature", 0.0), seed=_num(o, "seed", 0, int), method=method,
    )
    return s, extra


__all__ = [
    "METHODS",
    "AdaBlock",
    "BlockSchedule",
    "CachePolicy",
    "Commit",
    "CommitPolicy",
    "Credit",
    "EditPolicy",
    "Entropy",
    "Factor",
    "FixedBlocks",
    "LocalLeap",
    "Margin",
    "Prophet",
    "RandomK",
    "StepContext",
    "Threshold",
    "TopK",
    "make_settings",
]
