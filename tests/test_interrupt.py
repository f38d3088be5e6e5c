"""paradec.interrupt: checkpoints stop a long step only inside ``interruptible``."""

from __future__ import annotations

import pytest

from helpers.tiny import tiny_target
from paradec.decode import DecodeConfig, Decoder
from paradec.interrupt import Interrupted, checkpoint, interruptible
from paradec.proposers import NoDraft


def test_checkpoint_raises_only_when_asked_and_scopes_nest():
    checkpoint()  # outside: never raises
    with interruptible(lambda: False):
        checkpoint()
        with interruptible(lambda: True):
            with pytest.raises(Interrupted):
                checkpoint()
        checkpoint()  # the outer check is back
    checkpoint()


def test_a_long_prefill_stops_at_the_next_chunk():
    target = tiny_target(max_pos=2048)  # transformers' own forward (no lean path)
    calls = []
    forward = target.model.forward
    target.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    dec = Decoder(target, NoDraft(), [5] * 1500, DecodeConfig(max_new_tokens=4))
    with interruptible(lambda: len(calls) >= 1), pytest.raises(Interrupted):
        dec.prepare()
    assert len(calls) == 1  # one of three 512-token chunks ran
