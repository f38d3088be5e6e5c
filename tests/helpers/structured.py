"""Tiny settings for the structured-output tests: a byte-level BPE tokenizer over a small
hand-made vocabulary (JSON punctuation, digits, letters, a few merges), tiny random targets of
that vocabulary, constraints, and the exactly enumerated constrained distribution."""

from __future__ import annotations

import string

import torch
from transformers import PreTrainedTokenizerFast

from paradec.decode import DecodeConfig, decode
from paradec.sampling import SamplingParams, target_probs
from paradec.stats import DecodeStats
from paradec.structured import compile_constraint, masks

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
EOS = 2
# byte-level characters: "Ġ" is the space
CHARS = list('{}[]":,-.') + ["Ġ"] + list(string.digits) + list(string.ascii_lowercase)
MERGES = [("{", '"'), ('"', ":"), (",", "Ġ"), (":", "Ġ"), ('"', ","), ("Ġ", '"'), ('"', "}"), ("a", "b"),
          ("n", "a"), ("m", "e"), ("na", "me"), ("i", "d"), ("t", "r"), ("tr", "u"), ("tru", "e")]
VOCAB = 72  # model rows (more than the tokenizer's tokens, as real models pad)


def json_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS + ["".join(m) for m in MERGES])}
    tok = Tokenizer(models.BPE(vocab, MERGES, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


TOKENIZER = json_tokenizer()

SCHEMAS = {
    "record": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
               "name": {"enum": ["ab", "cd", "name"]}, "ok": {"type": "boolean"}},
               "required": ["id", "name", "ok"], "additionalProperties": False},
    "list": {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "ab"]}, "maxItems": 4}},
             "required": ["tags"], "additionalProperties": False},
    "string": {"type": "object", "properties": {"s": {"type": "string", "maxLength": 5, "pattern": "^[a-e]+$"}},
               "required": ["s"], "additionalProperties": False},
}
FORMATS = {
    **{f"schema-{k}": v for k, v in SCHEMAS.items()},
    "json-object": {"type": "json_object"},
    "regex": {"type": "regex", "regex": "[ab]{2,6}-[0-9]{1,3}"},
    "grammar": {"type": "grammar", "grammar": 'start: item ("," item)*\nitem: "true" | "id" | NUM\nNUM: /[0-9]{1,2}/'},
}
PROMPTS = [[1, 30, 31, 32, 5, 6, 30, 31], [1, 8, 9, 8, 9, 8], [1, 40, 41, 42, 43, 40, 41, 42]]


def constraint(fmt, vocab: int = VOCAB):
    return compile_constraint(fmt, TOKENIZER, vocab)


def run(target, proposer, prompt, c, n=40, sampling=SamplingParams()):
    stats = DecodeStats()
    cfg = DecodeConfig(max_new_tokens=n, sampling=sampling, eos_ids=frozenset({EOS}), constraint=c)
    out = [t for toks in decode(target, proposer, prompt, cfg, stats) for t in toks]
    return out, stats


# ---- sampling: a grammar over a few tokens, every continuation enumerated exactly -------------
S_FORMAT = {"type": "regex", "regex": "(a|b|c)(a|b|ab)*c?"}
S_PROMPT = [1, 24, 25, 26, 24, 25, 26, 24]  # "abcabca": lookups find allowed continuations
S_LEN = 3


def exact_constrained(target, c, sampling, prompt=S_PROMPT, length=S_LEN):
    """P(output) for every output the loop can give (up to ``length`` tokens; an EOS ends it and
    is part of it; a complete match ends it), by enumeration of the constrained target: the
    target's distribution restricted to the grammar's tokens, renormalized."""
    out: dict[tuple[int, ...], float] = {}

    def walk(seq: list[int], pr: float) -> None:
        m = c.matcher()
        assert m.consume_tokens(seq) if seq else True
        if len(seq) == length or (seq and seq[-1] == EOS) or (m.is_stopped() and m.is_accepting()):
            out[tuple(seq)] = out.get(tuple(seq), 0.0) + pr
            return
        rows = masks.new_rows(1, target.vocab_size)
        masks.fill(m, rows, 0)
        allow = masks.unpack(rows, target.vocab_size)[0]
        with torch.no_grad():
            logits = target.model(torch.tensor([prompt + seq])).logits[0, -1]
        p = target_probs(logits.masked_fill(~allow, float("-inf")), sampling)
        for t in allow.nonzero().flatten().tolist():
            if float(p[t]) > 0:
                walk(seq + [t], pr * float(p[t]))

    walk([], 1.0)
    return out


def sample_outputs(target, make, c, sampling, trials, seed=0):
    outs, drafted, accepted, pruned = [], 0, 0, 0
    for i in range(trials):
        sp = SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p, seed=seed * 100000 + i)
        toks, st = run(target, make(), S_PROMPT, c, n=S_LEN, sampling=sp)
        outs.append(tuple(toks))
        drafted += st.drafted - st.forced_tokens - st.likely_tokens  # the drafter's own nodes
        accepted += st.accepted - st.forced_accepted - st.likely_accepted
        pruned += st.pruned_nodes
    return outs, drafted, accepted, pruned


def pvalue(samples, exact) -> float:
    """Chi-square p-value; 0 when an output of probability 0 was sampled."""
    from helpers.stats import chi2_pvalue

    if any(exact.get(s, 0.0) <= 0 for s in samples):
        return 0.0
    return chi2_pvalue(samples, exact)


