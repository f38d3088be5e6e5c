"""``deer-fused``: draft and verify in the same forward of one model (DEER's stretch).

The converted model (converted.py) is the target's own weights plus a gated LoRA: tokens with the
gate off go through the exact base weights. So one forward can do two jobs:

- the root and the draft chain, gate off and causal: the AR target verifies the chain (these
  rows are the target's own logits, and their keys and values are the target's own);
- mask blocks, gate on, bidirectional inside each block: the diffusion part drafts the *next*
  chain. Which next chain is right depends on how much of this chain will be accepted, so a
  block of k masks is attached after every prefix of the chain (after the root, after draft
  token 1, ..., after the whole chain): block i sees the root and the first i draft tokens. Its
  first mask sits where the token after them goes (the target's bonus or correction, not known
  yet), so mask row j of block i predicts the token j + 1 places after it.

After the forward the mask tokens' keys and values are cut from the target cache again (they are
appended last, so a truncate removes exactly them): the cache leaves ``fused_forward`` as a
plain forward would leave it, and the loop verifies and rolls back as usual. Next step, with a
draft tokens accepted, block a continues exactly the committed sequence and becomes the chain:
no drafter pass at all, whatever was accepted. The output is exactly the target's (greedy
identical; sampling lossless, since the chain is drawn from the mask rows' distributions, which
travel with the draft).

Cost: a forward over 1 + c + (c + 1) k tokens for a chain of c. It pays where a forward over a
few dozen tokens costs little more than one (a GPU, a CPU with native bf16; see the roofline in
``paradec bench``). The model is a second module tree sharing every weight with the target (no
copy of the weights); only the LoRA matrices and the mask embedding are new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling import SamplingParams
from ..tree import DraftTree
from .base import ProposeContext
from .deer import DeerConfig, DeerProposer


@dataclass(frozen=True)
class FusedDeerConfig(DeerConfig):
    block: int = 6  # mask tokens appended to each forward (the cap when adaptive)
    adapt: str = "step"  # off | step

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapt == "prefill":
            raise ValueError("deer-fused adapt must be off or step")
        if self.passes != 1 or self.width != 1:
            raise ValueError("deer-fused drafts a chain in the verifying forward: passes and width must be 1")


class FusedDeer(DeerProposer):
    name = "deer-fused"

    def __init__(self, model, target_vocab: int, config: FusedDeerConfig | None = None) -> None:
        super().__init__(model, target_vocab, config or FusedDeerConfig())
        self._blocks: list[torch.Tensor] = []  # block i: [k, V] mask-row logits after i draft tokens
        self._assumed: tuple[int, list[int]] = (0, [])  # (committed tokens before the forward, its chain)
        self._side: torch.Tensor | None = None

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self.sampling = sampling
        self.k = self.config.block
        self.avg = float(self.config.block)
        self._blocks, self._assumed, self._side = [], (0, []), None

    def _draft(self, tokens: list[int], k: int) -> torch.Tensor:
        return self._dist(self._side[:k])  # [<=k, V]: the block that follows what was accepted

    def propose(self, ctx: ProposeContext) -> DraftTree:
        n, chain = self._assumed
        a = len(ctx.tokens) - n - 1  # draft tokens accepted last step
        if not self._blocks or not 0 <= a < len(self._blocks) or ctx.tokens[n : n + a] != chain[:a]:
            self._side = None
            return DraftTree()  # the first step; its forward drafts the next chain
        self._side = self._blocks[a]
        return super().propose(ctx)

    @torch.no_grad()
    def fused_forward(self, target, step) -> torch.Tensor:
        """Run ``step`` (a ForwardInput: root + chain) with a mask block after every prefix of
        the chain; keep the blocks' logits as the next drafts, cut their cache entries, return
        the target's logits [n+1, V]."""
        m, k = self.drafter, self.k
        ids, pos, mask, cache = step.ids, step.positions, step.mask, step.cache
        n1 = ids.shape[1]  # root + chain
        base = cache.seq_len  # committed tokens before this step, minus the root
        q = n1 + n1 * k  # one block per prefix (root alone, root + 1 draft token, ...)
        attn = torch.zeros(1, q, base + q, dtype=torch.bool)  # [1, q, base+q]
        attn[:, :n1, : base + n1] = mask
        positions = torch.empty(1, q, dtype=torch.long)
        positions[:, :n1] = pos
        for i in range(n1):  # block i follows chain node i (0 = the root)
            lo = n1 + i * k
            attn[:, lo : lo + k, : base + n1] = mask[:, i : i + 1, :]  # what node i sees, itself included
            attn[:, lo : lo + k, base + lo : base + lo + k] = True  # its own block
            positions[:, lo : lo + k] = pos[:, i : i + 1] + torch.arange(1, k + 1)[None]
        x = torch.cat([ids, torch.zeros(1, q - n1, dtype=torch.long)], 1)  # [1, q]
        is_mask = torch.zeros(1, q, dtype=torch.bool)
        is_mask[:, n1:] = True
        logits = m.run(x, is_mask, positions, attn, is_mask, cache)[0]  # [q, V]
        cache.truncate(base + n1)
        self._blocks = [logits[n1 + i * k : n1 + (i + 1) * k] for i in range(n1)] if k else []
        self._assumed = (base + 1, ids[0, 1:].tolist())
        return logits[:n1]
