import pytest
import torch

from paradec.cache import KVCache


def _fill(cache: KVCache, n: int, start: float = 0.0) -> None:
    # one "layer forward": keys/values whose entries encode their slot number
    for layer_idx in range(len(cache.layers)):
        base = cache.layers[layer_idx].length
        vals = torch.arange(base, base + n, dtype=torch.float32) + start
        k = vals.view(1, 1, n, 1).expand(1, 2, n, 4).contiguous()
        cache.update(k, -k, layer_idx)


def _slots(cache: KVCache, layer: int = 0) -> list[float]:
    lay = cache.layers[layer]
    return lay.keys[0, 0, : lay.length, 0].tolist()


def test_update_appends_and_returns_prefix_views():
    c = KVCache(num_layers=2, capacity=4)
    _fill(c, 3)
    assert c.seq_len == 3 and c.get_seq_length() == 3
    k, v = c.update(torch.full((1, 2, 2, 4), 7.0), torch.full((1, 2, 2, 4), -7.0), 0)
    assert k.shape == (1, 2, 5, 4)  # grew past capacity 4 without losing data
    assert k[0, 0, :, 0].tolist() == [0, 1, 2, 7, 7]
    assert torch.equal(v, -k)


def test_truncate():
    c = KVCache(2, 16)
    _fill(c, 6)
    c.truncate(4)
    assert c.seq_len == 4 and _slots(c) == [0, 1, 2, 3]
    _fill(c, 2, start=100)  # new tokens overwrite the dropped slots
    assert _slots(c) == [0, 1, 2, 3, 104, 105]
    with pytest.raises(ValueError):
        c.truncate(7)


def test_compact_keeps_listed_slots_in_order():
    c = KVCache(2, 16)
    _fill(c, 10)
    c.compact([4, 6, 9], offset=4)
    assert _slots(c) == [0, 1, 2, 3, 4, 6, 9]
    assert _slots(c, 1) == [0, 1, 2, 3, 4, 6, 9]
    assert torch.equal(c.layers[1].values[0, 0, :7, 0], -c.layers[1].keys[0, 0, :7, 0])
    c2 = KVCache(1, 16)
    _fill(c2, 5)
    c2.compact([1, 3])  # no offset: keep only these slots
    assert _slots(c2) == [1, 3]


def test_compact_validates():
    c = KVCache(1, 8)
    _fill(c, 5)
    with pytest.raises(ValueError):
        c.compact([3, 2], offset=2)
    with pytest.raises(ValueError):
        c.compact([1, 5], offset=0)
    with pytest.raises(ValueError):
        c.compact([1], offset=2)


def test_reserve_preallocates():
    c = KVCache(1, 4)
    c.reserve(64)
    _fill(c, 3)
    buf = c.layers[0].keys
    assert buf.shape[2] == 64
    _fill(c, 50)
    assert c.layers[0].keys.data_ptr() == buf.data_ptr()  # no reallocation within capacity


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_plain_step_without_mask_equals_the_masked_forward(attn):
    """A plain decoding step runs with no attention mask (the kernel's unmasked path); it must
    compute what the explicit all-visible mask computes, on an inference-mode forward whose
    cache stays writable by rollback."""
    from helpers.tiny import tiny_llama
    from paradec.models.torch.hf import HFCausalLM

    model = tiny_llama(0)
    model.config._attn_implementation = attn
    target = HFCausalLM(model)
    prompt = torch.tensor([[1, 5, 7, 9, 5, 7, 9, 11, 3, 5]])
    a, b = target.new_cache(32), target.new_cache(32)
    target.prefill(prompt[:, :-1], a)
    target.prefill(prompt[:, :-1], b)
    ids, pos = prompt[:, -1:], torch.tensor([[9]])
    mask = torch.ones(1, 1, 10, dtype=torch.bool)
    build = target._hf_mask
    target._hf_mask = lambda *a: pytest.fail("a plain step built a mask")
    plain = target.forward(ids, pos, a, mask)  # takes the no-mask path
    target._hf_mask = build
    masked = target.model(
        input_ids=ids, position_ids=pos, attention_mask=target._hf_mask(mask, pos, 9), **{target.cache_kw: b}
    ).logits
    torch.testing.assert_close(plain, masked, rtol=0, atol=1e-12)
    assert a.seq_len == b.seq_len == 10
    # one token whose mask hides a slot must not take the no-mask path
    hidden = mask.clone()
    hidden[0, 0, 3] = False
    a.truncate(9)
    b.truncate(9)
    part = target.forward(ids, pos, a, hidden)
    part_ref = target.model(
        input_ids=ids, position_ids=pos, attention_mask=target._hf_mask(hidden, pos, 9), **{target.cache_kw: b}
    ).logits
    torch.testing.assert_close(part, part_ref, rtol=0, atol=1e-12)
    assert (part - plain).abs().max() > 1e-6
    # the forward ran under inference mode, but the cache buffers are normal tensors
    assert plain.is_inference() and not a.layers[0].keys.is_inference()
    a.compact([2, 4, 6], offset=0)
    assert a.seq_len == 3
