"""paradec's on-disk cache: checksummed entries, written atomically.

An entry is a directory (the safetensors of a converted GGUF) or a single file (a GGUF
assembled from parts). It is built in a temporary sibling and renamed into place only when
complete, so an interrupted build leaves no entry behind. A directory entry carries a manifest
(``.complete``: the size and sha256 of every file) that is checked in full on every load; a
missing, changed or extra file makes the entry bad, and the caller rebuilds it.

sha256 streams at about 1.5 GB/s on a current x86 core (SHA extensions), so checking the
default model's 540 MB of float32 weights adds ~0.4 s to a load, and the check reads the file
into the page cache that the load then uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ParadecError

MANIFEST = ".complete"
FORMAT = 1


def cache_root() -> Path:
    env = os.environ.get("PARADEC_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("paradec"))


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") else _sha256_stream(f)


def _sha256_stream(f) -> str:  # Python 3.10
    h = hashlib.sha256()
    while chunk := f.read(1 << 22):
        h.update(chunk)
    return h.hexdigest()


def writable_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) and check that files can be written in it; a one-line
    error naming the cache otherwise. Run this before any expensive work that writes there."""
    what = f"cache folder '{path}'" + (" (PARADEC_CACHE)" if os.environ.get("PARADEC_CACHE") else "")
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ParadecError(f"{what} is not usable: '{p}' is a file, not a folder (set PARADEC_CACHE to a folder)")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ParadecError(f"{what} is not writable ({e.strerror or e}); set PARADEC_CACHE to a writable folder") from None
    return path


# ---- directory entries --------------------------------------------------------------------------
def write_manifest(d: Path, source: str) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(d.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (d / MANIFEST).write_text(json.dumps({"format": FORMAT, "source": source, "files": files}, indent=1) + "\n")


def check_dir(d: Path) -> str | None:
    """None when the entry at ``d`` is complete and every file matches its manifest; otherwise
    a short reason (for the one-line note printed when it is rebuilt)."""
    if not d.is_dir():
        return "missing"
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError
    except FileNotFoundError:
        return "incomplete (no manifest)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable or from an older paradec"
    present = {p.name for p in d.iterdir() if p.name != MANIFEST}
    if present != set(files):
        odd = sorted(present ^ set(files))
        return f"its files differ from the manifest ({', '.join(odd[:3])})"
    for name, meta in files.items():
        p = d / name
        try:
            if not isinstance(meta, dict) or p.stat().st_size != meta.get("size"):
                return f"'{name}' has the wrong size"
            if sha256_file(p) != meta.get("sha256"):
                return f"'{name}' fails its sha256 check"
        except OSError as e:
            return f"'{name}' is unreadable ({e.strerror or e})"
    return None


@contextlib.contextmanager
def _locked(root: Path, key: str) -> Iterator[None]:
    """An exclusive lock on one entry, so two processes never build it at once."""
    with open(root / f".{key}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _staging(key: str) -> str:
    return f".{key}.tmp-"


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _clear_stale(root: Path, key: str) -> None:
    """Remove what an interrupted build of ``key`` left (call with the entry's lock held)."""
    for p in root.glob(_staging(key) + "*"):
        _remove(p)


def cached_dir(root: Path, key: str, build: Callable[[Path], None], source: str, note: Callable[[str], None]) -> Path:
    """The verified directory entry ``root/key``, built (or rebuilt, with a one-line note) by
    ``build(tmp_dir)`` when it is missing or fails its check. ``build`` fills ``tmp_dir``; the
    manifest is written after it, and the folder is renamed into place only then."""
    out = root / key
    problem = check_dir(out)
    if problem is None:
        return out
    try:
        writable_dir(root)
    except ParadecError as e:
        if not out.exists():
            raise
        raise ParadecError(f"cache entry '{out}' cannot be used ({problem}) and cannot be rebuilt: {e}") from None
    with _locked(root, key):
        problem = check_dir(out)  # another process may have built it meanwhile
        if problem is None:
            return out
        _clear_stale(root, key)
        if out.exists():
            note(f"cache entry '{out}' cannot be used ({problem}); rebuilding it")
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=_staging(key)))
        try:
            build(tmp)
            write_manifest(tmp, source)
            _remove(out)
            os.replace(tmp, out)
        except OSError as e:  # a full disk, a folder removed under us: nothing half-written stays
            raise ParadecError(f"cannot write cache entry '{out}' ({e.strerror or e})") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- single-file entries (checked against a known sha256) ----------------------------------------
def cached_file(out: Path, sha256: str, build: Callable[[Path], None], note: Callable[[str], None]) -> Path:
    """The file ``out`` whose sha256 must be ``sha256``, built (or rebuilt) by ``build(tmp_path)``.
    ``build`` must raise ParadecError when what it wrote is not right."""
    if out.is_file() and sha256_file(out) == sha256:
        return out
    root = writable_dir(out.parent)
    with _locked(root, out.name):
        if out.is_file():
            if sha256_file(out) == sha256:
                return out
            note(f"cache file '{out}' is damaged (sha256 mismatch); rebuilding it")
        _clear_stale(root, out.name)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=_staging(out.name))
        os.close(fd)
        try:
            build(Path(tmp))
            os.replace(tmp, out)
        except OSError as e:
            raise ParadecError(f"cannot write cache file '{out}' ({e.strerror or e})") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out
