"""ParallelBench-style synthetic tasks, generated offline from a seed.

Every instance is a prompt (a task word and its arguments) and one reference answer. The tasks
differ in how strongly the answer's tokens depend on each other: ``copy`` and ``reverse`` are
fully determined token by token by the prompt (parallel decoding can be exact), ``sort`` and the
index edits need positional bookkeeping, and the Latin square puzzle can have several valid
completions, so tokens decoded in the same step can disagree with each other.

Text form (what ``paradec generate`` takes): ``"copy dacb"``, ``"reverse dacb"``, ``"sort dacb"``,
``"insert 2 k dacb"``, ``"remove 2 dacb"``, ``"replace 2 k dacb"``, ``"latin 12_4_3..."``.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

from ...errors import ParadecError

PAD, MASK, BOS, EOS, SEP = 0, 1, 2, 3, 4
SPECIAL = ["<pad>", "<mask>", "<s>", "</s>", "="]
TASKS = ["copy", "reverse", "sort", "insert", "remove", "replace", "latin"]
DIGITS = list("0123456789")
ITEMS = list("abcdefghijklmnop")
BLANK = "_"
VOCAB = SPECIAL + TASKS + DIGITS + ITEMS + [BLANK]
VOCAB_SIZE = 48  # padded
TOK = {t: i for i, t in enumerate(VOCAB)}

MIN_ITEMS, MAX_ITEMS = 3, 10
LATIN_N = 4
GEN_LENGTH = 18  # answer (<= 16 tokens) + EOS, padded with EOS
MAX_PROMPT = 3 + LATIN_N * LATIN_N  # BOS task cells SEP


@dataclass(frozen=True)
class Instance:
    task: str
    text: str  # prompt in text form
    answer: str  # reference answer (one char per token)

    @property
    def prompt_ids(self) -> list[int]:
        return encode_prompt(self.text)

    @property
    def answer_ids(self) -> list[int]:
        return [TOK[c] for c in self.answer]


def encode_prompt(text: str) -> list[int]:
    """``"reverse abc"`` -> [BOS, reverse, a, b, c, SEP]; one-line error on anything else."""
    parts = text.strip().split(None, 1)
    if not parts or parts[0] not in TASKS:
        raise ParadecError(f"a dLLM task prompt starts with one of {', '.join(TASKS)}; got '{text.strip()[:40]}'")
    body = "".join((parts[1] if len(parts) > 1 else "").split())
    bad = sorted({c for c in body if c not in TOK or c in SPECIAL})
    if bad:
        raise ParadecError(f"characters outside the task vocabulary (digits, a-p, _): {''.join(bad)}")
    ids = [BOS, TOK[parts[0]]] + [TOK[c] for c in body] + [SEP]
    if len(ids) > MAX_PROMPT:
        raise ParadecError(f"task prompt too long: {len(ids)} tokens, at most {MAX_PROMPT}")
    return ids


def decode_answer(ids: list[int]) -> str:
    """Tokens up to the first EOS (or mask/pad), as text."""
    out = []
    for t in ids:
        if t in (EOS, PAD, MASK):
            break
        out.append(VOCAB[t] if 0 <= t < len(VOCAB) else "?")
    return "".join(out)


# ---- generators --------------------------------------------------------------------------------
def _items(rng: random.Random, distinct: bool = False) -> list[str]:
    n = rng.randint(MIN_ITEMS, MAX_ITEMS)
    return rng.sample(ITEMS, n) if distinct else [rng.choice(ITEMS) for _ in range(n)]


@functools.lru_cache(maxsize=None)
def _latin_squares(n: int) -> tuple[tuple[int, ...], ...]:
    return tuple(
        tuple(v for r in rows for v in r)
        for rows in itertools.product(itertools.permutations(range(1, n + 1)), repeat=n)
        if all(len({r[c] for r in rows}) == n for c in range(n))
    )


def latin_squares(n: int = LATIN_N) -> list[tuple[int, ...]]:
    """Every n x n Latin square over 1..n, row-major (computed once per n)."""
    return list(_latin_squares(n))


def latin_valid(puzzle: str, answer: str, n: int = LATIN_N) -> bool:
    """A valid completion: a Latin square over 1..n that keeps every given cell."""
    if len(answer) != n * n or any(c not in "1234"[:n] for c in answer):
        return False
    if any(p != BLANK and p != a for p, a in zip(puzzle, answer)):
        return False
    rows = [answer[i * n : (i + 1) * n] for i in range(n)]
    return all(len(set(r)) == n for r in rows) and all(len({r[c] for r in rows}) == n for c in range(n))


def make(task: str, rng: random.Random) -> Instance:
    if task in ("copy", "reverse", "sort"):
        xs = _items(rng)
        ans = {"copy": xs, "reverse": xs[::-1], "sort": sorted(xs)}[task]
        return Instance(task, f"{task} {''.join(xs)}", "".join(ans))
    if task == "insert":
        xs = _items(rng)[: MAX_ITEMS - 1]
        i, v = rng.randint(0, len(xs)), rng.choice(ITEMS)
        return Instance(task, f"insert {i} {v} {''.join(xs)}", "".join(xs[:i] + [v] + xs[i:]))
    if task == "remove":
        xs = _items(rng)
        i = rng.randrange(len(xs))
        return Instance(task, f"remove {i} {''.join(xs)}", "".join(xs[:i] + xs[i + 1 :]))
    if task == "replace":
        xs = _items(rng)
        i, v = rng.randrange(len(xs)), rng.choice(ITEMS)
        return Instance(task, f"replace {i} {v} {''.join(xs)}", "".join(xs[:i] + [v] + xs[i + 1 :]))
    if task == "latin":
        sq = rng.choice(latin_squares())
        k = rng.randint(3, 7)
        blanks = set(rng.sample(range(LATIN_N * LATIN_N), k))
        puzzle = "".join(BLANK if j in blanks else str(v) for j, v in enumerate(sq))
        return Instance(task, f"latin {puzzle}", "".join(str(v) for v in sq))
    raise ParadecError(f"unknown task '{task}' (tasks: {', '.join(TASKS)})")


def dataset(task: str, n: int, seed: int) -> list[Instance]:
    """``n`` instances of ``task`` from ``seed`` (same seed, same list)."""
    rng = random.Random(f"{task}:{seed}")
    return [make(task, rng) for _ in range(n)]


HELDOUT_SEED = 10_000  # benchmark instances; training draws from seeds below this


def correct(inst: Instance, output: str) -> bool:
    if inst.task == "latin":
        return latin_valid(inst.text.split(None, 1)[1], output)
    return output == inst.answer
