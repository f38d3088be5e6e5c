"""Benchmark rows: paradec's methods and the peers they are compared with."""

from __future__ import annotations

from .base import RunOutput, Runner, cut_at_eos
from .hf import HFRunner
from .llamacpp import LlamaCppRunner
from .paradec_runner import ParadecRunner
from .torch_ar import TorchARRunner

# peer name -> one-line description
PEERS: dict[str, str] = {**HFRunner.MODES, **LlamaCppRunner.MODES, **TorchARRunner.MODES}
# rows `all` leaves out: they only mean something beside a native target, and load a second model
OPT_IN_PEERS = frozenset(TorchARRunner.MODES)


def make_peer(engine, name: str, n_ctx: int = 4096) -> Runner:
    if name in HFRunner.MODES:
        return HFRunner(engine, name)
    if name in TorchARRunner.MODES:
        return TorchARRunner(engine, name)
    return LlamaCppRunner(engine, name, n_ctx=n_ctx)


__all__ = ["PEERS", "OPT_IN_PEERS", "TorchARRunner", "RunOutput", "Runner", "ParadecRunner", "HFRunner", "LlamaCppRunner", "make_peer", "cut_at_eos"]
