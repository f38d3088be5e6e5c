"""Tiny random Llama models and a character tokenizer for fast tests."""

from __future__ import annotations

import string

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from paradec.models.torch.hf import HFCausalLM

CHARS = string.ascii_letters + string.digits + " .,!?'\n:-()<>"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_llama(seed: int = 0, vocab: int = 80, layers: int = 2, std: float = 0.5, max_pos: int = 256) -> LlamaForCausalLM:
    """A tiny random Llama. Large init std gives peaked, repetitive greedy output (so drafters
    get both acceptances and rejections)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_pos,
        initializer_range=std,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to(torch.float64).eval()


def tiny_target(seed: int = 0, **kw) -> HFCausalLM:
    return HFCausalLM(tiny_llama(seed, **kw))


def save_tiny_chat_model(path) -> str:
    """A tiny random Llama with the character tokenizer (and its chat template) saved to ``path``,
    loadable by paradec as a model directory. Returns the path as a string."""
    tok = char_tokenizer()
    tiny_llama(0, vocab=len(tok), max_pos=4096).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def char_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
