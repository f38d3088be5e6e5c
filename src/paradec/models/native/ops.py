"""ctypes bindings of ``csrc/ops.c`` (per-row RMSNorm, rotary, SiLU * up, KV writes, tree
attention). Arrays are passed by address: torch tensors (``data_ptr``) or numpy arrays
(``ctypes.data``), always float32 / int64 / uint8 and C-contiguous."""

from __future__ import annotations

import ctypes

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float

_SIGNATURES = {
    "pd_rmsnorm": [_P, _P, _P, _I, _I, _F, _F],
    "pd_rope": [_P, _I, _I, _I, _I, _I, _P, _P, _F, ctypes.c_int],
    "pd_act_mul": [_P, _P, _P, _I, _I, _I, ctypes.c_int],
    "pd_kv_write": [_P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _I],
    "pd_attention": [_P, _I, _P, _I, _I, _I, _I, _P, _P, _P, _P, _I, _P, _I, _F],
    "pd_decoder": [_P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P],
}


class Layer(ctypes.Structure):  # csrc/ops.c pd_layer
    _fields_ = [("attn_norm", _P), ("ffn_norm", _P), ("qkv_bias", _P), ("inp", _P * 3), ("o", _P),
                ("gu", _P * 2), ("down", _P), ("n_in", _I), ("n_gu", _I)]


class Model(ctypes.Structure):  # csrc/ops.c pd_model
    _fields_ = [(f, _I) for f in ("n_layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "rope_dim", "neox", "path")] + [
        ("eps", _F), ("scale", _F), ("inv_freq", _P)]


class Ops:
    """The op functions of the native library ``lib`` (a ``ctypes.CDLL``)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, (ctypes.c_int if name == "pd_decoder" else None)
            setattr(self, name[3:], fn)


def addr(a) -> int:
    """The address of a torch tensor's or numpy array's first element."""
    return a.data_ptr() if hasattr(a, "data_ptr") else a.ctypes.data
