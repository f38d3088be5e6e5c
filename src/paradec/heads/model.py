"""A trained draft head on the target's own hidden states (EAGLE-style, no attention).

The target's last hidden state at position j (after its final norm, the LM head's input) is
``f_j``; ``lm_head(f_j)`` gives the target's distribution of token j + 1. The head predicts the
*next* feature from the current one and the token that follows it:

    f^_{j+1} = head(f_j, token_{j+1})        logits of token j + 2 = W_trim f^_{j+1}

and then runs on its own predictions (f^_{j+2} = head(f^_{j+1}, token_{j+2}), ...) to draft
several tokens from one target forward. ``f_j`` already summarizes the whole context, so the
head needs no attention and no cache of its own: one fused projection of [norm(f), norm(e)],
one SwiGLU block and an output norm (shaped like the target's final norm) per drafted depth.

The LM head is the target's own, cut to the ``K`` tokens the target generates most often
(VocabTrim): drafting a token costs K x H multiply-adds instead of V x H (49152 -> 4096 rows for
SmolLM2: the full head is a fifth of the model's weights). Tokens outside the cut are never
drafted; verification still sees the full vocabulary, so nothing is lost but acceptance.

Only the head's own weights and the kept token ids are stored; the embedding, the cut LM head
and the final-norm shape come from the target at load time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ParadecError

WEIGHTS = "head.safetensors"


@dataclass(frozen=True)
class HeadSpec:
    hidden: int  # the target's hidden size
    intermediate: int  # the SwiGLU block's width
    vocab: int  # the target's vocabulary
    eps: float = 1e-5
    base: str = ""  # the target's name (for messages)
    base_fingerprint: dict = field(default_factory=dict)  # refuses a head trained on another model
    trained: dict = field(default_factory=dict)  # recipe and measured quality, for the record

    def __post_init__(self) -> None:
        if self.hidden <= 0 or self.intermediate <= 0 or self.vocab <= 0:
            raise ValueError("head sizes must be positive")


class _RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class DraftHead(nn.Module):
    """``step(f, tokens) -> f^`` and ``logits(f^) -> [.., K]`` over the kept tokens ``vocab_ids``."""

    def __init__(self, spec: HeadSpec, embed: torch.Tensor, lm_head: torch.Tensor, vocab_ids: torch.Tensor) -> None:
        super().__init__()
        h, i = spec.hidden, spec.intermediate
        if embed.shape[1] != h or lm_head.shape[1] != h:
            raise ParadecError(f"head: the target's hidden size is {embed.shape[1]}, the head's {h}")
        self.spec = spec
        self.norm_f = _RMSNorm(h, spec.eps)
        self.norm_e = _RMSNorm(h, spec.eps)
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.norm_x = _RMSNorm(h, spec.eps)
        self.gate = nn.Linear(h, i, bias=False)
        self.up = nn.Linear(h, i, bias=False)
        self.down = nn.Linear(i, h, bias=False)
        self.norm_out = _RMSNorm(h, spec.eps)
        # the target's weights (frozen, not saved): the embedding and the cut LM head
        self.register_buffer("embed", embed.detach(), persistent=False)  # [V, H]
        self.register_buffer("vocab_ids", vocab_ids.long(), persistent=True)  # [K]
        self.register_buffer("lm_trim", lm_head.detach()[vocab_ids.long()].contiguous(), persistent=False)  # [K, H]
        self._lm_packed: nn.Module | None = None  # see pack()

    @property
    def kept(self) -> int:
        return int(self.vocab_ids.numel())

    def step(self, f: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """f: [..., H] features, tokens: [...] the token after each -> predicted next features [..., H]."""
        e = self.embed[tokens]  # [..., H]
        x = self.fc(torch.cat([self.norm_f(f), self.norm_e(e)], -1))  # [..., H]
        n = self.norm_x(x)
        x = x + self.down(nn.functional.silu(self.gate(n)) * self.up(n))
        return self.norm_out(x)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., K] logits over ``vocab_ids``."""
        if self._lm_packed is not None:
            return self._lm_packed(f)
        return f @ self.lm_trim.T

    def pack(self) -> "DraftHead":
        """For drafting only: prepack the products for oneDNN where that pays (bfloat16 on a CPU
        with native bf16, see ``models.torch.packed``); else leave the head as it is."""
        from ..models.torch.packed import PackedLinear, can_pack

        if can_pack(self.lm_trim.device, self.lm_trim.dtype):
            for name in ("fc", "gate", "up", "down"):
                setattr(self, name, PackedLinear.of(getattr(self, name)))
            self._lm_packed = PackedLinear(self.lm_trim, None)
        return self

    # ---- files ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        # bfloat16: half the bytes, and drafting needs no more
        state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in self.state_dict().items() if k != "vocab_ids"}
        state["vocab_ids"] = self.vocab_ids.to(torch.int32).contiguous()
        save_file(state, str(d / WEIGHTS))
        (d / "config.json").write_text(json.dumps({"paradec_head": asdict(self.spec)}, indent=1) + "\n")


def target_weights(hf_model) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The target's input embedding [V, H], LM head [V, H] and final-norm epsilon."""
    emb = hf_model.get_input_embeddings().weight
    lm = hf_model.get_output_embeddings().weight
    cfg = hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") else hf_model.config
    eps = float(getattr(cfg, "rms_norm_eps", 1e-5) or 1e-5)
    return emb, lm, eps


def new_head(hf_model, vocab_ids: torch.Tensor, intermediate: int, base: str = "") -> DraftHead:
    """A freshly initialized head for ``hf_model``; the output norm starts as the target's final norm."""
    from ..distill.fingerprint import fingerprint

    emb, lm, eps = target_weights(hf_model)
    spec = HeadSpec(hidden=int(emb.shape[1]), intermediate=intermediate, vocab=int(lm.shape[0]), eps=eps,
                    base=base, base_fingerprint=fingerprint(hf_model))
    head = DraftHead(spec, emb, lm, vocab_ids).to(emb.dtype)
    final_norm = getattr(getattr(hf_model, "model", None), "norm", None)
    if final_norm is not None and getattr(final_norm, "weight", None) is not None and final_norm.weight.shape == head.norm_out.weight.shape:
        with torch.no_grad():
            head.norm_out.weight.copy_(final_norm.weight)
    return head


def read_spec(directory: str | Path) -> HeadSpec:
    d = Path(directory)
    try:
        raw = json.loads((d / "config.json").read_text())["paradec_head"]
    except (OSError, ValueError, KeyError):
        raise ParadecError(f"'{directory}' is not a draft head (config.json with a paradec_head section)") from None
    try:
        return HeadSpec(**raw)
    except (TypeError, ValueError) as e:
        raise ParadecError(f"'{directory}': bad head config ({e})") from None


def load_head(directory: str | Path, hf_model, what: str = "head") -> DraftHead:
    """The head stored in ``directory`` on ``hf_model``'s weights (in the target's dtype and device)."""
    from safetensors.torch import load_file

    from ..distill.fingerprint import check_fingerprint

    spec = read_spec(directory)
    check_fingerprint(spec.base_fingerprint, hf_model, what)
    emb, lm, _ = target_weights(hf_model)
    if lm.shape[0] != spec.vocab:
        raise ParadecError(f"{what} was trained for a vocabulary of {spec.vocab}, this model has {lm.shape[0]}")
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise ParadecError(f"'{directory}' has no {WEIGHTS}")
    state = load_file(str(path))
    vocab_ids = state.pop("vocab_ids").long()
    head = DraftHead(spec, emb, lm, vocab_ids)
    missing, unexpected = head.load_state_dict({**state, "vocab_ids": vocab_ids}, strict=False)
    missing = [k for k in missing if k not in ("embed", "lm_trim")]
    if missing or unexpected:
        raise ParadecError(f"'{directory}': head weights do not match its config (missing {missing}, unexpected {unexpected})")
    return head.to(device=emb.device, dtype=emb.dtype).eval().requires_grad_(False)
