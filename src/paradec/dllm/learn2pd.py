"""Training the Learn2PD commit filter (policies/learned.py): features and labels from
one-token-per-step runs of the loop (``collect``), a short fit (``train_filter``), the file."""

from __future__ import annotations

import torch
from torch import nn

from .loop import Settings, unmask_batch
from .policies.blocks import FixedBlocks
from .policies.learned import FilterMLP, Recorder


def collect(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 64, block_size: int | None = None):
    """Features [N, F] and labels [N] (prediction == final token) from one-token-per-step runs."""
    X, Y = [], []
    for i in range(0, len(prompts), batch_size):
        rec = Recorder()
        s = Settings(max_new_tokens=max_new_tokens, commit=rec, blocks=FixedBlocks(block_size), eos_stop=False)
        res = unmask_batch(model, prompts[i : i + batch_size], s)
        final = torch.tensor([r.tokens for r in res])
        for rows, f, pred, masked in rec.log:
            X.append(f[masked].cpu())
            Y.append((pred == final.to(pred.device)[rows])[masked].cpu())
    return torch.cat(X), torch.cat(Y).float()


def train_filter(X: torch.Tensor, Y: torch.Tensor, seed: int = 0, epochs: int = 300, log=print) -> FilterMLP:
    torch.manual_seed(seed)
    f = FilterMLP()
    opt = torch.optim.Adam(f.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    n = len(X)
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        for j in range(0, n, 4096):
            idx = perm[j : j + 4096]
            loss = nn.functional.binary_cross_entropy_with_logits(f(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (ep + 1) % 100 == 0:
            with torch.no_grad():
                acc = ((f(X) > 0).float() == Y).float().mean().item()
            log(f"filter epoch {ep + 1}: loss {loss.item():.4f}, accuracy {acc:.4f}, positives {Y.mean().item():.3f}")
    return f.eval()


def save_filter(f: FilterMLP, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in f.state_dict().items()}, str(path))
