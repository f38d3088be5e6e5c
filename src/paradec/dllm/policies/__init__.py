"""The policies a dLLM decoding method is made of: commit rules (commit.py), block schedules
(blocks.py), cache policies (cache.py), token editing (edit.py), the learned commit filter
(learned.py) and each named method's options (configs.py). ``paradec.dllm.methods`` puts them
together by name; nothing here runs the loop."""

from __future__ import annotations

from .blocks import AdaBlock, BlockSchedule, FixedBlocks
from .cache import CachePolicy
from .configs import CONFIGS, CommonOptions
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

__all__ = [
    "AdaBlock",
    "BlockSchedule",
    "CONFIGS",
    "CachePolicy",
    "Commit",
    "CommitPolicy",
    "CommonOptions",
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
]
