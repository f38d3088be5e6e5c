"""Named decoding methods for diffusion LMs: a commit rule, a block schedule, a cache policy and
optional editing / EOS handling, put together from ``--opt key=value`` options (each method's
options are the fields of its config in configs.py, parsed by the typed parser in paradec.options).

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

from ..errors import ParadecError
from ..options import build, from_text
from .loop import Settings
from .policies.cache import CachePolicy
from .policies.configs import CONFIGS

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


def make_settings(method: str, options: dict | None = None, gen_length: int = 18, eos_id: int = 3, filter_model=None):
    """(Settings, extra) for a method name and its ``key=value`` options (parsed to the method's
    config, configs.py); extra holds e.g. FreeDave's depth. ``gen_length``: the answer length
    unless the options give one."""
    if method not in METHODS:
        raise ParadecError(f"unknown dLLM method '{method}' (one of {', '.join(METHODS)})")
    cls = CONFIGS[method]
    c = build(cls, {"gen_length": gen_length, **from_text(cls, dict(options or {}))})
    commit = c.commit(filter_model)
    blocks = c.blocks(eos_id)
    cache = CachePolicy(c.cache, c.refresh, bool(c.measure_agreement))
    s = Settings(
        max_new_tokens=c.gen_length, commit=commit, blocks=blocks, cache=cache, edit=c.edit(),
        eos_stop=bool(c.eos_stop), eos_reject=c.reject(), temperature=c.temperature, seed=c.seed, method=method,
    )
    return s, c.extra()
