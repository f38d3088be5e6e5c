"""Read a Llama-family GGUF for the native backend: hyper-parameters and quantized weights.

Weights stay as the file holds them (``QuantWeight`` over the file's own blocks); only the
small float tensors (norms, biases) are read as float32. Llama's Q and K rows are stored in the
order llama.cpp's converter permutes them to (each head's rotary pairs adjacent); the backend
keeps that order and rotates adjacent pairs, which gives the same attention scores as the
Hugging Face layout with rotate-half (the same permutation applies to q and k, and a dot
product does not see it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ParadecError

# architecture -> (rotary pairs rotate-half style, q/k/v biases expected)
ARCHS = {"llama": (False, False), "qwen2": (True, True)}


@dataclass(frozen=True)
class NativeConfig:
    arch: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    rope_theta: float
    rope_dim: int
    rope_neox: bool  # True: pairs (i, i + d/2); False: adjacent pairs (2i, 2i + 1)
    rope_linear: float  # linear position scaling factor (1 = none)
    max_context: int
    bos_id: int | None
    eos_id: int | None

    def inv_freq(self, freq_factors: np.ndarray | None = None) -> np.ndarray:
        """[rope_dim / 2] float32, computed as transformers computes its rotary table."""
        import torch

        d = self.rope_dim
        inv = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        if self.rope_linear != 1.0:
            inv = inv / self.rope_linear
        out = inv.numpy().astype(np.float32)
        if freq_factors is not None:
            out = (out / freq_factors.astype(np.float32)).astype(np.float32)
        return out


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray  # [H] float32
    ffn_norm: np.ndarray  # [H] float32
    qkv: object  # QuantWeight [(Hq + 2 Hkv) D, H] when q, k, v share a type, else None
    q: object  # QuantWeight [Hq D, H] (used when qkv is None)
    k: object
    v: object
    qkv_bias: np.ndarray | None  # [(Hq + 2 Hkv) D] float32
    o: object  # QuantWeight [H, Hq D]
    gate_up: object  # QuantWeight [2 F, H] when gate and up share a type, else None
    gate: object
    up: object
    down: object  # QuantWeight [H, F]


@dataclass(frozen=True)
class GGUFModel:
    path: str
    config: NativeConfig
    embed_raw: np.ndarray  # [V, row bytes] uint8 (or [V, H] float), the token embedding as stored
    embed_type: object  # gguf.GGMLQuantizationType
    output: object  # QuantWeight [V, H] (the embedding itself when tied)
    norm: np.ndarray  # [H] float32
    layers: tuple[LayerWeights, ...]
    freq_factors: np.ndarray | None
    qtypes: tuple[str, ...]  # the quantization types of the matrices, for display
    weight_bytes: int  # bytes of the matrices as stored (what one forward reads)


class NativeUnsupported(ParadecError):
    """A well-formed GGUF that the native backend does not run (architecture, quantization
    type, rotary scaling, head layout): ``auto`` falls back to torch on it."""


def _fail(path, what: str, unsupported: bool = False) -> ParadecError:
    return (NativeUnsupported if unsupported else ParadecError)(f"native backend: {Path(path).name}: {what}")


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # noqa: BLE001 - a malformed field is a corrupt file
        return default


def available_memory() -> int | None:
    """This machine's available memory in bytes (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def read_config(reader, path) -> NativeConfig:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHS:
        raise _fail(path, f"unsupported architecture {arch!r} (native backend: {', '.join(ARCHS)})", unsupported=True)

    def need(key: str):
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            raise _fail(path, f"missing {arch}.{key}")
        return v

    hidden, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    n_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_heads))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // n_heads))
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    factor = float(_field(reader, f"{arch}.rope.scaling.factor", 1.0) or 1.0)
    if scaling not in ("none", "linear") and factor != 1.0:
        raise _fail(path, f"unsupported rope scaling {scaling!r}", unsupported=True)
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        toks = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(toks.data) if toks is not None else None
    neox, _ = ARCHS[arch]
    cfg = NativeConfig(
        arch=arch,
        n_layers=int(need("block_count")),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        ffn=int(need("feed_forward_length")),
        vocab=int(vocab) if vocab is not None else 0,
        eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_dim=int(_field(reader, f"{arch}.rope.dimension_count", head_dim)),
        rope_neox=neox,
        rope_linear=factor if scaling == "linear" else 1.0,
        max_context=int(_field(reader, f"{arch}.context_length", 2048)),
        bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )
    if n_heads % n_kv or cfg.rope_dim > head_dim or cfg.rope_dim % 2 or head_dim > 1024:
        raise _fail(path, f"unsupported head layout (heads {n_heads}, kv heads {n_kv}, head dim {head_dim})", unsupported=True)
    return cfg


def _open(path: str):
    """A GGUFReader over ``path`` (memory-mapped); a one-line ParadecError when it cannot be read."""
    import gguf

    try:
        return gguf.GGUFReader(path, "r")
    except FileNotFoundError:
        raise ParadecError(f"native backend: {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - GGUFReader raises ValueError, IndexError, struct errors...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ParadecError(f"cannot read GGUF file '{Path(path).name}' (damaged, truncated or unsupported; "
                           f"not a readable GGUF file): {reason}") from None


class _Tensors:
    """The file's tensors by name, read with checks (each failure names the file and the tensor);
    it counts the bytes of the matrices read and notes their quantization types."""

    def __init__(self, reader, path: str) -> None:
        from .quants import FLOAT_TYPES, FORMATS

        self.path = path
        self.by_name = {t.name: t for t in reader.tensors}
        self.ok = set(FORMATS) - set(FLOAT_TYPES)  # matrices: the quantized types the kernels run
        self.qtypes: set[str] = set()
        self.nbytes = 0

    def tensor(self, name: str, required: bool = True):
        t = self.by_name.get(name)
        if t is None and required:
            raise _fail(self.path, f"missing tensor {name}")
        return t

    def vec(self, name: str, n: int, required: bool = True) -> np.ndarray | None:
        """A float vector of ``n`` values as float32 [n] (None when absent and not required)."""
        t = self.tensor(name, required)
        if t is None:
            return None
        a = np.asarray(t.data)
        if t.tensor_type.name not in ("F32", "F16") or a.size != n:
            raise _fail(self.path, f"tensor {name}: expected {n} float values, got {t.tensor_type.name} {list(t.shape)}")
        return a.astype(np.float32).reshape(n)

    def raw(self, name: str, n: int, k: int):
        """A quantized [n, k] matrix's blocks as stored ([n, row bytes]) and its type."""
        t = self.tensor(name)
        kind = t.tensor_type.name
        if kind not in self.ok:
            raise _fail(self.path, f"tensor {name}: unsupported quantization type {kind} "
                        f"(native backend: {', '.join(sorted(self.ok))})", unsupported=True)
        if [int(x) for x in t.shape] != [k, n]:
            raise _fail(self.path, f"tensor {name}: shape {list(t.shape)}, expected {[k, n]}")
        self.qtypes.add(kind)
        data = np.asarray(t.data)
        self.nbytes += int(t.n_bytes)
        return data.reshape(n, -1) if data.ndim != 2 or data.shape[0] != n else data, t.tensor_type

    def quant(self, name: str, n: int, k: int):
        from .kernels import QuantWeight

        data, kind = self.raw(name, n, k)
        return QuantWeight.from_gguf(data, kind, (n, k))

    def fused(self, names: list[str], ns: list[int], k: int):
        """One QuantWeight over several matrices with the same input (rows stacked), or None
        when their types differ."""
        from .kernels import QuantWeight

        parts = [self.raw(nm, n, k) for nm, n in zip(names, ns)]
        if len({kind for _, kind in parts}) != 1 or any(d.dtype != parts[0][0].dtype for d, _ in parts):
            return None
        return QuantWeight.from_gguf(np.concatenate([d for d, _ in parts], axis=0), parts[0][1], (sum(ns), k))

    def layer(self, cfg: NativeConfig, i: int) -> LayerWeights:
        """Layer ``i``'s weights: q/k/v and gate/up fused where their types agree."""
        H, D, F = cfg.hidden, cfg.head_dim, cfg.ffn
        nq, nk = cfg.n_heads * D, cfg.n_kv_heads * D
        _, want_bias = ARCHS[cfg.arch]
        p = f"blk.{i}."
        names_qkv = [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
        qkv = self.fused(names_qkv, [nq, nk, nk], H)
        q = k = v = None
        if qkv is None:
            q, k, v = (self.quant(nm, n, H) for nm, n in zip(names_qkv, [nq, nk, nk]))
        biases = [self.vec(p + f"attn_{x}.bias", n, required=want_bias) for x, n in zip("qkv", [nq, nk, nk])]
        bias = np.concatenate(biases).astype(np.float32) if all(b is not None for b in biases) else None
        gate_up = self.fused([p + "ffn_gate.weight", p + "ffn_up.weight"], [F, F], H)
        gate = up = None
        if gate_up is None:
            gate, up = self.quant(p + "ffn_gate.weight", F, H), self.quant(p + "ffn_up.weight", F, H)
        return LayerWeights(
            attn_norm=self.vec(p + "attn_norm.weight", H), ffn_norm=self.vec(p + "ffn_norm.weight", H),
            qkv=qkv, q=q, k=k, v=v, qkv_bias=bias, o=self.quant(p + "attn_output.weight", H, nq),
            gate_up=gate_up, gate=gate, up=up, down=self.quant(p + "ffn_down.weight", H, F),
        )


def _check_size(reader, path: str, cfg: NativeConfig) -> None:
    """Every tensor inside the file, and the file plus its cache within the available memory."""
    size = os.path.getsize(path)
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise _fail(path, f"truncated (tensor {t.name} runs past the end of the file)")
    avail = available_memory()
    kv_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 * min(cfg.max_context, 4096)
    if avail is not None and size + kv_bytes > avail:
        raise _fail(path, f"too large for memory ({(size + kv_bytes) / 2**30:.1f} GiB needed, {avail / 2**30:.1f} GiB available)")


def _embedding(tensors: _Tensors, cfg: NativeConfig):
    """The token embedding tensor, and the config with the vocabulary size it holds."""
    from .quants import FORMATS

    path = tensors.path
    emb = tensors.tensor("token_embd.weight")
    if emb.tensor_type.name not in FORMATS or [int(x) for x in emb.shape][0] != cfg.hidden:
        raise _fail(path, f"tensor token_embd.weight: unsupported type {emb.tensor_type.name} or shape {list(emb.shape)}", unsupported=True)
    vocab = int(emb.shape[1])
    if cfg.vocab and cfg.vocab != vocab:
        raise _fail(path, f"vocab size {cfg.vocab} but token_embd.weight has {vocab} rows")
    return emb, NativeConfig(**{**cfg.__dict__, "vocab": vocab})


def read_gguf(path: str | os.PathLike) -> GGUFModel:
    """The model in ``path``; a one-line ``ParadecError`` naming the file and the problem for an
    unsupported architecture or quantization type, a truncated or corrupt file, or a model that
    does not fit in memory."""
    path = str(path)
    reader = _open(path)
    cfg = read_config(reader, path)
    tensors = _Tensors(reader, path)
    _check_size(reader, path, cfg)
    emb, cfg = _embedding(tensors, cfg)
    vocab, H = cfg.vocab, cfg.hidden
    layers = tuple(tensors.layer(cfg, i) for i in range(cfg.n_layers))
    if "output.weight" in tensors.by_name:
        output = tensors.quant("output.weight", vocab, H)
    else:  # tied embeddings: the LM head is the embedding matrix
        output = tensors.quant("token_embd.weight", vocab, H)
    emb_data = np.asarray(emb.data)
    ff = tensors.by_name.get("rope_freqs.weight")
    return GGUFModel(
        path=path,
        config=cfg,
        embed_raw=emb_data.reshape(vocab, -1),
        embed_type=emb.tensor_type,
        output=output,
        norm=tensors.vec("output_norm.weight", H),
        layers=layers,
        freq_factors=np.asarray(ff.data, dtype=np.float32).reshape(-1) if ff is not None else None,
        qtypes=tuple(sorted(tensors.qtypes)),
        weight_bytes=tensors.nbytes,
    )


def embed_rows(model: GGUFModel, ids: np.ndarray) -> np.ndarray:
    """The embedding rows of ``ids`` [T] as float32 [T, H], dequantized from the file's blocks."""
    from .quants import dequantize

    rows = model.embed_raw[ids]
    if model.embed_type.name in ("F32", "F16"):
        return rows.astype(np.float32)
    return dequantize(rows, model.embed_type.name, len(ids), model.config.hidden, np.float32)
