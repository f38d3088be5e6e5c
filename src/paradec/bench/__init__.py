"""``paradec bench``: a Spec-Bench-style speed benchmark of paradec's methods and their peers.

One role per module: ``suites`` (prompt sets), ``runners`` (paradec methods and each peer),
``metrics`` (figures from raw samples), ``roofline`` (forward time vs tokens per forward),
``report`` (rich tables, markdown and PNGs), ``config`` (options and validation), ``records``
(every measurement as a JSON line: resumable runs, results rebuilt from the file), ``machine``
(hardware, load, memory and version figures) and ``run`` (the run loop).
"""

from .config import BenchConfig
from .run import run_bench

__all__ = ["BenchConfig", "run_bench"]
