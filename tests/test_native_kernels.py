"""Native quantized matmul kernels: exact repacking, accuracy against a float64 reference of the
dequantized product, batch invariance bit for bit, path agreement, and the build's failure path."""

from __future__ import annotations

import dataclasses
import os
import numpy as np
import pytest
import torch

from paradec.errors import ParadecError
from paradec.models.native import build, kernels, quants

QTYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
ROWS = [1, 2, 3, 5, 8, 16, 33, 64]
N = 40  # not a multiple of the 16-column thread split

needs_native = pytest.mark.skipif(not kernels.available(), reason=f"native kernels unavailable: {kernels.unavailable_reason()}")


def _k(qtype: str) -> int:
    # 32-block types: 19 blocks (odd, so the kernels' zero padding to 64 is exercised)
    return 768 if quants.FORMATS[qtype].block == 256 else 608


def _path(name: str) -> str:
    if name not in kernels.paths():
        pytest.skip(f"this CPU has no {name} path (it runs {', '.join(kernels.paths()) or 'none'})")
    return name


@pytest.fixture(scope="module")
def weights() -> dict[str, tuple[bytes, kernels.QuantWeight]]:
    rng = np.random.default_rng(0)
    out = {}
    for t in QTYPES:
        w = (rng.standard_normal((N, _k(t))) * rng.uniform(0.2, 3.0, size=(N, 1))).astype(np.float32)
        raw = quants.quantize(w, t)
        out[t] = (raw, kernels.QuantWeight.from_gguf(raw, t, (N, _k(t))))
    return out


def _x(m: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4
    x[:, 5] = 0.0  # a zero inside a block
    if m > 1:
        x[1, :32] = 0.0  # an all-zero block (scale 0)
    return x


# ------------------------------------------------------------------ formats and repacking


@pytest.mark.parametrize("qtype", QTYPES + ["F32", "F16"])
def test_dequantize_is_exact(qtype):
    rng = np.random.default_rng(1)
    k = _k(qtype) if qtype in QTYPES else 64
    w = rng.standard_normal((6, k)).astype(np.float32)
    raw = quants.quantize(w, qtype)
    d64 = quants.dequantize(raw, qtype, 6, k)
    d32 = quants.dequantize(raw, qtype, 6, k, np.float32)
    # float32 as the gguf package (and ggml) rounds it; float64 exact
    assert np.array_equal(d32, quants.dequantize_gguf(raw, qtype, 6, k))
    assert np.array_equal(d64.astype(np.float32), d32) or qtype == "Q6_K"
    # the test quantizers give sane encodings (relative to the row's scale)
    err = np.abs(d64 - w).max(axis=1) / np.abs(w).max(axis=1)
    assert err.max() < {4: 0.2, 5: 0.1, 6: 0.05, 8: 0.01, 16: 1e-3, 32: 0}[quants.FORMATS[qtype].bits] + 1e-12
    if qtype in QTYPES:
        qw = kernels.QuantWeight.from_gguf(raw, qtype, (6, k))
        assert np.array_equal(qw.dequantize(), d32)  # the repacked layout changes no value
        assert np.array_equal(qw.dequantize(np.float64), d64)


def test_bad_bytes_and_types():
    raw = quants.quantize(np.ones((4, 64), np.float32), "Q4_1")
    with pytest.raises(ParadecError, match="truncated"):
        kernels.QuantWeight.from_gguf(raw[:-1], "Q4_1", (4, 64))
    with pytest.raises(ParadecError, match="unsupported GGUF tensor type Q5_0"):
        kernels.QuantWeight.from_gguf(raw, "Q5_0", (4, 64))
    with pytest.raises(ParadecError, match="multiple of its block size 256"):
        quants.unpack(raw, "Q4_K", 1, 160)
    with pytest.raises(ParadecError, match="no quantized kernel"):
        kernels.QuantWeight.from_gguf(np.ones((4, 64), np.float32).tobytes(), "F32", (4, 64))


# ------------------------------------------------------------------ accuracy


def _bound(x: np.ndarray, w64: np.ndarray) -> np.ndarray:
    """|qmatmul - x @ W^T| <= sum over 32-blocks of (d_b / 2) * sum|W| (activation rounding,
    d_b = max|x_b| / 127) + 1e-5 * |x| @ |W|^T (float32 arithmetic)."""
    m, k = x.shape
    kb = -(-k // 32) * 32
    xp = np.zeros((m, kb))
    xp[:, :k] = x
    wp = np.zeros((w64.shape[0], kb))
    wp[:, :k] = np.abs(w64)
    d = np.abs(xp).reshape(m, -1, 32).max(axis=2) / 127  # [M, blocks]
    wsum = wp.reshape(wp.shape[0], -1, 32).sum(axis=2)  # [N, blocks]
    return (d / 2) @ wsum.T + 1e-5 * (np.abs(x) @ np.abs(w64).T)


@needs_native
@pytest.mark.parametrize("path", list(kernels.PATH_BITS))
@pytest.mark.parametrize("qtype", QTYPES)
def test_close_to_float64_reference(weights, qtype, path):
    path = _path(path)
    raw, qw = weights[qtype]
    w64 = quants.dequantize(raw, qtype, N, qw.k)
    for m in ROWS:
        x = _x(m, qw.k, seed=m)
        y = kernels.qmatmul(x, qw, path=path).numpy().astype(np.float64)
        ref = x.double().numpy() @ w64.T
        bound = _bound(x.double().numpy(), w64)
        assert np.all(np.abs(y - ref) <= bound), (qtype, path, m, np.abs(y - ref).max(), bound.min())
        # and typically far inside it: the rms error is under 1% of the product's rms
        assert np.sqrt(np.mean((y - ref) ** 2)) < 0.01 * np.sqrt(np.mean(ref**2))


# ------------------------------------------------------------------ batch invariance


@needs_native
@pytest.mark.parametrize("path", list(kernels.PATH_BITS))
@pytest.mark.parametrize("qtype", QTYPES)
def test_batch_invariance_bit_for_bit(weights, qtype, path):
    path = _path(path)
    _, qw = weights[qtype]
    pool = _x(64, qw.k, seed=7)
    before = kernels.threads()
    try:
        alone = {}
        for nth in (1, 2):
            kernels.set_threads(nth)
            alone[nth] = torch.cat([kernels.qmatmul(pool[i : i + 1], qw, path=path) for i in range(64)])
        assert torch.equal(alone[1], alone[2])  # the thread count changes nothing
        rng = np.random.default_rng(3)
        for nth in (1, 2):
            kernels.set_threads(nth)
            for k in range(2, 65):
                idx = torch.from_numpy(rng.permutation(64)[:k])  # random rows, each at some place
                y = kernels.qmatmul(pool[idx].contiguous(), qw, path=path)
                assert torch.equal(y, alone[1][idx]), (qtype, path, nth, k)
            # every row at every place: row i at position j among the first rows of the pool
            for j in range(64):
                order = torch.roll(torch.arange(64), j)
                assert torch.equal(kernels.qmatmul(pool[order].contiguous(), qw, path=path), alone[1][order])
    finally:
        kernels.set_threads(before)


@needs_native
@pytest.mark.parametrize("qtype", QTYPES)
def test_avx2_and_best_path_are_bit_identical(weights, qtype):
    """The paths share one arithmetic (csrc/qgemm.h), so they agree bit for bit: at every row
    count of the wide paths' row tiles (1..8 rows, one unrolled instantiation each) and past them."""
    wide = [p for p in kernels.paths() if p != "avx2"]
    if not wide:
        pytest.skip("this CPU runs only the avx2 path")
    _, qw = weights[qtype]
    for m in list(range(1, 10)) + [15, 33]:
        x = _x(m, qw.k, seed=11 + m)
        for path in wide:
            assert torch.equal(kernels.qmatmul(x, qw, path="avx2"), kernels.qmatmul(x, qw, path=path)), (qtype, path, m)


@needs_native
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_wide_products_split_in_runs_of_tiles_are_the_same_bits(qtype):
    """A product's column tiles go to the threads in runs of several (14 tiles here: runs of 7,
    4 or 3 tiles for 1, 2 or 3 threads, the last run short); every thread count and the
    one-row-at-a-time product give the same bits, and they are the float64 reference's values
    within its bound."""
    n, k = 16 * 13 + 5, 608
    rng = np.random.default_rng(5)
    w = rng.standard_normal((n, k)).astype(np.float32)
    raw = quants.quantize(w, qtype)
    qw = kernels.QuantWeight.from_gguf(raw, qtype, (n, k))
    x = _x(9, k, seed=9)
    before = kernels.threads()
    try:
        outs = []
        for nth in (1, 2, 3):
            kernels.set_threads(nth)
            outs.append(kernels.qmatmul(x, qw))
            outs.append(torch.cat([kernels.qmatmul(x[i : i + 1], qw) for i in range(9)]))
    finally:
        kernels.set_threads(before)
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    ref = x.double().numpy() @ quants.dequantize(raw, qtype, n, k).T
    assert np.all(np.abs(outs[0].numpy() - ref) <= _bound(x.double().numpy(), quants.dequantize(raw, qtype, n, k)))


@needs_native
@pytest.mark.parametrize("qtype", QTYPES)
def test_amx_tiles_at_every_row_count_match_avx2(weights, qtype):
    """The AMX kernels run their float steps over 4, 8 or 16 rows of a tile (whichever covers
    the rows): forced onto tiles from one row on, every row count 1..20 gives the avx2 path's
    bits."""
    _path("amx")
    _, qw = weights[qtype]
    before = kernels.set_amx_min_rows(1)
    try:
        for m in range(1, 21):
            x = _x(m, qw.k, seed=20 + m)
            assert torch.equal(kernels.qmatmul(x, qw, path="amx"), kernels.qmatmul(x, qw, path="avx2")), (qtype, m)
    finally:
        kernels.set_amx_min_rows(before)


@needs_native
def _quantize_reference(x: np.ndarray, kp: int):
    """csrc/qgemm.h's activation quantization in numpy float32: per 32-block d = max|x| / 127,
    q = round-half-even(x * (1 / d)) clamped to -127..127, s = d * sum(q), and each 16-group's sum."""
    m, k = x.shape
    xp = np.zeros((m, kp), np.float32)
    xp[:, :k] = x
    blocks = xp.reshape(m, kp // 32, 32)
    d = np.abs(blocks).max(-1) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(blocks * inv[..., None]), -127, 127).astype(np.int8)
    x16 = q.reshape(m, kp // 32, 2, 16).astype(np.int32).sum(-1)
    s = (d * x16.sum(-1).astype(np.float32)).astype(np.float32)
    return q.reshape(m, kp), d.astype(np.float32), s, x16.reshape(m, -1)


@needs_native
@pytest.mark.parametrize("k", [5, 32, 77, 576, 1536])
def test_activation_quantizer_matches_reference(k):
    """The activations' int8 blocks, scales, offsets' sums and 16-group sums equal a numpy
    reference exactly, whole blocks and a row's last partial block alike (row stride > k)."""
    import ctypes

    lib = build.load()
    f = lib.pd_quantize_rows
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 4
    m, kp = 6, (k + 31) // 32 * 32
    x = _x(m, k + 3, seed=k).numpy()  # 3 more columns: the stride, never read
    x[2, :] *= 1e-30  # tiny scales
    x[3, : min(k, 40)] = 0.0
    q = np.full((m, kp), 99, np.int8)
    d, s = np.full((m, kp // 32), -1, np.float32), np.full((m, kp // 32), -1, np.float32)
    x16 = np.full((m, 2 * (kp // 32)), -1, np.int32)
    f(x.ctypes.data, m, k, k + 3, kp, q.ctypes.data, d.ctypes.data, s.ctypes.data, x16.ctypes.data)
    rq, rd, rs, r16 = _quantize_reference(np.ascontiguousarray(x[:, :k]), kp)
    assert np.array_equal(q, rq)
    assert np.array_equal(d.view(np.int32), rd.view(np.int32))
    assert np.array_equal(s.view(np.int32), rs.view(np.int32))
    assert np.array_equal(x16, r16)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q4_0"])
def test_float16_and_float32_scales_agree(weights, qtype):
    """Scales stored as float16 where exact (fewer bytes) give the very same results as float32."""
    _, qw = weights[qtype]
    assert qw.a.dtype == np.float16
    wide = dataclasses.replace(qw, a=qw.a.astype(np.float32), off=None if qw.off is None else qw.off.astype(np.float32))
    x = _x(9, qw.k, seed=5)
    for path in kernels.paths():
        assert torch.equal(kernels.qmatmul(x, qw, path=path), kernels.qmatmul(x, wide, path=path))


@needs_native
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q6_K"])
@pytest.mark.parametrize("n", [1, 5, 17, 33])
def test_small_and_ragged_shapes(qtype, n):
    """Fewer columns than a tile, a tile and a bit, a single block: right values, same bits on every path."""
    k = 256 if quants.FORMATS[qtype].block == 256 else 32
    rng = np.random.default_rng(n)
    raw = quants.quantize(rng.standard_normal((n, k)).astype(np.float32), qtype)
    qw = kernels.QuantWeight.from_gguf(raw, qtype, (n, k))
    w64 = quants.dequantize(raw, qtype, n, k)
    x = _x(9, k, seed=n)
    ys = [kernels.qmatmul(x, qw, path=p) for p in kernels.paths()]
    assert all(torch.equal(ys[0], y) for y in ys)
    assert np.all(np.abs(ys[0].numpy() - x.double().numpy() @ w64.T) <= _bound(x.double().numpy(), w64))
    assert torch.equal(kernels.qmatmul(x[4:5].contiguous(), qw), ys[0][4:5])


@needs_native
def test_output_row_stride_leaves_other_columns_alone(weights):
    """The C entry point writes y with a row stride (into a slice of a wider buffer) and touches
    only the weight's N columns of each row."""
    _, qw = weights["Q4_1"]
    lib = kernels.library()
    x = _x(6, qw.k, seed=4)
    for path in kernels.paths():
        wide = torch.full((6, N + 13), -7.0)
        rc = lib.pd_qgemm_desc(kernels.PATH_BITS[path], qw._desc[1], x.data_ptr(), 6, qw.k, wide.data_ptr() + 4 * 3, N + 13)
        assert rc == 0
        assert torch.equal(wide[:, 3 : 3 + N], kernels.qmatmul(x, qw, path=path))
        assert torch.all(wide[:, :3] == -7.0) and torch.all(wide[:, 3 + N :] == -7.0)


@needs_native
def test_out_argument_and_strided_input(weights):
    _, qw = weights["Q4_1"]
    x = _x(5, qw.k, seed=2)
    out = torch.full((5, N), float("nan"))
    assert kernels.qmatmul(x, qw, out=out) is out
    wide = torch.zeros(5, qw.k + 8)
    wide[:, : qw.k] = x  # rows with a stride longer than K
    assert torch.equal(kernels.qmatmul(wide[:, : qw.k], qw), out)
    assert kernels.qmatmul(torch.zeros(0, qw.k), qw).shape == (0, N)
    with pytest.raises(ParadecError, match="columns"):
        kernels.qmatmul(torch.zeros(2, qw.k + 1), qw)
    with pytest.raises(ParadecError, match="float32"):
        kernels.qmatmul(x.double(), qw)
    with pytest.raises(ParadecError, match="out must be"):
        kernels.qmatmul(x, qw, out=torch.empty(4, N))


@needs_native
def test_path_override(monkeypatch):
    monkeypatch.setenv("PARADEC_NATIVE_PATH", "avx2")
    assert kernels.best_path() == "avx2"
    monkeypatch.setenv("PARADEC_NATIVE_PATH", "sse9")
    with pytest.raises(ParadecError, match="unknown native kernel path 'sse9'"):
        kernels.best_path()
    missing = [p for p in kernels.PATH_BITS if p not in kernels.paths()]
    if missing:
        monkeypatch.setenv("PARADEC_NATIVE_PATH", missing[0])
        with pytest.raises(ParadecError, match="not supported by this CPU"):
            kernels.best_path()


# ------------------------------------------------------------------ build failure


@pytest.fixture
def fresh_load():
    """Forget the loaded library before and after (the next use loads the real one again)."""
    for cached in (build._load, kernels._state, kernels._default_code):
        cached.cache_clear()
    yield
    for cached in (build._load, kernels._state, kernels._default_code):
        cached.cache_clear()


@pytest.mark.parametrize("cc,reason", [("no-such-compiler-xyz", "need a C compiler"), ("false", "failed")])
def test_build_failure_leaves_kernels_unavailable(tmp_path, monkeypatch, capsys, fresh_load, cc, reason):
    monkeypatch.setenv("PARADEC_NATIVE_CC", cc)
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path))
    assert kernels.available() is False
    why = kernels.unavailable_reason()
    assert reason in why and "\n" not in why
    assert kernels.paths() == []
    with pytest.raises(ParadecError, match=reason):
        kernels.qmatmul(torch.zeros(1, 64), None)
    assert not list(tmp_path.rglob("*.so"))  # nothing half-built is cached
    assert build.main() == 1
    out = capsys.readouterr().out
    assert reason in out and len(out.strip().splitlines()) == 1


def test_cpu_without_avx2_is_unavailable(monkeypatch, fresh_load):
    class NoAvx2:  # a library whose CPU check finds no AVX2
        def __init__(self):
            for name in ("pd_paths", "pd_get_threads", "pd_set_threads", "pd_qgemm_desc", "pd_get_amx_min_rows",
                         "pd_set_amx_min_rows"):
                setattr(self, name, type("F", (), {"__call__": lambda self, *a: 0})())

    monkeypatch.setattr(build, "load", lambda: NoAvx2())
    assert not kernels.available() and "AVX2" in kernels.unavailable_reason()
    assert kernels.paths() == []
    with pytest.raises(ParadecError, match="AVX2"):
        kernels.best_path()


@needs_native
def test_pool_survives_fork(weights):
    """A forked child (servers, process pools) gets a fresh pool and the same results."""
    _, qw = weights["Q8_0"]
    x = _x(5, qw.k, seed=9)
    want = kernels.qmatmul(x, qw)
    pid = os.fork()
    if pid == 0:  # child: exit status 0 only when the result is the same
        try:
            kernels.set_threads(2)
            os._exit(0 if torch.equal(kernels.qmatmul(x, qw), want) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@needs_native
def test_build_is_cached_by_source_hash(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path))
    path, msg = build.build()
    assert path is not None and path.parent == tmp_path / "native" and "built" in msg
    assert build.build() == (path, f"native kernels: {path} (cached)")
    assert [p.name for p in (tmp_path / "native").iterdir()] == [path.name]  # no temp file left


# ------------------------------------------------------------------ the default model's own weights


@pytest.mark.slow
@needs_native
def test_default_model_weights():
    """The packaged SmolLM2 GGUF: its Q4_1 and Q8_0 matrices repack exactly, and the kernels
    stay within the bound and batch invariant on them."""
    from gguf import GGUFReader

    from paradec.models.native.kernel_bench import gguf_path

    reader = GGUFReader(gguf_path(None))
    picked = [t for t in reader.tensors if t.name.startswith("blk.0.") and len(t.shape) == 2]
    picked += [t for t in reader.tensors if t.name == "token_embd.weight"]
    assert {t.tensor_type.name for t in picked} >= {"Q4_1", "Q8_0"}
    for t in picked:
        k, n = (int(s) for s in t.shape)
        n = min(n, 4096)  # the output head: a slice of its rows is enough
        raw = np.ascontiguousarray(np.asarray(t.data)[:n])
        w = kernels.QuantWeight.from_gguf(raw, t.tensor_type.name, (n, k))
        assert np.array_equal(w.dequantize(), quants.dequantize_gguf(raw, t.tensor_type.name, n, k)), t.name
        w64 = quants.dequantize(raw, t.tensor_type.name, n, k)
        x = _x(8, k, seed=1)
        ys = [kernels.qmatmul(x, w, path=p) for p in kernels.paths()]
        assert all(torch.equal(ys[0], y) for y in ys), t.name
        assert np.all(np.abs(ys[0].numpy() - x.double().numpy() @ w64.T) <= _bound(x.double().numpy(), w64)), t.name
        assert torch.equal(torch.cat([kernels.qmatmul(x[i : i + 1], w) for i in range(8)]), ys[0]), t.name


@needs_native
def test_amx_rows_in_a_forked_child(weights):
    """A forked child (a server worker) runs the tile path after its parent did: the child's
    tile configuration is set up again, and the rows come out the same."""
    if "amx" not in kernels.paths():
        pytest.skip(f"this CPU has no amx path (it runs {', '.join(kernels.paths()) or 'none'})")
    import multiprocessing as mp

    _, qw = weights["Q4_1"]
    x = _x(40, qw.k, seed=11)  # 40 rows: three tile blocks of 14, 13 and 13 rows
    parent = kernels.qmatmul(x, qw, path="amx")
    _FORKED[:] = [x, qw]
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:  # the child inherits _FORKED; only the result crosses back
        child = torch.from_numpy(pool.apply(_child_qmatmul))
    assert torch.equal(child, parent)
    assert torch.equal(parent, kernels.qmatmul(x, qw, path="avx2"))


_FORKED: list = []


def _child_qmatmul():
    x, qw = _FORKED
    return kernels.qmatmul(x, qw, path="amx").numpy()


_CLOBBER = """
import ctypes, torch, numpy as np
from paradec.models.native import kernels, quants
lib = kernels.library()
rng = np.random.default_rng(0)
qw = kernels.QuantWeight.from_gguf(quants.quantize(rng.standard_normal((80, 96)).astype(np.float32), "Q4_1"), "Q4_1", (80, 96))
x = torch.from_numpy(rng.standard_normal((40, 96)).astype(np.float32))
ref = kernels.qmatmul(x, qw, path="avx2")
for mode in (0, 1, 0, 1):
    lib.pd_amx_test_clobber(mode)  # what llama.cpp or oneDNN may leave on this thread
    assert torch.equal(kernels.qmatmul(x, qw, path="amx"), ref)
print("ok")
"""


@needs_native
def test_amx_survives_other_tile_users_on_the_calling_thread():
    """Other code on the calling thread (llama.cpp's AMX kernels, oneDNN) may release the tiles
    or load its own configuration between two products: the tile path must configure its own
    each call (else the CPU faults: run in a child process so that a fault fails the test)."""
    if "amx" not in kernels.paths():
        pytest.skip(f"this CPU has no amx path (it runs {', '.join(kernels.paths()) or 'none'})")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _CLOBBER], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
