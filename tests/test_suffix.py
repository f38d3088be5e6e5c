"""``suffix``: the suffix automaton (matches, counts, ranking, bounded state, requests) and the
drafter's losslessness through the decode loop."""

import random

import pytest

from paradec.proposers.base import ProposeContext
from paradec.proposers.suffix import SuffixAutomaton, SuffixConfig, SuffixDrafter
from paradec.sampling import SamplingParams
from helpers.lossless import assert_identical_to_ar, assert_sampling_lossless


def ctx(tokens, max_nodes=64, max_depth=64):
    return ProposeContext(list(tokens), 1, max_nodes, max_depth, SamplingParams())


def sam_of(tokens, count_walk=10**9):
    a = SuffixAutomaton(count_walk)
    a.extend_all(tokens)
    return a


def brute_count(s, pat):
    n = len(pat)
    return sum(1 for j in range(len(s) - n + 1) if s[j : j + n] == pat)


def brute_match(s):
    best = 0
    for n in range(1, len(s)):
        suffix = s[len(s) - n :]
        if any(s[j : j + n] == suffix for j in range(len(s) - n)):  # an earlier occurrence
            best = n
    return best


# ---- the automaton --------------------------------------------------------------------------
def test_counts_and_longest_match_agree_with_brute_force():
    rng = random.Random(0)
    for _ in range(100):
        s = [rng.randrange(3) for _ in range(rng.randrange(1, 50))]
        a = sam_of(s)
        assert a.n_states <= max(2 * len(s) - 1, 2)  # the SAM size bound
        for n in range(1, 5):
            for i in range(len(s) - n + 1):
                assert a.occurrences(s[i : i + n]) == brute_count(s, s[i : i + n])
        assert a.match()[1] == brute_match(s)
        assert a.occurrences([3]) == 0


def test_longest_match_on_hand_written_tokens():
    assert sam_of([5, 6, 7, 1, 5, 6, 7, 2, 9, 5, 6, 7]).match()[1] == 3
    assert sam_of([1, 2, 3, 4]).match()[1] == 0
    assert sam_of([4, 4, 4, 4]).match()[1] == 3


def test_count_walk_cap_only_undercounts():
    s = [0] * 30 + [1, 0, 0, 2]
    exact, capped = sam_of(s), sam_of(s, count_walk=3)
    for n in range(1, 6):
        assert 1 <= capped.occurrences([0] * n) <= exact.occurrences([0] * n) == brute_count(s, [0] * n)
    assert capped.occurrences([0]) < exact.occurrences([0])  # the shortest context lost some
    assert capped.occurrences([1, 0, 0, 2]) == 1


def test_continuations_ranked_by_count_then_recency():
    a = sam_of([7, 1, 2, 3, 8, 1, 2, 3, 9, 1, 2, 4, 5, 1, 2])
    state, n = a.match()
    assert n == 2 and state == a.find([1, 2])
    kids, total = a.continuations(state)
    assert [(t, c) for t, c, _ in kids] == [(3, 2), (4, 1)] and total == 3
    b = sam_of([1, 2, 5, 1, 2, 6, 1, 2])
    kids, _ = b.continuations(b.match()[0])
    assert [t for t, _, _ in kids] == [6, 5]  # equal counts: the most recent first


# ---- the drafter ----------------------------------------------------------------------------
def drafter_on(tokens, **cfg):
    d = SuffixDrafter(SuffixConfig(**cfg))
    d.begin(list(tokens), SamplingParams())
    return d


def test_tree_ranks_continuations():
    toks = [7, 1, 2, 3, 8, 1, 2, 3, 9, 1, 2, 4, 5, 1, 2]
    tree = drafter_on(toks).propose(ctx(toks))
    assert [tree.tokens[i] for i in tree.children()[0]] == [3, 4]  # most frequent first
    assert len(tree) <= 8 and tree.depth <= 4  # match of 2: budget 4 * 2, depth 2 * 2


def test_long_dominant_match_gives_a_deep_chain():
    toks = [1, 2, 3, 4, 5, 6, 7, 8, 0] * 2 + [1, 2, 3, 4, 5]
    tree = drafter_on(toks).propose(ctx(toks))
    assert tree.tokens == (6, 7, 8, 0, 1, 2, 3, 4, 5) and tree.is_chain  # up to the stream's end
    tree = drafter_on(toks * 2).propose(ctx(toks * 2))
    assert tree.is_chain and len(tree) == 12  # the default max_depth


def test_short_flat_match_gives_a_shallow_wide_tree():
    toks = [1, 5, 1, 6, 1, 7, 1, 8, 2, 1]
    tree = drafter_on(toks).propose(ctx(toks))
    assert tree.depth == 1 and list(tree.tokens) == [8, 7, 6, 5]  # budget 4, ties most recent first


def test_min_prob_prunes_rare_continuations():
    toks = [1, 5] * 30 + [1, 6, 1]
    tree = drafter_on(toks, min_prob=0.1).propose(ctx(toks))
    assert 6 not in tree.tokens and tree.tokens[0] == 5


def test_respects_context_limits():
    toks = [1, 2, 3, 4, 5, 6, 7, 8, 0] * 3 + [1, 2, 3]
    d = drafter_on(toks)
    assert len(d.propose(ctx(toks, max_nodes=3))) == 3
    assert d.propose(ctx(toks, max_depth=2)).depth == 2
    assert len(drafter_on([1, 2, 3]).propose(ctx([1, 2, 3]))) == 0  # no match, no draft
    assert len(drafter_on(toks, min_match=100).propose(ctx(toks))) == 0


def test_follows_tokens_appended_between_steps():
    d = drafter_on([1, 2, 3, 9])
    assert len(d.propose(ctx([1, 2, 3, 9]))) == 0
    tree = d.propose(ctx([1, 2, 3, 9, 1, 2]))  # synced lazily
    assert tree.tokens[:2] == (3, 9)


def test_eviction_bounds_the_index():
    rng = random.Random(1)
    toks = [100, 101, 102] + [rng.randrange(10) for _ in range(1000)]
    d = drafter_on(toks, max_tokens=64)
    assert len(d.sam) <= 64 and d.sam.n_states <= 2 * 64
    assert d.sam.occurrences([100, 101, 102]) == 0  # evicted
    assert d.sam.occurrences(toks[-10:]) >= 1  # the recent window is indexed
    d.propose(ctx(toks + [1, 2, 3]))
    assert len(d.sam) <= 64


def test_state_resets_per_request():
    d = drafter_on([1, 2, 3, 4, 1, 2])
    d.begin([9, 9], SamplingParams())
    assert len(d.sam) == 2 and d.sam.occurrences([1, 2]) == 0


def test_keep_state_indexes_across_requests_with_separators():
    d = SuffixDrafter(SuffixConfig(keep_state=True))
    for prompt in ([1, 2, 3], [4, 9]):
        d.begin(prompt, SamplingParams())
    d.begin([3, 4], SamplingParams())
    assert d.sam.match()[1] == 1  # [3, 4] only spans the separator: not a match
    assert d.sam.occurrences([3, 4]) == 1  # the current request only
    d.begin([5, 6, 7, 8], SamplingParams())
    d.begin([0, 5, 6], SamplingParams())
    assert d.propose(ctx([0, 5, 6])).tokens == (7, 8)  # learned in an earlier request, stops at its end


def test_corpus_from_file_and_argument(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("1 2 3 4 5\n\n6 7 8\n")
    d = SuffixDrafter(SuffixConfig(corpus_path=str(path), max_tokens=32), corpus=[[20, 21, 22]])
    d.begin([9, 2, 3], SamplingParams())
    assert d.propose(ctx([9, 2, 3])).tokens == (4, 5)  # a corpus line's end is not proposed
    d.begin([20], SamplingParams())  # the corpus survives a reset ...
    assert d.propose(ctx([20])).tokens == (21, 22)
    d.begin(list(range(30, 90)), SamplingParams())  # ... and evictions
    assert d.sam.occurrences([6, 7, 8]) == 1 and len(d.sam) <= 32
    with pytest.raises(ValueError, match="corpus"):
        SuffixDrafter(SuffixConfig(max_tokens=16), corpus=[list(range(10))])


# ---- losslessness through the decode loop --------------------------------------------------
@pytest.mark.parametrize(
    "config", [SuffixConfig(), SuffixConfig(max_width=1, max_nodes=8), SuffixConfig(keep_state=True, max_tokens=64)]
)
def test_greedy_identical_to_ar(config, target, reference):
    d = SuffixDrafter(config)  # one drafter for all prompts (state kept across them or not)
    assert assert_identical_to_ar(target, reference, lambda: d, f"suffix {config}") > 0


def test_sampling_is_lossless(s_target):
    assert_sampling_lossless(s_target, lambda: SuffixDrafter())


SECRET = "the first line is private: hunter2"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "no such file"),
        (lambda d: d, "is a folder"),
        (lambda d: (d / "notes.txt").write_text(SECRET + "\n1 2 3\n") and d / "notes.txt", "line 1 is not"),
        (lambda d: (d / "neg.txt").write_text("1 2\n3 -4\n") and d / "neg.txt", "line 2 is not"),
        (lambda d: (d / "bin.txt").write_bytes(b"\xff\xfe\x00" + SECRET.encode()) and d / "bin.txt", "not UTF-8"),
    ],
)
def test_bad_corpus_path_is_a_one_line_error_without_the_content(tmp_path, capsys, make, message):
    from paradec.errors import ParadecError

    path = make(tmp_path)
    with pytest.raises(ParadecError, match=message) as e:
        SuffixDrafter(SuffixConfig(corpus_path=str(path)))
    assert "hunter2" not in str(e.value) and "\n" not in str(e.value)


def test_bad_corpus_path_on_the_cli(tiny_model_dir, tmp_path, capsys):
    from helpers.cli import run_cli

    bad = tmp_path / "notes.txt"
    bad.write_text(SECRET + "\n")
    for path in (bad, tmp_path, tmp_path / "missing"):
        code, out, err = run_cli(["generate", "hi", "--model", tiny_model_dir, "--method", "suffix",
                                  "--opt", f"corpus_path={path}", "-n", "2"], capsys)
        assert code == 2 and err.startswith("error: suffix corpus_path") and len(err.strip().splitlines()) == 1
        assert "hunter2" not in err
