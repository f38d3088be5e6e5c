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
}


class Ops:
    """The op functions of the native library ``lib`` (a ``ctypes.CDLL``)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
            setattr(self, name[3:], fn)


def addr(a) -> int:
    """The address of a torch tensor's or numpy array's first element."""
    return a.data_ptr() if hasattr(a, "data_ptr") else a.ctypes.data
