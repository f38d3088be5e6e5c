"""AR -> block-diffusion conversion on tiny random models: the batched training pass and the cached
per-sequence pass compute the same function, clean tokens keep the base model's outputs, the
adapter files round-trip (split under a size limit), ``paradec convert`` runs end to end on CPU,
and the converted model decodes through the dLLM loop with every policy."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers.cli import run_cli
from helpers.tiny import char_tokenizer, tiny_llama

import paradec.dllm.converted as converted
from paradec.dllm import freedave
from paradec.convert.train import ConvertConfig, block_hidden, make_batch, masked_accuracy, train
from paradec.dllm.converted import BlockDiffusionAR, load_converted
from paradec.dllm.converted_dlm import ConvertedDLM
from paradec.dllm.loaders import is_diffusion, load_diffusion
from paradec.dllm.loop import generate
from paradec.dllm.methods import METHODS, make_settings
from paradec.errors import ParadecError

CFG = ConvertConfig(base="tiny", rank=4, alpha=8.0, block_size=4, min_block=2, max_block=6, views=2, full_mask=0.3,
                    steps=4, warmup=1, lr=1e-2, max_len=48)


def _model(seed=0) -> BlockDiffusionAR:
    m = BlockDiffusionAR.from_base(tiny_llama(seed, vocab=80, max_pos=2048), CFG.adapter())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.hf.named_parameters():
            if "lora_b" in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        m.mask_vec.copy_(torch.randn(m.mask_vec.shape, generator=g, dtype=m.mask_vec.dtype))
    return m


def _rows(n=6, seed=0):
    r = random.Random(seed)
    return [{"prompt_ids": [1] + [r.randint(4, 79) for _ in range(r.randint(1, 6))],
             "response_ids": [r.randint(4, 79) for _ in range(r.randint(3, 20))]} for _ in range(n)]


def test_batched_training_pass_equals_the_cached_pass():
    m = _model()
    rows = _rows()
    b = make_batch(rows, CFG, random.Random(1))
    h, clean_h = block_hidden(m, b)
    logits, clean_logits = m.hf.lm_head(h), m.hf.lm_head(clean_h)
    state = m.new_state(8)
    checked = 0
    for i, row in enumerate(rows):
        seq = row["prompt_ids"] + row["response_ids"]
        for r in range(b.noisy.shape[1]):
            if not b.valid[i, r] or b.pos[i, r] != b.start[i, r]:
                continue
            s = int(b.start[i, r])
            idx = ((b.block[i] == b.block[i, r]) & b.valid[i]).nonzero()[:, 0]
            block = [None if bool(b.is_mask[i, j]) else int(b.noisy[i, j]) for j in idx]
            out = m.block_logits(state, seq[:s], block)  # one shared state: it must follow each context
            torch.testing.assert_close(out[0], clean_logits[i, s - 1], rtol=0, atol=1e-9)
            for j in range(1, len(idx)):
                torch.testing.assert_close(out[j], logits[i, idx[j - 1]], rtol=0, atol=1e-9)
            checked += 1
    assert checked >= 2 * len(rows)  # two views per row


def test_clean_tokens_get_the_base_models_logits_and_state_follows_context():
    m = _model()
    base = tiny_llama(0, vocab=80, max_pos=2048)
    state = m.new_state(4)
    for ctx in ([1, 5, 6], [1, 5, 6, 7, 8], [1, 5, 9], [1, 5, 9, 9, 9, 9, 9, 9]):
        out = m.block_logits(state, ctx, [None, None, 11])
        with torch.no_grad():
            want = base(torch.tensor([ctx])).logits[0, -1]
        torch.testing.assert_close(out[0], want, rtol=0, atol=1e-9)
        assert state.cached == ctx and state.cache.seq_len == len(ctx)
    with pytest.raises(ParadecError):
        m.block_logits(state, [], [None])


def test_adapter_files_round_trip_split_under_the_limit(tmp_path, monkeypatch):
    m = _model()
    monkeypatch.setattr(converted, "MAX_FILE_BYTES", 4000)
    paths = m.save(tmp_path / "a", {"note": 1}, dtype=torch.float64)
    assert len(paths) > 1 and all(p.stat().st_size < 4000 + 2000 for p in paths)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["paradec_converted"]["rank"] == 4 and cfg["note"] == 1
    m2 = load_converted(tmp_path / "a", tiny_llama(0, vocab=80, max_pos=2048))
    st1, st2 = m.new_state(8), m2.new_state(8)
    torch.testing.assert_close(m.block_logits(st1, [1, 2, 3], [None, 7, None]), m2.block_logits(st2, [1, 2, 3], [None, 7, None]))
    with pytest.raises(ParadecError, match="another base model"):
        load_converted(tmp_path / "a", tiny_llama(5, vocab=80, layers=3))


def test_training_lowers_the_loss_and_raises_masked_accuracy():
    m = _model()
    m.hf.float()
    m.mask_vec.data = m.mask_vec.data.float()
    rows = [{"prompt_ids": [1, 4 + i % 3], "response_ids": [10 + (i % 3) + j % 5 for j in range(16)]} for i in range(9)]
    before = masked_accuracy(m, rows, 4, CFG)["mean"]
    cfg = ConvertConfig(**{**CFG.__dict__, "steps": 60, "lr": 2e-2})
    train(m, rows, cfg, log=lambda s: None)
    after = masked_accuracy(m, rows, 4, CFG)
    assert after["mean"] > before + 0.2, (before, after)
    assert len(after["per_position"]) == 4 and all(0 <= a <= 1 for a in after["per_position"])


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    """``paradec convert`` end to end on a tiny model directory: data, training, quality, files."""
    d = tmp_path_factory.mktemp("conv")
    base = d / "base"
    tok = char_tokenizer()
    model = tiny_llama(0, vocab=len(tok), max_pos=4096)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(base)
    tok.save_pretrained(base)
    return base, d / "dlm"


def test_convert_cli_tiny_end_to_end(converted_dir, capsys):
    base, out = converted_dir
    args = ["convert", "--base", str(base), "--out", str(out), "--steps", "3", "--batch", "2", "--rank", "2",
            "--block-size", "4", "--min-block", "2", "--max-block", "6", "--max-len", "64", "--threads", "1",
            "--max-prompts", "3", "--max-new", "8", "--samples", "1", "--gen-batch", "4", "--eval-prompts", "2",
            "--eval-gen", "8", "--save-every", "2"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["data"]["continuations"] == 6 and cfg["train"]["steps_done"] == 3
    assert cfg["train"]["command"].startswith("paradec convert --base")
    q = cfg["quality"]
    assert set(q["masked_accuracy"]) == {"4"} and len(q["masked_accuracy"]["4"]["per_position"]) == 4
    assert q["one_token_per_step"]["ar_perplexity_of_dllm_output"] > 0
    assert list(out.glob("adapter-*.safetensors")) and is_diffusion(str(out))


def test_convert_bad_input(capsys, tmp_path):
    code, _, err = run_cli(["convert", "--steps", "0", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--steps" in err
    code, _, err = run_cli(["convert", "--min-block", "9", "--block-size", "8", "--out", str(tmp_path)], capsys)
    assert code == 2 and "min_block" in err


@pytest.fixture(scope="module")
def dlm():
    m = _model()
    return ConvertedDLM(m, None, name="tiny-conv", block_size=4, eos_id=2)


def _prompts():
    return [[1, 5, 6, 7], [1, 9, 9], [1, 20, 21, 22, 23, 24]]


@pytest.mark.parametrize("method", [m for m in METHODS if m != "learn2pd"])
def test_every_policy_decodes_the_converted_model(dlm, method):
    opts = {"gen_length": "8"}
    opts["size" if method == "adablock" else "block_size"] = "4"
    s, extra = make_settings(method, opts, eos_id=2)
    if method == "freedave":
        res = freedave.generate(dlm, _prompts(), s, depth=extra["depth"])
    else:
        res = generate(dlm, _prompts(), s, batch_size=2)
    for r in res:
        assert dlm.spec.mask_id not in r.tokens and len(r.tokens) == 8


def test_freedave_equals_one_token_per_step_and_batching_changes_nothing(dlm):
    s, _ = make_settings("one", {"gen_length": "8", "block_size": "4", "eos_stop": "0"}, eos_id=2)
    a = generate(dlm, _prompts(), s, batch_size=1)
    b = generate(dlm, _prompts(), s, batch_size=3)
    f = freedave.generate(dlm, _prompts(), s, depth=4)
    assert [r.tokens for r in a] == [r.tokens for r in b] == [r.tokens for r in f]


def test_converted_dlm_errors(dlm):
    s, _ = make_settings("threshold", {"gen_length": "8", "block_size": "2"}, eos_id=2)
    with pytest.raises(ParadecError, match="block size 4"):
        generate(dlm, _prompts(), s)
    s, _ = make_settings("threshold", {"gen_length": "8", "block_size": "4", "cache": "prefix"}, eos_id=2)
    with pytest.raises(ParadecError, match="cache"):
        generate(dlm, _prompts(), s)


def test_converted_dir_loads_and_generates(converted_dir, capsys):
    base, out = converted_dir
    m = load_diffusion(str(out))
    assert m.spec.attention == "block_causal" and m.spec.mask_id == m.spec.vocab_size - 1
    code, stdout, err = run_cli(["generate", "hello", "--model", str(out), "--method", "threshold", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["stats"]["forwards"] >= 1


def test_converted_model_capabilities_are_named_protocols(dlm):
    from paradec.dllm.protocol import ChatPrompted, Named, Stored

    assert isinstance(dlm, ChatPrompted) and isinstance(dlm, Named) and not isinstance(dlm, Stored)


def test_converted_model_carries_its_tokenizer(dlm):
    from paradec.dllm.protocol import Tokenized

    assert isinstance(dlm, Tokenized)
