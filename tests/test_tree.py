import pytest
import torch

from paradec.tree import DraftTree, attention_mask


def test_chain_is_degenerate_tree():
    t = DraftTree.chain([5, 6, 7])
    assert t.is_chain and len(t) == 3 and t.depth == 3
    assert t.parents == (-1, 0, 1)
    assert t.position_offsets() == [0, 1, 2, 3]
    assert t.input_ids(9) == [9, 5, 6, 7]
    assert t.paths() == [[0, 1, 2]]
    # chain mask == causal
    assert torch.equal(t.ancestor_mask(), torch.ones(4, 4, dtype=torch.bool).tril())


def test_from_sequences_merges_shared_prefixes():
    t = DraftTree.from_sequences([[1, 2, 3], [1, 2, 4], [5]])
    assert t.tokens == (1, 2, 3, 4, 5)
    assert t.parents == (-1, 0, 1, 1, -1)
    assert t.depths() == [1, 2, 3, 3, 1]
    assert t.children() == [[0, 4], [1], [2, 3], [], [], []]
    assert sorted(t.paths()) == [[0, 1, 2], [0, 1, 3], [4]]
    assert not t.is_chain


def test_from_sequences_respects_node_cap():
    t = DraftTree.from_sequences([[1, 2, 3], [4, 5, 6]], max_nodes=4)
    assert t.tokens == (1, 2, 3, 4) and t.parents == (-1, 0, 1, -1)


def test_tree_mask_and_positions():
    #      root
    #     /    \
    #    a(0)  d(3)
    #    / \
    #  b(1) c(2)
    t = DraftTree((10, 11, 12, 13), (-1, 0, 0, -1))
    assert t.position_offsets() == [0, 1, 2, 2, 1]
    m = attention_mask(t, prefix_len=3)
    assert m.shape == (5, 8)
    assert m[:, :3].all()  # everyone sees the cached prefix
    expect = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # root
            [1, 1, 0, 0, 0],  # a
            [1, 1, 1, 0, 0],  # b: root, a, b
            [1, 1, 0, 1, 0],  # c: root, a, c (not b)
            [1, 0, 0, 0, 1],  # d: root, d
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m[:, 3:], expect)


def test_limit_depth_and_truncate_keep_a_valid_tree():
    t = DraftTree((1, 2, 3, 4, 5), (-1, 0, 1, -1, 3))
    d = t.limit_depth(1)
    assert d.tokens == (1, 4) and d.parents == (-1, -1)
    d2 = t.limit_depth(2)
    assert d2.tokens == (1, 2, 4, 5) and d2.parents == (-1, 0, -1, 2)
    assert t.truncated(3).tokens == (1, 2, 3)
    assert t.limit_depth(0).tokens == ()


def test_invalid_parents_rejected():
    with pytest.raises(ValueError):
        DraftTree((1, 2), (-1, 1))
    with pytest.raises(ValueError):
        DraftTree((1,), (-1, 0))


def test_match_length_follows_the_best_matching_path():
    t = DraftTree.from_sequences([[1, 2, 3], [1, 4], [5]])
    assert t.match_length([1, 2, 3, 9]) == 3
    assert t.match_length([1, 4, 4]) == 2
    assert t.match_length([5]) == 1
    assert t.match_length([7, 1]) == 0
    assert DraftTree().match_length([1]) == 0


def test_chain_ancestor_mask_is_the_lower_triangle_for_every_length():
    for k in range(0, 20):
        m = DraftTree.chain(list(range(5, 5 + k))).ancestor_mask()
        assert m.dtype == torch.bool and torch.equal(m, torch.ones(k + 1, k + 1, dtype=torch.bool).tril())
