"""``draft``: a smaller model with the target's tokenizer drafts a chain (plus top-k siblings).

The drafter keeps its own KV cache and, before each proposal, rolls it back to the longest
prefix it shares with the committed sequence, so it always follows the accepted prefix. Draft
length adapts: drafting stops early when the drafter's confidence drops below a threshold, and
the length cap grows after fully accepted drafts and shrinks after early rejections (PEARL's
observation that the best draft length changes during a request).

Under sampling each chain token is sampled from the drafter's distribution q (same temperature,
top-k, top-p as the target) and q travels with the draft so verification stays exact; siblings
are deterministic candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..interrupt import checkpoint
from ..models.causal_lm import CausalLM
from ..models.drafter import Drafter, HFDrafter
from ..sampling import SamplingParams, target_probs
from ..tree import DraftTree
from .base import ProposeContext, StepResult
from .suffix import SuffixDrafter


@dataclass(frozen=True)
class DraftModelConfig:
    max_len: int = 8  # longest chain
    min_len: int = 2  # the adaptive cap never goes below this
    min_confidence: float = 0.3  # stop drafting when the drafter's top probability falls below
    width: int = 1  # 1 = chain; w > 1 adds the drafter's next w-1 candidates as leaves
    sibling_depth: int = 2  # siblings only at the first depths, where they pay most
    lookup: int = 0  # greedy: check up to this many suffix-lookup tokens with ONE drafter pass (0 = off)

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError("draft needs 1 <= min_len <= max_len")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError("draft min_confidence must be in [0, 1)")
        if self.width < 1:
            raise ValueError("draft width must be >= 1")
        if self.lookup < 0:
            raise ValueError("draft lookup must be >= 0")


class DraftModelProposer:
    name = "draft"

    def __init__(self, drafter: Drafter | CausalLM, target_vocab: int, config: DraftModelConfig | None = None) -> None:
        self.drafter: Drafter = drafter if isinstance(drafter, Drafter) else HFDrafter(drafter)
        self.target_vocab = target_vocab
        self.config = config or DraftModelConfig()
        self.cap = self.config.max_len
        self.sampling = SamplingParams()
        self.lookup = SuffixDrafter() if self.config.lookup else None
        # (seconds of the first drafter call, which catches up on new tokens; seconds of the
        # whole proposal; one-token feeds after it) for the last proposal: ``auto`` learns its
        # drafting and catch-up costs from them
        self.last_times: tuple[float, float, int] = (0.0, 0.0, 0)
        self._t_read, self._feeds = 0.0, 0  # end of the first drafter call; feeds since

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self.drafter.reset(len(prompt) + 512)
        self.cap = self.config.max_len
        self.sampling = sampling
        if self.lookup is not None:
            self.lookup.begin(prompt, sampling)

    def _dist(self, logits: torch.Tensor) -> torch.Tensor:
        """The drafter's distribution over the *target's* vocabulary. Under sampling it is the
        distribution the draft token is sampled from (kept on the CPU, where the drafter's
        generator lives)."""
        if self.sampling.greedy:
            p = logits.float().softmax(-1)
        else:
            p = target_probs(logits, self.sampling).cpu()
        v = self.target_vocab
        if p.shape[-1] >= v:
            return p[:v]
        return torch.cat([p, p.new_zeros(v - p.shape[-1])])

    # ---- protocol -----------------------------------------------------------------------------
    def propose(self, ctx: ProposeContext) -> DraftTree:
        t0 = self._t_read = time.perf_counter()
        self._feeds = 0
        tree = self._propose(ctx)
        self.last_times = (self._t_read - t0, time.perf_counter() - t0, self._feeds)
        return tree

    def _propose(self, ctx: ProposeContext) -> DraftTree:
        c = self.config
        length = min(self.cap, ctx.max_depth)
        if length <= 0:
            return DraftTree()
        tokens: list[int] = []
        parents: list[int] = []
        qs: list[torch.Tensor] = []
        parent = -1
        start = 0
        chain = self._lookup_chain(ctx) if self.sampling.greedy and self.lookup is not None else []
        if chain:
            # The drafter checks the whole lookup chain in one batched pass and keeps the prefix
            # it agrees with: drafting that stretch costs one pass instead of one per token.
            scored = self.drafter.score(ctx.tokens, chain)  # [len(chain) + 1, V]
            while start < len(chain) and int(self._dist(scored[start]).argmax()) == chain[start]:
                tokens.append(chain[start])
                parents.append(start - 1)
                qs.append(scored.new_zeros(0))
                start += 1
            parent = start - 1
            self.drafter.truncate(len(ctx.tokens) + start)
            logits = scored[start]
            length = max(length, start)
        else:
            logits = self.drafter.logits_after(ctx.tokens)
        # the first drafter call also reads every token committed since the last proposal
        self._t_read = time.perf_counter()
        for depth in range(start, length):
            checkpoint()  # one drafter pass per depth: stoppable (see paradec.interrupt)
            p = self._dist(logits)
            if self.sampling.greedy:
                tok = int(p.argmax())
                conf = float(p[tok])
            else:
                tok = int(torch.multinomial(p, 1, generator=ctx.generator))
                conf = float(p.max())
            if depth > 0 and conf < c.min_confidence:
                break
            tokens.append(tok)
            parents.append(parent)
            qs.append(p if not self.sampling.greedy else p.new_zeros(0))
            chain_node = len(tokens) - 1
            if c.width > 1 and depth < c.sibling_depth:
                for alt in torch.topk(p, c.width).indices.tolist():
                    if alt != tok and len(tokens) < ctx.max_nodes:
                        tokens.append(int(alt))
                        parents.append(parent)
                        qs.append(p.new_zeros(0))
            parent = chain_node
            if depth + 1 < length and len(tokens) < ctx.max_nodes:
                logits = self.drafter.feed(tok)
                self._feeds += 1
            else:
                break
        q = None
        if not self.sampling.greedy:
            v = self.target_vocab
            q = torch.stack([row if row.numel() else torch.zeros(v) for row in qs])
        return DraftTree(tuple(tokens), tuple(parents), q)

    def _lookup_chain(self, ctx: ProposeContext) -> list[int]:
        """The most probable path of the suffix-lookup tree (at least 2 tokens, else none)."""
        chain = self.lookup.propose(ctx).first_path(min(self.config.lookup, ctx.max_depth, ctx.max_nodes))
        return chain if len(chain) >= 2 else []

    def observe(self, result: StepResult) -> None:
        if self.lookup is not None:
            self.lookup.observe(result)
        draft, verdict = result.draft, result.verdict
        if not len(draft):
            return
        chain_len = draft.depth
        n_acc = len(verdict.accepted)
        if n_acc >= chain_len:
            self.cap = min(self.cap + 1, self.config.max_len)
        else:
            self.cap = max(self.config.min_len, n_acc + 1)
