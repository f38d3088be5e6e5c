"""``head``: a draft head trained on the target's hidden states. Greedy output identical to
``ar`` with a head trained here on the tiny target's own continuations (so drafts get accepted),
sampling lossless, the verifying forward identical to a plain one, the tree a valid
most-probable-first tree, training that lowers the loss, files that round-trip and refuse
another model, prompts kept apart from the benchmark, and the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers.tiny import tiny_llama
from helpers.lossless import PROMPTS, SV, VOCAB, assert_identical_to_ar, assert_sampling_lossless, run
from helpers.cli import run_cli

from paradec.decode import DecodeConfig, Decoder
from paradec.distill.data import generate_batch
from paradec.errors import ParadecError
from paradec.heads import head_for, load_head, new_head
from paradec.heads.data import Features, features, head_prompts, keep_vocab
from paradec.heads.train import TrainConfig, coverage, evaluate, train
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import ProposeContext
from paradec.proposers.head import HeadConfig, HeadProposer
from paradec.sampling import SamplingParams


def own_continuations(model, n=24, length=48, seed=0) -> list[dict]:
    """Greedy continuations of random token prompts by ``model`` (the head's training data)."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    prompts = [[1] + [rng.randrange(4, vocab) for _ in range(rng.randrange(3, 10))] for _ in range(n)]
    prompts += [list(p) for p in PROMPTS]
    conts = generate_batch(model, prompts, length, set(), 3)
    return [{"prompt_ids": p, "response_ids": c} for p, c in zip(prompts, conts)]


def trained_head(target, steps=400, keep=None):
    rows = own_continuations(target.model)
    vocab_ids = keep_vocab(rows, keep or target.vocab_size)
    data = features(target.model, rows, dtype=torch.float64)
    torch.manual_seed(0)
    head = new_head(target.model, vocab_ids, intermediate=128)
    hist = train(head, data, TrainConfig(steps=steps, batch=128, lr=1e-2, warmup=10, seed=0), log=lambda s: None)
    return head.eval().requires_grad_(False), data, hist


@pytest.fixture(scope="module")
def trained(target):
    return trained_head(target)


GREEDY = {
    "default": HeadConfig(),
    "chain": HeadConfig(width=1, beam=1, depth=5, nodes=5),
    "wide": HeadConfig(width=6, beam=6, depth=3, nodes=30),
    "pruned": HeadConfig(min_prob=0.2),
    "lookup": HeadConfig(lookup=8),
}


@pytest.mark.parametrize("name", list(GREEDY))
def test_greedy_identical_to_ar(name, target, trained, reference):
    head = trained[0]
    assert assert_identical_to_ar(target, reference, lambda: HeadProposer(head, GREEDY[name]), f"head {name}") > 0


def test_training_lowers_the_loss_and_heads_learn(trained, target):
    head, data, hist = trained
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    q = evaluate(head, data, depth=3)
    assert q["windows"] > 0 and q["top1_by_depth"][0] > 0.25
    assert 1.0 < q["chain_accepted_per_forward"] <= 4.0
    # an untrained head of the same shape agrees far less
    fresh = new_head(target.model, head.vocab_ids, intermediate=128).eval()
    assert evaluate(fresh, data, depth=3)["top1_by_depth"][0] < q["top1_by_depth"][0]


def test_trimmed_vocabulary_only_drafts_kept_tokens(target, reference):
    head, data, _ = trained_head(target, steps=60, keep=12)
    kept = set(head.vocab_ids.tolist())
    assert len(kept) == 12 and 0 < coverage(head.vocab_ids, data) < 1
    for p in PROMPTS[:3]:
        prop = HeadProposer(head, HeadConfig(lookup=0))  # the lookup branch may add any token
        dec = Decoder(target, prop, p, DecodeConfig(max_new_tokens=30))
        while (step := dec.prepare()) is not None:
            assert set(dec._draft.tokens) <= kept
            dec.commit(dec.forward(step))
        assert dec.tokens[len(p):] == reference[tuple(p)][:30]


def test_tree_is_most_probable_first(target, trained):
    head = trained[0]
    prop = HeadProposer(head, HeadConfig(depth=4, width=3, beam=2, nodes=9))
    prop._feature = torch.randn(head.spec.hidden, dtype=torch.float64)
    ctx = ProposeContext([1, 5, 7], 2, 64, 64, SamplingParams())
    tree = prop.propose(ctx)
    assert 0 < len(tree) <= 9 and tree.depth <= 4
    # path probabilities recomputed from the head: every node no more probable than its parent,
    # and the root's first child is the head's most probable token
    with torch.no_grad():
        g = head.step(prop._feature[None], torch.tensor([7]))
        first = int(head.vocab_ids[head.logits(g).argmax(-1)])
    assert tree.tokens[tree.children()[0][0]] == first
    chain = HeadProposer(head, HeadConfig(depth=5, width=1, beam=1, nodes=5))
    chain._feature = prop._feature
    c = chain.propose(ctx)
    assert c.is_chain and len(c) == 5 and c.tokens[0] == first
    # limits from the loop win over the config
    small = prop.propose(ProposeContext([1, 5, 7], 2, 3, 2, SamplingParams()))
    assert len(small) <= 3 and small.depth <= 2
    # no feature yet (a request's first step): no draft
    assert len(HeadProposer(head).propose(ctx)) == 0


def test_lookup_branch_joins_the_tree(trained):
    from paradec.proposers.base import StepResult
    from paradec.verify import Verdict

    head = trained[0]
    prop = HeadProposer(head, HeadConfig(lookup=6, nodes=5))
    prompt = [1, 20, 21, 22, 23, 24, 25, 26, 9, 20, 21]
    prop.begin(prompt, SamplingParams())
    ctx = ProposeContext(prompt, len(prompt), 64, 64, SamplingParams())
    chain = prop.lookup.propose(ctx).first_path(6)
    assert chain[:3] == [22, 23, 24]  # what followed "20 21" before
    assert prop.propose(ctx).first_path() == chain  # no feature yet: the lookup alone
    prop._feature = torch.randn(head.spec.hidden, dtype=torch.float64)
    tree = prop.propose(ctx)
    assert tree.match_length(chain) == len(chain) and len(tree) <= 5 + len(chain)
    head_only = HeadProposer(head, HeadConfig(nodes=5))
    head_only._feature = prop._feature
    assert all(tree.match_length(p) == len(p) for p in ([head_only.propose(ctx).tokens[i] for i in path]
                                                          for path in head_only.propose(ctx).paths()))
    prop.observe(StepResult(tree, Verdict((), (), 7, False), prompt + [7]))  # the lookup follows the text
    assert prop._feature is None  # no forward ran through the proposer: nothing to draft from


def test_verifying_forward_is_a_plain_forward(target, trained):
    from paradec.tree import DraftTree, attention_mask

    head = trained[0]
    prompt = PROMPTS[0]
    draft = DraftTree((5, 7, 9, 11), (-1, 0, -1, 2))
    out = []
    for fused in (False, True):
        cache = target.new_cache(64)
        target.prefill(torch.tensor([prompt[:-1]]), cache)
        base = cache.seq_len
        ids = torch.tensor([draft.input_ids(prompt[-1])])
        pos = torch.tensor([[base + o for o in draft.position_offsets()]])
        mask = attention_mask(draft, base)[None]
        if fused:
            from paradec.decode import ForwardInput

            prop = HeadProposer(head)
            logits = prop.fused_forward(target, ForwardInput(ids, pos, mask, cache, fused=True))
            assert prop._hidden.shape == (5, head.spec.hidden)
            with torch.no_grad():  # the kept hidden states are the LM head's input
                assert torch.allclose(target.model.lm_head(prop._hidden), logits)
        else:
            logits = target.forward(ids, pos, cache, mask)[0]
        out.append((logits, [layer.keys[..., : cache.seq_len, :].clone() for layer in cache.layers]))
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1]))


SAMPLING = {
    "t1": SamplingParams(temperature=1.0),
    "t0.7-topk": SamplingParams(temperature=0.7, top_k=4),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_sampling_is_lossless(case, s_target):
    torch.manual_seed(1)
    head = new_head(s_target.model, torch.arange(SV), intermediate=16).eval().requires_grad_(False)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)  # a confident random head: some drafts accepted, some rejected
    assert_sampling_lossless(s_target, lambda: HeadProposer(head, HeadConfig(depth=2, width=2, beam=2, nodes=4)), SAMPLING[case])


def test_files_round_trip_and_refuse_another_model(tmp_path, target, trained):
    head = trained[0]
    head.save(tmp_path / "h")
    loaded = load_head(tmp_path / "h", target.model)
    assert torch.equal(loaded.vocab_ids, head.vocab_ids)
    f, t = torch.randn(3, head.spec.hidden, dtype=torch.float64), torch.tensor([5, 6, 7])
    with torch.no_grad():  # stored in bfloat16: the loaded head is the trained one rounded
        ref = new_head(target.model, head.vocab_ids, intermediate=128)
        ref.load_state_dict({k: v.to(torch.bfloat16).to(v.dtype) for k, v in head.state_dict().items()})
        assert torch.allclose(loaded.step(f, t), ref.step(f, t))
    assert head_for(target.model, str(tmp_path / "h")).spec == loaded.spec
    other = tiny_llama(0, vocab=VOCAB + 8)
    with pytest.raises(ParadecError, match="another base model"):
        load_head(tmp_path / "h", other)
    with pytest.raises(ParadecError, match="no trained head for this model"):
        head_for(target.model, "auto")
    with pytest.raises(ParadecError, match="unknown head"):
        head_for(target.model, str(tmp_path / "missing"))


def test_make_proposer(tmp_path, target, trained, reference):
    trained[0].save(tmp_path / "h")
    models = Models(target)
    prop = make_proposer("head", models, {"head": str(tmp_path / "h"), "nodes": 8})
    assert isinstance(prop, HeadProposer) and prop.config.nodes == 8
    out, stats = run(target, prop, PROMPTS[1])
    assert out == reference[tuple(PROMPTS[1])] and stats.accepted > 0
    assert make_proposer("head", models, {"head": str(tmp_path / "h")}).head is prop.head  # loaded once
    with pytest.raises(ParadecError, match="width"):
        make_proposer("head", models, {"head": str(tmp_path / "h"), "width": 0})


def test_features_rows_match_single_forwards(target):
    rows = own_continuations(target.model, n=5, length=12, seed=3)
    data = features(target.model, rows, batch=4, dtype=torch.float64)
    assert len(data) == sum(len(r["response_ids"]) + 1 for r in rows)
    one = data.select(slice(2, 3))
    r = rows[2]
    seq = r["prompt_ids"] + r["response_ids"]
    assert one.tokens.tolist() == seq[len(r["prompt_ids"]) - 1 :]
    assert one.left.tolist() == list(range(len(one) - 1, -1, -1))
    with torch.no_grad():
        ref = target.model(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]
    assert torch.allclose(one.feats, ref[len(r["prompt_ids"]) - 1 :], atol=1e-9)
    assert len(data.select(slice(0, 0))) == 0 and isinstance(data.select(slice(0, 2)), Features)


def test_head_prompts_are_deterministic_and_not_benchmark_prompts():
    from paradec.suites import OWN_SUITES, load_suite, missing_package

    a, b = head_prompts(60, seed=1), head_prompts(60, seed=1)
    assert [p.text for p in a] == [p.text for p in b] and len(a) == 60
    assert [p.text for p in head_prompts(60, seed=2)] != [p.text for p in a]
    kinds = {p.source for p in head_prompts(300)}
    assert kinds == {"head/code", "head/doc", "head/translate", "head/math", "head/writing"}
    texts = [p.text for p in head_prompts(300)]
    for suite in ("mt_bench", "humaneval") + OWN_SUITES:
        if missing_package(suite):
            continue
        for item in load_suite(suite):
            for turn in item.turns:
                probe = turn.strip()[:80]
                assert not any(probe in t for t in texts), f"a {suite} prompt is in the head's training prompts"


def test_cli_train_tiny(tmp_path, tiny_model_dir, capsys):
    out, gen = tmp_path / "head", tmp_path / "gen"
    code, o, e = run_cli(["head", "train", "--base", tiny_model_dir, "--out", str(gen), "--prompts", "6", "--max-new", "12",
                          "--data-only", "--dtype", "float64"], capsys)
    assert code == 0, o + e
    assert (gen / "data.jsonl").is_file() and not (gen / "head.safetensors").exists()
    code, o, e = run_cli(["head", "train", "--base", tiny_model_dir, "--out", str(out), "--prompts", "6", "--max-new", "12",
                          "--keep", "30", "--intermediate", "16", "--steps", "3", "--batch", "16", "--max-len", "96",
                          "--holdout", "0.34", "--dtype", "float64"], capsys)
    assert code == 0, o + e
    code, o, e = run_cli(["head", "train", "--base", tiny_model_dir, "--out", str(tmp_path / "both"), "--steps", "2",
                          "--batch", "8", "--keep", "30", "--intermediate", "16", "--dtype", "float64",
                          "--data", f"{gen / 'data.jsonl'},{out / 'data.jsonl'}"], capsys)
    assert code == 0, o + e
    both = json.loads((tmp_path / "both" / "config.json").read_text())["paradec_head"]["trained"]["data"]
    assert both["continuations"] == 12 and both["files"] == ["data.jsonl", "data.jsonl"]
    cfg = json.loads((out / "config.json").read_text())["paradec_head"]
    q = cfg["trained"]["quality"]
    assert "paradec head train" in cfg["trained"]["command"] and 0 < q["train_coverage"] <= 1
    assert (out / "head.safetensors").is_file() and (out / "data.jsonl").is_file()
    code, o, e = run_cli(["generate", "hello", "--model", tiny_model_dir, "--dtype", "float64", "--method", "head",
                          "--opt", f"head={out}", "-n", "8"], capsys)
    assert code == 0, o + e
    code, o, e = run_cli(["head", "train", "--base", tiny_model_dir, "--out", str(tmp_path / "x"), "--prompts", "0"], capsys)
    assert code == 2 and "--prompts must be >= 1" in e and len(e.strip().splitlines()) == 1
    code, o, e = run_cli(["head", "train", "--base", tiny_model_dir, "--out", str(tmp_path / "x"),
                          "--data", str(tmp_path / "none.jsonl")], capsys)
    assert code == 2 and "no file" in e


def test_training_stops_at_its_time_budget(target):
    rows = own_continuations(target.model, n=4, length=16)
    data = features(target.model, rows, dtype=torch.float64)
    head = new_head(target.model, keep_vocab(rows, VOCAB), intermediate=16)
    logs: list[str] = []
    hist = train(head, data, TrainConfig(steps=10**6, batch=8, minutes=0.01), log=logs.append)
    assert any("time budget" in s for s in logs) and hist[-1]["step"] < 10**6 - 1


@pytest.mark.parametrize("lookup", [0, 8])  # auto's default takes the head with its lookup branch
def test_auto_with_the_head_identical_to_ar_and_head_never_behind(lookup, target, trained, reference):
    from paradec.proposers.auto import AutoConfig, AutoDrafter

    made = []

    def make():
        made.append(AutoDrafter(HeadProposer(trained[0], HeadConfig(lookup=lookup)), AutoConfig(model="head", explore_every=4)))
        return made[-1]

    assert assert_identical_to_ar(target, reference, make, "auto model=head") > 0
    assert sum(a.choices["model"] for a in made) > 0 and sum(a.choices["lookup"] + a.choices["none"] for a in made) > 0
    # the head reads every forward, whoever drafted: its feature is always the latest one
    auto = make()
    dec = Decoder(target, auto, PROMPTS[0], DecodeConfig(max_new_tokens=20))
    while (step := dec.prepare()) is not None:
        assert step.fused
        dec.commit(dec.forward(step))
        assert auto.model._feature is not None
    assert auto.catch_up_time(10**6) == 0.0 or auto.catchup.value is None
    models = Models(target)
    with pytest.raises(ParadecError, match="no trained head"):
        make_proposer("auto", models, {"model": "head"})


def test_auto_with_the_head_sampling_is_lossless(s_target):
    from paradec.proposers.auto import AutoConfig, AutoDrafter

    torch.manual_seed(1)
    head = new_head(s_target.model, torch.arange(SV), intermediate=16).eval().requires_grad_(False)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)
    make = lambda: AutoDrafter(HeadProposer(head, HeadConfig(depth=2, width=2, beam=2, nodes=4, lookup=0)),  # noqa: E731
                               AutoConfig(model="head", explore_every=1))
    assert_sampling_lossless(s_target, make, SamplingParams(temperature=1.0))
