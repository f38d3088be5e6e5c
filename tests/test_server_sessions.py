"""Per-conversation drafters kept by the scheduler (used by ``--replicas``): reuse, busy
conversations, methods without state, the bound, and lossless output."""

from __future__ import annotations

import pytest

import paradec
from paradec.server.request import GenParams
from paradec.server.sessions import SessionDrafters


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64")


def _p(session, method="suffix", **options) -> GenParams:
    return GenParams("1 2 3 4 5", False, method, options, 40, session=session)


def test_kept_drafters(engine):
    s = SessionDrafters(engine, capacity=2)
    a = s.checkout(_p("a"))
    assert a is not None and a.proposer.config.keep_state
    assert s.checkout(_p("a")) is None  # busy: a concurrent request of "a" drafts from scratch
    s.checkin(a)
    again = s.checkout(_p("a"))
    assert again.proposer is a.proposer  # the same drafter, warm
    s.checkin(again)
    assert s.checkout(_p("a", max_nodes=8)).proposer is not a.proposer  # other options: another drafter
    assert s.checkout(_p(None)) is None and s.checkout(_p("a", "ar")) is None  # no session / no state to keep
    assert s.checkout(_p("a", keep_state=False)) is None  # asked not to keep
    s.checkin(s.checkout(_p("b")))
    s.checkin(s.checkout(_p("c")))
    assert len(s) == 2  # bounded: idle ones evicted, least recently used first (one is still checked out)
    assert SessionDrafters(engine, 0).checkout(_p("a")) is None  # the single-process default: off


def test_a_warm_drafter_is_lossless_and_accepts_more(engine):
    s = SessionDrafters(engine, capacity=4)
    want = engine.generate("1 2 3 4 5", method="ar", chat=False, max_new_tokens=40).text
    rates = []
    for _ in range(3):
        kept = s.checkout(_p("a"))
        g = engine.stream("1 2 3 4 5", method="suffix", chat=False, max_new_tokens=40, proposer=kept.proposer)
        for _ in g:
            pass
        s.checkin(kept)
        assert g.text == want
        rates.append(g.stats.mean_accepted)
    assert rates[1] > rates[0] and rates[2] > rates[0]
