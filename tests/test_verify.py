import torch

from paradec.sampling import SamplingParams, target_probs
from paradec.tree import DraftTree
from paradec.verify import verify_greedy, verify_sampling

from helpers.stats import chi2_pvalue


def onehot_logits(best: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(best), vocab)
    logits[torch.arange(len(best)), torch.tensor(best)] = 5.0
    return logits


def test_greedy_all_accept_gives_bonus():
    tree = DraftTree.chain([1, 2, 3])
    v = verify_greedy(tree, onehot_logits([1, 2, 3, 4]))
    assert v.accepted == (0, 1, 2) and v.accepted_tokens == (1, 2, 3)
    assert v.next_token == 4 and v.bonus
    assert v.tokens == [1, 2, 3, 4]


def test_greedy_all_reject_gives_recovered_token():
    tree = DraftTree.chain([1, 2, 3])
    v = verify_greedy(tree, onehot_logits([0, 2, 3, 4]))
    assert v.accepted == () and v.next_token == 0 and not v.bonus


def test_greedy_partial_accept_stops_at_first_mismatch():
    tree = DraftTree.chain([1, 2, 3])
    v = verify_greedy(tree, onehot_logits([1, 5, 3, 4]))
    assert v.accepted_tokens == (1,) and v.next_token == 5 and not v.bonus


def test_greedy_tree_follows_the_matching_branch():
    # root children: 1 (node 0) and 2 (node 3); node 0 children: 4 (node 1), 5 (node 2)
    tree = DraftTree((1, 4, 5, 2), (-1, 0, 0, -1))
    # target: after root -> 1, after node0 -> 5, at node 2 -> 0 (leaf: bonus)
    v = verify_greedy(tree, onehot_logits([1, 5, 0, 0, 0]))
    assert v.accepted == (0, 2) and v.accepted_tokens == (1, 5)
    assert v.next_token == 0 and v.bonus  # node 2 is a leaf


def test_greedy_is_sampling_at_temperature_zero():
    torch.manual_seed(0)
    tree = DraftTree((1, 4, 5, 2, 3), (-1, 0, 0, -1, 3))
    logits = torch.randn(6, 6)
    g = torch.Generator().manual_seed(0)
    a = verify_greedy(tree, logits)
    b = verify_sampling(tree, target_probs(logits, SamplingParams()), g)
    assert a == b


P = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05, 0.0])


def _first_token_samples(make_tree, trials=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    draw = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(trials):
        tree = make_tree(draw)
        probs = P.expand(len(tree) + 1, -1)  # same p at every node: only the first token matters
        out.append(verify_sampling(tree, probs, g).tokens[0])
    return out


def test_sampling_exact_with_deterministic_candidates():
    # a fixed tree of deterministic candidates, including one the target never picks (5)
    tree = DraftTree((5, 1, 0, 3), (-1, -1, -1, -1))
    samples = _first_token_samples(lambda _: tree)
    assert chi2_pvalue(samples, {i: float(P[i]) for i in range(6)}) > 1e-3


def test_sampling_exact_with_sampled_candidates_in_a_tree():
    q = torch.tensor([0.1, 0.1, 0.5, 0.1, 0.1, 0.1])

    def make(draw):
        xs = torch.multinomial(q, 3, replacement=True, generator=draw).tolist()  # i.i.d. children
        return DraftTree(tuple(xs), (-1, -1, -1), q.expand(3, -1).clone())

    samples = _first_token_samples(make)
    assert chi2_pvalue(samples, {i: float(P[i]) for i in range(6)}) > 1e-3


def test_distribution_check_has_power():
    # Negative control: a draft that lies about its q (claims uniform, samples token 5 always)
    # must be caught by the same check, so the checks above can fail.
    q = torch.full((6,), 1 / 6)

    def make(draw):
        return DraftTree((5,), (-1,), q[None].clone())

    samples = _first_token_samples(make, trials=5000)
    assert chi2_pvalue(samples, {i: float(P[i]) for i in range(6)}) < 1e-6


def test_target_probs_top_k_top_p():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (p[2:] == 0).all() and torch.isclose(p.sum(), torch.tensor(1.0))
    full = logits.softmax(-1)  # [0.64, 0.24, 0.09, 0.03]
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert (p[:2] > 0).all() and (p[2:] == 0).all()  # 0.64 < 0.8, 0.64 + 0.24 >= 0.8
    assert torch.allclose(p[:2], full[:2] / full[:2].sum())
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.5))
    assert p[0] == 1.0


def test_argmax_rows_matches_torch_first_maximum():
    """The CPU argmax (numpy, one thread) picks the same index as torch's: the first maximum,
    ties and a NaN included, for every dtype it takes."""
    from paradec.verify import argmax_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4096, generator=g)
    x[1, 7] = x[1, 3000] = x[1].max() + 1  # a tie: the first one wins
    x[2, :] = 0.5  # all equal
    x[3, 11] = float("inf")
    x[4, 5] = float("nan")
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        y = x.to(dt)
        assert argmax_rows(y) == y.argmax(-1).tolist(), dt
    assert argmax_rows(x)[1] == 7 and argmax_rows(x)[2] == 0
