"""The one output-folder check every command runs before its work (training, benchmarks):
a folder that cannot be written fails at once, not after minutes of work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ParadecError


def writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a folder this process can write to (made if missing), or a one-line error."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise ParadecError(f"{option} {d}: exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".paradec-write-check-"):
            pass
    except OSError as e:
        raise ParadecError(f"{option} {d}: cannot write there ({e.strerror or type(e).__name__})") from None
    return d
