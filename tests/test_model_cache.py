"""The conversion cache: checksummed at conversion, checked at every load, built atomically.

Fault injection on a tiny model (the GGUF conversion is replaced by saving a tiny random Llama,
so each "conversion" takes milliseconds): random bytes, truncation, deletion, an interrupted
build (an exception, and a real SIGKILL) - a damaged entry is rebuilt, never loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers.cli import run_cli
from helpers.tiny import save_tiny_chat_model
from paradec.errors import ParadecError
from paradec.models import cache_store, loader

IDS = torch.tensor([[5, 9, 12, 7, 30]])


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fake GGUF (right magic bytes) whose "conversion" saves a tiny model; counts builds."""
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(64))
    builds = []

    def fake_convert(src, out):
        builds.append(out)
        save_tiny_chat_model(out)

    monkeypatch.setattr(loader, "_convert_gguf", fake_convert)
    return gguf, builds


def _logits(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(IDS.to(loaded.model.device)).logits


def _entry(gguf: Path) -> Path:
    return Path(os.environ["PARADEC_CACHE"]) / "converted" / loader.resolve(str(gguf)).key


def _weights(gguf: Path) -> Path:
    return _entry(gguf) / "model.safetensors"


def _overwrite_middle(p: Path, n: int = 4096) -> None:
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(n))


def _truncate(p: Path) -> None:
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 3)


def _randomize(p: Path) -> None:
    p.write_bytes(os.urandom(p.stat().st_size))


def _delete(p: Path) -> None:
    p.unlink()


def _drop_manifest(p: Path) -> None:
    (p.parent / cache_store.MANIFEST).unlink()


def _extra_file(p: Path) -> None:
    (p.parent / "model.safetensors.index.json").write_text("{}")


def _old_format(p: Path) -> None:  # what earlier versions wrote: the source path, no checksums
    (p.parent / cache_store.MANIFEST).write_text("/some/model.gguf\n")


def test_first_load_converts_then_reuses_the_verified_entry(env, capsys):
    gguf, builds = env
    ref = _logits(loader.load_hf(str(gguf)))
    assert len(builds) == 1 and (_entry(gguf) / cache_store.MANIFEST).is_file()
    assert cache_store.check_dir(_entry(gguf)) is None
    assert torch.equal(_logits(loader.load_hf(str(gguf))), ref)
    assert len(builds) == 1
    leftovers = [p.name for p in _entry(gguf).parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("damage", [_overwrite_middle, _truncate, _randomize, _delete, _drop_manifest, _extra_file, _old_format])
def test_a_damaged_entry_is_rebuilt_with_a_note(env, capsys, damage):
    gguf, builds = env
    ref = _logits(loader.load_hf(str(gguf)))
    damage(_weights(gguf))
    assert cache_store.check_dir(_entry(gguf)) is not None
    capsys.readouterr()
    again = loader.load_hf(str(gguf))
    err = capsys.readouterr().err
    assert len(builds) == 2
    assert "rebuilding" in err and len([ln for ln in err.splitlines() if "cannot be used" in ln]) == 1
    assert torch.equal(_logits(again), ref)
    assert cache_store.check_dir(_entry(gguf)) is None


def test_a_damaged_entry_that_cannot_be_rebuilt_is_refused(env, monkeypatch):
    gguf, builds = env
    loader.load_hf(str(gguf))
    _overwrite_middle(_weights(gguf))

    def broken(src, out):
        raise ParadecError(f"cannot read GGUF file '{src.name}' (damaged, truncated or unsupported): boom")

    monkeypatch.setattr(loader, "_convert_gguf", broken)
    for _ in range(2):  # the damaged entry stays refused, it is never loaded
        with pytest.raises(ParadecError, match="cannot read GGUF"):
            loader.load_hf(str(gguf))


def test_an_interrupted_conversion_leaves_no_entry(env, monkeypatch):
    gguf, builds = env

    def dies_midway(src, out):
        save_tiny_chat_model(out)
        _truncate(out / "model.safetensors")
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "_convert_gguf", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        loader.load_hf(str(gguf))
    root = _entry(gguf).parent
    assert not _entry(gguf).exists()
    assert [p for p in root.iterdir() if ".tmp-" in p.name] == []


def test_a_killed_conversion_is_cleaned_up_and_redone(env, tmp_path):
    """A real SIGKILL in the middle of writing the entry: the next load ignores and removes
    the staging folder it left, converts again and loads the right weights."""
    gguf, builds = env
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(loader.__file__).parents[2])]!r}
        from helpers.tiny import save_tiny_chat_model
        from paradec.models import loader
        def killed(src, out):
            save_tiny_chat_model(out)
            with open(out / "model.safetensors", "r+b") as f:
                f.truncate(100)
            os.kill(os.getpid(), signal.SIGKILL)
        loader._convert_gguf = killed
        loader.load_hf({str(gguf)!r})
        """
    )
    r = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    root = _entry(gguf).parent
    assert not _entry(gguf).exists() and [p for p in root.iterdir() if ".tmp-" in p.name]
    loaded = loader.load_hf(str(gguf))
    assert len(builds) == 1 and cache_store.check_dir(_entry(gguf)) is None
    assert [p for p in root.iterdir() if ".tmp-" in p.name] == []
    ref = save_tiny_chat_model(tmp_path / "ref")
    from transformers import AutoModelForCausalLM

    want = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(_logits(loaded), want(IDS).logits)


def test_cache_that_is_a_file_or_unwritable_fails_before_converting(env, tmp_path, monkeypatch, capsys):
    gguf, builds = env
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, msg in [(afile, "is a file, not a folder"), (afile / "sub", "is a file, not a folder"),
                     (Path("/proc/paradec-cache"), "not writable")]:
        monkeypatch.setenv("PARADEC_CACHE", str(bad))
        with pytest.raises(ParadecError, match=msg):
            loader.load_hf(str(gguf))
        code, out, err = run_cli(["generate", "hi", "--model", str(gguf), "-n", "2"], capsys)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "PARADEC_CACHE" in err
    assert builds == []


def test_assembled_gguf_is_checked_and_rebuilt(tmp_path, capsys):
    import hashlib

    parts = [tmp_path / f"p{i}" for i in range(3)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 5000)
    whole = b"".join(p.read_bytes() for p in parts)
    sha = hashlib.sha256(whole).hexdigest()
    out = tmp_path / "cache" / "gguf" / "m.gguf"

    def assemble(tmp):
        tmp.write_bytes(b"".join(p.read_bytes() for p in parts))

    assert cache_store.cached_file(out, sha, assemble, print).read_bytes() == whole
    _overwrite_middle(out, 100)
    assert cache_store.cached_file(out, sha, assemble, print).read_bytes() == whole
    assert "damaged" in capsys.readouterr().out


# ---- GGUF input ---------------------------------------------------------------------------------
def _default_gguf() -> Path:
    from paradec.models.registry import REGISTRY

    spec = REGISTRY["smollm2-135m"]
    if not spec.installed:
        pytest.skip("the default model's package is not installed")
    return spec.part_paths()[0]


def test_random_file_named_gguf_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "x.gguf"
    bad.write_bytes(os.urandom(20000))
    code, out, err = run_cli(["generate", "hi", "--model", str(bad), "-n", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "x.gguf" in err and "not a GGUF file" in err


@pytest.mark.parametrize("keep", [300, 3_000_000])
def test_truncated_gguf_is_a_one_line_error(tmp_path, monkeypatch, capsys, keep):
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path / "cache"))
    with open(_default_gguf(), "rb") as f:
        head = f.read(keep)
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(head)
    code, out, err = run_cli(["generate", "hi", "--model", str(bad), "-n", "2"], capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("paradec: converting", "Converting"))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot read GGUF file") and "cut.gguf" in lines[0]
    assert not any((tmp_path / "cache" / "converted").glob("cut-*"))


@pytest.mark.slow
def test_real_model_cache_with_random_bytes_is_rebuilt(tmp_path, monkeypatch, capsys):
    """The issue's case on the default model: 4 KiB of random bytes in the middle of the cached
    model.safetensors used to give eight token 0s; now the entry is rebuilt and the output is right."""
    import paradec

    _default_gguf()
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path / "cache"))
    kw = dict(method="ar", max_new_tokens=8)
    want = paradec.load("smollm2-135m").generate("The capital of France is", **kw).token_ids
    weights = next((tmp_path / "cache" / "converted").glob("smollm2-135m-*")) / "model.safetensors"
    _overwrite_middle(weights)
    capsys.readouterr()
    got = paradec.load("smollm2-135m").generate("The capital of France is", **kw).token_ids
    assert "rebuilding" in capsys.readouterr().err
    assert got == want and set(got) != {0}


def test_an_entry_replaced_by_a_file_is_rebuilt(env, capsys):
    gguf, builds = env
    loader.load_hf(str(gguf))
    entry = _entry(gguf)
    import shutil

    shutil.rmtree(entry)
    entry.write_text("not a folder")
    loader.load_hf(str(gguf))
    assert len(builds) == 2 and cache_store.check_dir(entry) is None


def test_a_damaged_entry_in_an_unwritable_cache_is_refused(env, monkeypatch):
    gguf, builds = env
    loader.load_hf(str(gguf))
    _overwrite_middle(_weights(gguf))

    def unwritable(path):
        raise ParadecError(f"cache folder '{path}' is not writable (Read-only file system)")

    monkeypatch.setattr(cache_store, "writable_dir", unwritable)
    with pytest.raises(ParadecError, match=r"fails its sha256 check\) and cannot be rebuilt: cache folder"):
        loader.load_hf(str(gguf))
    assert len(builds) == 1


def test_a_failed_write_is_a_one_line_error_and_leaves_nothing(env, monkeypatch):
    gguf, builds = env

    def disk_full(src, out):
        save_tiny_chat_model(out)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loader, "_convert_gguf", disk_full)
    with pytest.raises(ParadecError, match=r"cannot write cache entry .*\(No space left on device\)"):
        loader.load_hf(str(gguf))
    root = _entry(gguf).parent
    assert not _entry(gguf).exists() and [p for p in root.iterdir() if ".tmp-" in p.name] == []
