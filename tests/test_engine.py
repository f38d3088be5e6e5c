"""The Python API end to end on a tiny local model directory (char tokenizer, chat template)."""

import pytest

import paradec
from paradec import ParadecError


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_draft_dir):
    return paradec.load(tiny_model_dir, draft=tiny_draft_dir, dtype="float64")


def test_generate_returns_text_ids_and_stats(engine):
    g = engine.generate("hello world", method="ar", max_new_tokens=20)
    assert len(g.token_ids) == g.stats.new_tokens <= 20
    assert g.text == engine.tokenizer.decode(g.token_ids, skip_special_tokens=True)
    d = g.to_dict()
    for key in ("forwards", "mean_accepted", "tokens_per_s", "per_position_acceptance", "draft_s", "verify_s"):
        assert key in d["stats"]


@pytest.mark.parametrize("method", ["pld", "draft", "qdraft", "suffix", "recycle", "aded", "lookahead"])
def test_every_method_matches_ar_greedy(engine, method):
    for prompt in ["hello hello hello", "abc abc abc ab", "The cat sat on the mat. The cat"]:
        ref = engine.generate(prompt, method="ar", max_new_tokens=40)
        got = engine.generate(prompt, method=method, max_new_tokens=40)
        assert got.token_ids == ref.token_ids and got.text == ref.text


def test_chat_messages_and_raw_prompt(engine):
    ids_chat = engine.encode([{"role": "user", "content": "hi"}])
    assert engine.tokenizer.decode(ids_chat).startswith("<user>hi")
    assert engine.encode("hi") == ids_chat  # a string prompt is a user message on a chat model
    raw = engine.encode("hi", chat=False)
    assert engine.tokenizer.decode(raw, skip_special_tokens=True) == "hi"


def test_stream_pieces_join_to_text(engine):
    s = engine.stream("abc abc abc", method="pld", max_new_tokens=30)
    pieces = list(s)
    assert "".join(pieces) == s.text
    assert s.stats.new_tokens == len(s.token_ids)


def test_stop_string_cuts_text_and_stops(engine):
    # a prompt whose greedy output is long enough to hold a stop string in the middle
    prompt = next(p for p in ["hello hello hello", "abc", "The cat", "xyz xyz", "Once upon a time", "1 2 3"]
                  if len(engine.generate(p, method="ar", max_new_tokens=40).text) > 10)
    full = engine.generate(prompt, method="ar", max_new_tokens=40)
    text = full.text
    stop = text[5:7]
    cut = text.find(stop)
    for method in ("ar", "pld"):
        g = engine.generate(prompt, method=method, max_new_tokens=40, stop=[stop])
        assert g.text == text[:cut]
        assert g.stats.stop_reason == "stop"
        # no token after the one completing the stop string
        assert g.token_ids == full.token_ids[: len(g.token_ids)]
        upto = engine.tokenizer.decode(g.token_ids[:-1], skip_special_tokens=True)
        assert stop not in upto
        s = engine.stream(prompt, method=method, max_new_tokens=40, stop=[stop])
        assert "".join(s) == text[:cut]


def test_seeded_sampling_is_reproducible(engine):
    a = engine.generate("hello", method="pld", max_new_tokens=20, temperature=0.8, seed=3)
    b = engine.generate("hello", method="pld", max_new_tokens=20, temperature=0.8, seed=3)
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="   "), "empty"),
        (dict(prompt="x", method="bogus"), "unknown method"),
        (dict(prompt="x", max_new_tokens=0), "max_new_tokens"),
        (dict(prompt="x", max_new_tokens=-3), "max_new_tokens"),
        (dict(prompt="x", temperature=-0.1), "temperature"),
        (dict(prompt="x", top_p=0.0), "top_p"),
        (dict(prompt="x", top_p=1.5), "top_p"),
        (dict(prompt="x" * 400), "context window"),
        (dict(prompt=[]), "empty"),
        (dict(prompt="x", options={"nope": 1}), "unknown option"),
    ],
)
def test_bad_input_raises_one_line_error(engine, kwargs, match):
    prompt = kwargs.pop("prompt")
    with pytest.raises(ParadecError, match=match) as e:
        engine.generate(prompt, **{"method": "pld", **kwargs})
    assert "\n" not in str(e.value)


def test_draft_method_needs_a_draft_model(tiny_model_dir):
    eng = paradec.load(tiny_model_dir, dtype="float64")
    assert "draft" not in eng.methods
    with pytest.raises(ParadecError, match="needs a draft model"):
        eng.generate("hi", method="draft")


def test_draft_with_another_tokenizer_is_refused(tiny_model_dir, tmp_path):
    from helpers.tiny import tiny_llama
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "a": 1, "b": 2}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>").save_pretrained(tmp_path)
    tiny_llama(5, vocab=8).save_pretrained(tmp_path)
    with pytest.raises(ParadecError, match="different tokenizer"):
        paradec.load(tiny_model_dir, draft=str(tmp_path), dtype="float64")


def test_unknown_models_and_settings():
    with pytest.raises(ParadecError, match="unknown model"):
        paradec.load("no-such-model")
    with pytest.raises(ParadecError, match="not in the local Hugging Face cache"):
        paradec.load("nobody/no-such-repo-xyz")
    with pytest.raises(ParadecError, match="dtype"):
        paradec.load("smollm2-135m", dtype="float8")


def test_hub_id_from_local_hf_cache(tiny_model_dir, tmp_path):
    """A hub id already in the user's HF cache loads offline (in a fresh process, since the hub
    cache location is read at import)."""
    import os
    import shutil
    import subprocess
    import sys

    snap = tmp_path / "hub" / "models--someorg--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snap)
    (tmp_path / "hub" / "models--someorg--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny" / "refs" / "main").write_text("0123abcd")
    code = (
        "import paradec; e = paradec.load('someorg/tiny', dtype='float64'); "
        "print(len(e.generate('abc', method='pld', max_new_tokens=5).token_ids))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert 1 <= int(p.stdout.strip().splitlines()[-1]) <= 5


def test_cache_kwarg_follows_the_transformers_signature():
    from paradec.models.torch.hf import cache_kwarg

    class New:
        def forward(self, input_ids=None, cache=None, **kw): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kw): ...

    assert cache_kwarg(New()) == "cache" and cache_kwarg(Old()) == "past_key_values"


def test_generation_config_is_the_keyword_arguments(engine):
    """``config=`` gives the same generation as the keyword arguments; keywords beside it
    override its fields, and an unknown keyword is a ParadecError naming it."""
    cfg = paradec.GenerationConfig(method="pld", max_new_tokens=12, temperature=0.8, top_p=0.9, seed=3)
    want = engine.generate("abc abc abc", method="pld", max_new_tokens=12, temperature=0.8, top_p=0.9, seed=3)
    assert engine.generate("abc abc abc", config=cfg).token_ids == want.token_ids
    ar = engine.generate("abc abc abc", method="ar", max_new_tokens=5)
    assert engine.generate("abc abc abc", "ar", config=cfg, max_new_tokens=5, temperature=0).token_ids == ar.token_ids
    with pytest.raises(ParadecError, match="unknown generation setting 'max_tokens'"):
        engine.generate("abc", max_tokens=4)
    with pytest.raises(ParadecError, match="unknown generation setting 'bogus'"):
        cfg.replace(bogus=1)


def test_context_room_is_the_one_window_check():
    from paradec.decode import context_room

    assert context_room(5, 8) == 3
    with pytest.raises(ParadecError, match=r"^the prompt has 8 tokens; the context window is 8$"):
        context_room(8, 8)
    with pytest.raises(ParadecError, match=r"^the prompt has 9 tokens; the context window of 'm' is 8$"):
        context_room(9, 8, "m")


def test_prefix_cache_argument(engine):
    """A torch-backend engine keeps no prompt prefixes (its prefill is not exact when split);
    the argument is checked on every backend."""
    assert engine.prefixes is None
    for choice in (True, False, paradec.PrefixCache()):
        g = engine.generate("hello hello", method="ar", max_new_tokens=4, prefix_cache=choice)
        assert g.stats.cached_prompt_tokens == 0
    with pytest.raises(ParadecError, match="prefix_cache"):
        engine.generate("hello", method="ar", max_new_tokens=4, prefix_cache="yes")
