"""``deer``: draft a whole block with a diffusion model, verify it with the AR target (DEER).

The drafter is an AR model converted into a block-diffusion model (paradec convert; the shipped
``smollm2-135m-dlm`` adapter for the default model): after the accepted prefix it fills a block
of k masked positions in one forward (``passes`` > 1: a few denoising passes, greedy only), and
the target verifies the block with the engine's lossless verification. The drafter runs its
clean context through the exact base weights, so its first draft token is the base model's own
next-token prediction, and keeps its own KV cache that follows the accepted prefix (the target's
cache is never touched).

Shape: a chain of the per-position argmax (greedy) or of tokens sampled independently from each
position's distribution q_j, which travels with the draft so verification stays exact; with
``width`` > 1 the next candidates at the first ``sibling_depth`` positions are added as siblings.

Block size (BlockPilot-style): ``adapt=step`` sets k each step from the acceptance seen so far
(EMA of accepted tokens + 2, within [min_block, block]); ``adapt=prefill`` sets k once per
request from the drafter's confidences on the prompt's first block (the expected accepted length
sum_j prod_{i<=j} conf_i); ``adapt=off`` keeps k = ``block``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sampling import SamplingParams, target_probs
from ..tree import DraftTree
from .base import ProposeContext, StepResult

ADAPT = ("off", "step", "prefill")


@dataclass(frozen=True)
class DeerConfig:
    block: int = 8  # draft length k (the cap when adaptive)
    min_block: int = 2
    adapt: str = "step"  # off | step | prefill
    passes: int = 1  # denoising passes per draft (greedy; sampling always drafts in one pass)
    min_confidence: float = 0.0  # greedy: cut the chain before the first position below this
    width: int = 1  # > 1: the drafter's next candidates as siblings
    sibling_depth: int = 1
    ema: float = 0.3
    adapter: str = "auto"  # a converted model's name or directory; auto = the one made for this model

    def __post_init__(self) -> None:
        if not 1 <= self.min_block <= self.block <= 64:
            raise ValueError("deer needs 1 <= min_block <= block <= 64")
        if self.adapt not in ADAPT:
            raise ValueError(f"deer adapt must be one of {', '.join(ADAPT)}")
        if self.passes < 1:
            raise ValueError("deer passes must be >= 1")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError("deer min_confidence must be in [0, 1)")
        if self.width < 1 or self.sibling_depth < 0:
            raise ValueError("deer width must be >= 1 and sibling_depth >= 0")
        if not 0.0 < self.ema <= 1.0:
            raise ValueError("deer ema must be in (0, 1]")


class DeerProposer:
    name = "deer"

    def __init__(self, drafter, target_vocab: int, config: DeerConfig | None = None) -> None:
        self.drafter = drafter  # a BlockDiffusionAR
        self.target_vocab = target_vocab
        self.config = config or DeerConfig()
        self.sampling = SamplingParams()
        self.state = None
        self.k = self.config.block
        self.avg = float(self.config.block)
        self.fixed = False

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self.state = self.drafter.new_state(len(prompt) + 512)
        self.sampling = sampling
        self.k = self.config.block
        self.avg = float(self.config.block)
        self.fixed = False

    def _dist(self, logits: torch.Tensor) -> torch.Tensor:
        """Drafter logits [k, V'] -> its distributions over the target's vocabulary [k, V]."""
        if self.sampling.greedy:
            p = logits.float().softmax(-1)
        else:
            p = torch.stack([target_probs(row, self.sampling) for row in logits]).cpu()
        v = self.target_vocab
        if p.shape[-1] >= v:
            return p[:, :v]
        return torch.cat([p, p.new_zeros(p.shape[0], v - p.shape[-1])], dim=1)

    def _draft(self, tokens: list[int], k: int) -> torch.Tensor:
        """Distributions for the k block positions [k, V], after ``passes`` denoising passes
        (each extra pass fixes the most confident still-open positions, then re-reads the rest)."""
        block: list[int | None] = [None] * k
        p = self._dist(self.drafter.block_logits(self.state, tokens, block))
        passes = self.config.passes if self.sampling.greedy else 1
        for step in range(1, passes):
            conf, tok = p.max(-1)
            open_ = [j for j in range(k) if block[j] is None]
            n_fix = math.ceil(len(open_) / (passes - step + 1))
            for j in sorted(open_, key=lambda j: -float(conf[j]))[:n_fix]:
                block[j] = int(tok[j])
            if all(t is not None for t in block):
                break
            fresh = self._dist(self.drafter.block_logits(self.state, tokens, block))
            for j in range(k):
                if block[j] is None:
                    p[j] = fresh[j]
        for j, t in enumerate(block):
            if t is not None:  # fixed in an earlier pass: a point mass there
                p[j] = torch.zeros_like(p[j])
                p[j, t] = 1.0
        return p

    def propose(self, ctx: ProposeContext) -> DraftTree:
        c = self.config
        k = min(self.k, ctx.max_depth)
        if k <= 0:
            return DraftTree()
        p = self._draft(ctx.tokens, k)  # [k, V]
        if c.adapt == "prefill" and not self.fixed:
            self._choose_from_prefill(p)
        greedy = self.sampling.greedy
        if greedy:
            conf, chain = p.max(-1)
            chain = chain.tolist()
            n = len(chain)
            if c.min_confidence > 0:
                n = next((j for j in range(1, len(chain)) if float(conf[j]) < c.min_confidence), len(chain))
            chain = chain[:n]
        else:
            chain = [int(torch.multinomial(p[j].to(ctx.generator.device), 1, generator=ctx.generator)) for j in range(len(p))]
        tokens, parents, qs = [], [], []
        parent = -1
        for d, tok in enumerate(chain):
            if len(tokens) >= ctx.max_nodes:
                break
            tokens.append(tok)
            parents.append(parent)
            qs.append(None if greedy else p[d])
            node = len(tokens) - 1
            if c.width > 1 and d < c.sibling_depth:
                for alt in torch.topk(p[d], c.width).indices.tolist():
                    if alt != tok and len(tokens) < ctx.max_nodes:
                        tokens.append(int(alt))
                        parents.append(parent)
                        qs.append(None)
            parent = node
        q = None
        if not greedy:
            zero = torch.zeros(self.target_vocab)
            q = torch.stack([row if row is not None else zero for row in qs])
        return DraftTree(tuple(tokens), tuple(parents), q)

    def _choose_from_prefill(self, p: torch.Tensor) -> None:
        conf = p.max(-1).values  # [k]
        expected = float(torch.cumprod(conf, 0).sum())  # expected accepted length if each position is right w.p. conf
        self.k = max(self.config.min_block, min(self.config.block, math.ceil(expected) + 1))
        self.fixed = True

    def observe(self, result: StepResult) -> None:
        c = self.config
        if c.adapt != "step" or not len(result.draft):
            return
        n_acc = len(result.verdict.accepted)
        self.avg = (1 - c.ema) * self.avg + c.ema * n_acc
        self.k = max(c.min_block, min(c.block, round(self.avg) + 2))
