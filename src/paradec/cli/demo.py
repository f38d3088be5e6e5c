"""``paradec demo``: ar, the fastest drafters and llama.cpp on a few built-in prompts (``paradec.demo``)."""

from __future__ import annotations

from ..demo import DemoConfig
from .common import command


@command(DemoConfig)
def demo(cfg: DemoConfig) -> None:
    """ar, the fastest drafters and llama.cpp greedy on a few built-in prompts, in one table:
    tokens/s, speedup, tokens per forward, identity with ar."""
    from ..demo import run_demo

    run_demo(cfg)
