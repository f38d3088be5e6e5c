"""A base model's fingerprint: enough of it to refuse weights (a draft head, a converted
adapter) trained on another base model. Stored with those weights, checked when they load."""

from __future__ import annotations

from ..errors import ParadecError


def fingerprint(hf_model) -> dict:
    """The base model's type, shape and a digest of its embeddings."""
    c = hf_model.config
    emb = hf_model.get_input_embeddings().weight
    return {
        "model_type": str(getattr(c, "model_type", "")), "hidden_size": int(c.hidden_size),
        "num_hidden_layers": int(c.num_hidden_layers), "vocab_size": int(emb.shape[0]),
        "embed_abs_mean": round(float(emb[:512].detach().float().abs().mean()), 6),
    }


def check_fingerprint(want: dict, hf_model, what: str) -> None:
    """A one-line error naming the first field where ``hf_model`` differs from ``want``."""
    have = fingerprint(hf_model)
    for k, v in want.items():
        if k == "embed_abs_mean":
            ok = abs(have[k] - v) <= 2e-2 * max(abs(v), 1e-6)
        else:
            ok = have.get(k) == v
        if not ok:
            raise ParadecError(f"{what} was trained on another base model ({k}: {v} vs this model's {have.get(k)})")
