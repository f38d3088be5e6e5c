"""``deer-fused``: draft and verify in the same forward of one model (DEER's stretch).

The converted model (converted.py) is the target's own weights plus a gated LoRA: tokens with the
gate off go through the exact base weights. So one forward can do two jobs:

- the root and the draft, gate off and causal: the AR target verifies the draft (these rows are
  the target's own logits, and their keys and values are the target's own);
- mask blocks, gate on, bidirectional inside each block: the diffusion part drafts the *next*
  draft. Which one is right depends on how much of this draft will be accepted, so a block of k
  masks is attached after every draft node (after the root, after draft token 1, ..., after the
  last; for a tree, after every node): block i sees the root and node i's path. Its first mask
  sits where the token after them goes (the target's bonus or correction, not known yet), so
  mask row j of block i predicts the token j + 1 places after it.

After the forward the mask tokens' keys and values are cut from the target cache again (they are
appended last, so a truncate removes exactly them): the cache leaves ``fused_forward`` as a
plain forward would leave it, and the loop verifies and rolls back as usual. Next step, the
block after the last accepted node continues exactly the committed sequence and becomes the
draft: no drafter pass at all, whatever was accepted. The output is exactly the target's (greedy
identical; sampling lossless, since the chain is drawn from the mask rows' distributions, which
travel with the draft). With ``width`` > 1 the first positions get the block's next candidates as
siblings, each with its own block.

Cost: a forward over (n + 1)(k + 1) tokens for a draft of n nodes. It pays where a forward over a
few dozen tokens costs little more than one (a GPU, a CPU with native bf16; see the roofline in
``paradec bench``). The model is a second module tree sharing every weight with the target (no
copy of the weights); only the LoRA matrices and the mask embedding are new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling import SamplingParams
from ..tree import DraftTree
from .base import ProposeContext, StepResult
from .deer import DeerConfig, DeerProposer


@dataclass(frozen=True)
class FusedDeerConfig(DeerConfig):
    block: int = 6  # mask tokens appended to each forward (the cap when adaptive)
    adapt: str = "step"  # off | step

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapt == "prefill":
            raise ValueError("deer-fused adapt must be off or step")
        if self.passes != 1:
            raise ValueError("deer-fused drafts in the verifying forward: passes must be 1")


class FusedDeer(DeerProposer):
    name = "deer-fused"

    def __init__(self, model, target_vocab: int, config: FusedDeerConfig | None = None) -> None:
        super().__init__(model, target_vocab, config or FusedDeerConfig())
        self._blocks: list[torch.Tensor] = []  # block i: [k, V] mask-row logits after input node i
        self._side: torch.Tensor | None = None  # the block after what the last step accepted

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self.sampling = sampling
        self.k = self.config.block
        self.avg = float(self.config.block)
        self._blocks, self._side = [], None

    def _draft(self, tokens: list[int], k: int) -> torch.Tensor:
        return self._dist(self._side[:k])  # [<=k, V]: the block that follows what was accepted

    def propose(self, ctx: ProposeContext) -> DraftTree:
        if self._side is None:
            return DraftTree()  # the first step; its forward drafts the next one
        tree = super().propose(ctx)
        self._side = None
        return tree

    def observe(self, result: StepResult) -> None:
        super().observe(result)
        acc = result.verdict.accepted  # accepted draft nodes, root excluded
        last = 1 + acc[-1] if acc else 0  # input position of the last accepted node (0 = root)
        self._side = self._blocks[last] if last < len(self._blocks) else None
        self._blocks = []

    @torch.no_grad()
    def fused_forward(self, target, step) -> torch.Tensor:
        """Run ``step`` (a ForwardInput: root + draft tree) with a mask block after every node
        (each block sees that node's path); keep the blocks' logits as the next drafts, cut
        their cache entries, return the target's logits [n+1, V]."""
        m, k = self.drafter, self.k
        ids, pos, mask, cache = step.ids, step.positions, step.mask, step.cache
        n1 = ids.shape[1]  # root + draft nodes
        base = cache.seq_len  # committed tokens before this step, minus the root
        q = n1 + n1 * k  # one block per prefix (root alone, root + 1 draft token, ...)
        attn = torch.zeros(1, q, base + q, dtype=torch.bool)  # [1, q, base+q]
        attn[:, :n1, : base + n1] = mask
        positions = torch.empty(1, q, dtype=torch.long)
        positions[:, :n1] = pos
        for i in range(n1):  # block i follows input node i (0 = the root)
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
        return logits[:n1]
