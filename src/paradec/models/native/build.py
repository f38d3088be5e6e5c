"""Compile the native kernels (every ``csrc/*.c``) into one shared library with gcc, once.

The library is cached in ``<paradec cache>/native/`` under a hash of the sources and flags, and
written atomically (temp file, then rename), so concurrent builds and interrupted ones are safe.
``python -m paradec.models.native.build`` builds it and prints one line. ``$PARADEC_NATIVE_CC``
names another compiler. If the compiler is missing or fails, ``load()`` returns None and
``unavailable_reason()`` says why in one line; the torch backend keeps working.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
# Baseline x86-64 for the dispatch code; the AVX2 / AVX512 files raise their own targets with
# `#pragma GCC target`. No contraction of a*b+c into fma behind the code's back: every path
# must round exactly where the source says.
CFLAGS = ("-O3", "-std=gnu11", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-fast-math", "-Wall")
LIB_NAME = "libparadec_native"


def _sources() -> list[Path]:
    return sorted(CSRC.glob("*.c"))


def _compiler() -> str | None:
    cc = os.environ.get("PARADEC_NATIVE_CC", "gcc")
    return shutil.which(cc)


def source_hash(cc: str) -> str:
    h = hashlib.sha256()
    h.update(" ".join((Path(cc).name,) + CFLAGS).encode())
    for p in sorted(CSRC.glob("*.[ch]")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _lib_dir() -> Path:
    from ..loader import cache_root

    return cache_root() / "native"


def build() -> tuple[Path | None, str]:
    """Build (or find) the library: (path, one-line message) or (None, the reason it failed)."""
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "AMD64"):
        return None, f"native kernels need Linux on x86-64 (this is {sys.platform} {os.uname().machine})"
    cc = _compiler()
    if cc is None:
        return None, f"native kernels need a C compiler: '{os.environ.get('PARADEC_NATIVE_CC', 'gcc')}' was not found"
    out_dir = _lib_dir()
    target = out_dir / f"{LIB_NAME}-{source_hash(cc)}.so"
    if target.is_file():
        return target, f"native kernels: {target} (cached)"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return None, f"native kernels: cannot create {out_dir}: {e.strerror}"
    # one compiler process per source file (they run in parallel), then one link
    with tempfile.TemporaryDirectory(prefix=f".{LIB_NAME}-", dir=out_dir) as tmpdir:
        tmp = os.path.join(tmpdir, "lib.so")
        objs = [os.path.join(tmpdir, f"{src.stem}.o") for src in _sources()]
        steps = [[cc, *CFLAGS, "-c", "-I", str(CSRC), "-o", obj, str(src)] for src, obj in zip(_sources(), objs)]
        err = _run_all(steps) or _run_all([[cc, *CFLAGS, "-shared", "-o", tmp, *objs, "-lm"]])
        if err is not None:
            return None, f"native kernels: {Path(cc).name} failed: {err}"
        try:
            os.replace(tmp, target)
        except OSError as e:
            return None, f"native kernels: cannot write {target}: {e.strerror}"
    return target, f"native kernels: built {target}"


def _run_all(cmds: list[list[str]]) -> str | None:
    """Run the commands concurrently; None, or the first error line of the first that failed."""
    try:
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    except OSError as e:
        return str(e)
    errs = []
    for p in procs:
        try:
            _, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            errs.append("timed out")
            continue
        if p.returncode != 0:
            lines = stderr.strip().splitlines()
            errs.append(next((ln for ln in lines if "error" in ln), lines[0] if lines else f"exit status {p.returncode}"))
    return errs[0] if errs else None


@lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    path, msg = build()
    if path is None:
        return None, msg
    try:
        return ctypes.CDLL(str(path)), None
    except OSError as e:
        return None, f"native kernels: cannot load {path.name}: {e}"


def load() -> ctypes.CDLL | None:
    """The loaded library, or None (see ``unavailable_reason``)."""
    return _load()[0]


def unavailable_reason() -> str | None:
    return _load()[1]


def main() -> int:
    path, msg = build()
    print(msg)
    return 0 if path is not None else 1


if __name__ == "__main__":
    sys.exit(main())
