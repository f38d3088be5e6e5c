"""The synthetic tasks: generated from a seed, checked correctly, encoded with one-line errors."""

from __future__ import annotations

import random

import pytest

from paradec.dllm.toy import tasks as T
from paradec.errors import ParadecError


def test_datasets_are_reproducible_and_distinct():
    for task in T.TASKS:
        a, b = T.dataset(task, 20, seed=1), T.dataset(task, 20, seed=1)
        assert a == b and a != T.dataset(task, 20, seed=2)
        for inst in a:
            assert T.correct(inst, inst.answer)
            assert len(inst.prompt_ids) <= T.MAX_PROMPT and len(inst.answer_ids) < T.GEN_LENGTH


def test_task_semantics():
    r = random.Random(0)
    for _ in range(50):
        i = T.make("reverse", r)
        assert i.answer == i.text.split()[1][::-1]
        i = T.make("sort", r)
        assert i.answer == "".join(sorted(i.text.split()[1]))
        i = T.make("insert", r)
        _, k, v, xs = i.text.split()
        assert i.answer == xs[: int(k)] + v + xs[int(k) :]
        i = T.make("remove", r)
        _, k, xs = i.text.split()
        assert i.answer == xs[: int(k)] + xs[int(k) + 1 :]


def test_latin_square_checker_accepts_any_valid_completion():
    assert len(T.latin_squares()) == 576
    puzzle = "1234" "2143" "3412" "43__"
    assert T.latin_valid(puzzle, "1234214334124321")
    assert not T.latin_valid(puzzle, "1234214334124312")  # breaks the given row
    assert not T.latin_valid("1234" "2143" "3412" "____", "1234214334121234")
    inst = T.Instance("latin", "latin " + "_" * 16, "1234214334124321")
    assert T.correct(inst, "2143123443213412") and not T.correct(inst, "1111222233334444")


def test_encoding_and_errors():
    assert T.encode_prompt("reverse abc") == [T.BOS, T.TOK["reverse"], T.TOK["a"], T.TOK["b"], T.TOK["c"], T.SEP]
    assert T.decode_answer([T.TOK["a"], T.TOK["b"], T.EOS, T.TOK["c"]]) == "ab"
    for bad, msg in [("hello abc", "starts with one of"), ("copy ABC", "outside the task vocabulary"),
                     ("copy " + "a" * 30, "too long"), ("", "starts with one of")]:
        with pytest.raises(ParadecError, match=msg):
            T.encode_prompt(bad)


def test_training_is_reproducible_from_a_seed():
    import torch

    from paradec.dllm.toy.train import TrainConfig, train

    cfg = dict(steps=3, batch=8, d_model=32, n_layers=1, n_heads=4, d_ff=64, threads=1)
    a = train(TrainConfig(kind="dllm", seed=5, **cfg), log=lambda s: None)
    b = train(TrainConfig(kind="dllm", seed=5, **cfg), log=lambda s: None)
    c = train(TrainConfig(kind="dllm", seed=6, **cfg), log=lambda s: None)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    ar = train(TrainConfig(kind="ar", seed=5, **cfg), log=lambda s: None)
    assert ar.config.attention == "causal" and ar.config.mask_id is None


def test_latin_squares_are_cached_per_size():
    assert len(T.latin_squares(4)) == 576
    small = T.latin_squares(3)
    assert len(small) == 12 and all(len(sq) == 9 for sq in small)
    assert len(T.latin_squares(2)) == 2 and len(T.latin_squares(4)) == 576
