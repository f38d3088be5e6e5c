"""Load a model by short name, local directory, GGUF file or cached hub id, fully offline.

transformers dequantizes GGUF on every load (slow), so the first load converts the GGUF once and
stores the weights as safetensors (plus tokenizer) in the user cache; later loads read that.
The cache root is ``$PARADEC_CACHE`` or the platform's user cache dir.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ParadecError
from .registry import DEFAULT_MODEL, REGISTRY, PackagedModel, packaged

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def cache_root() -> Path:
    env = os.environ.get("PARADEC_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("paradec"))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ParadecError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def parse_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ParadecError(f"unknown device '{device}' (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParadecError("device 'cuda' requested but no CUDA GPU is available to torch")
    if dev.type not in ("cpu", "cuda"):
        raise ParadecError(f"unsupported device '{device}' (use cpu or cuda)")
    return dev


@dataclass(frozen=True)
class Source:
    name: str  # what the user asked for
    kind: str  # "gguf" | "dir" | "hub"
    path: str  # GGUF file, model directory, or hub id
    key: str  # cache key for converted weights
    chat: bool | None = None


def resolve(name: str | None) -> Source:
    name = name or DEFAULT_MODEL
    spec = packaged(name)
    if spec is not None:
        return Source(name, "gguf", str(_packaged_gguf(spec)), f"{spec.name}-{_spec_key(spec)}", spec.chat)
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        st = p.stat()
        key = hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return Source(name, "gguf", str(p.resolve()), f"{p.stem}-{key}")
    if p.is_dir():
        if not (p / "config.json").is_file():
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return resolve(str(ggufs[0]))
            raise ParadecError(f"'{name}' is a directory without config.json (not a Hugging Face model)")
        return Source(name, "dir", str(p.resolve()), "")
    if p.exists():
        raise ParadecError(f"'{name}' is not a model directory or a .gguf file")
    if "/" in name and not name.startswith((".", "/")):
        return Source(name, "hub", name, "")
    known = ", ".join(REGISTRY)
    raise ParadecError(f"unknown model '{name}' (packaged models: {known}; or give a local directory, a .gguf file or a cached hub id)")


def _spec_key(spec: PackagedModel) -> str:
    if spec.sha256:
        return spec.sha256[:16]
    # single-file packages: key on the distribution version and file size
    import importlib.metadata as md

    path = spec.part_paths()[0]
    return f"{md.version(spec.parts[0].dist)}-{path.stat().st_size}"


def _packaged_gguf(spec: PackagedModel) -> Path:
    paths = spec.part_paths()  # raises a one-line error naming the package when missing
    if len(paths) == 1 and spec.sha256 is None:
        return paths[0]
    out = cache_root() / "gguf" / f"{spec.name}-{spec.sha256[:16]}" / spec.gguf_name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in _progress(paths, f"assembling {spec.name} from {len(paths)} parts"):
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        f.write(chunk)
        if digest.hexdigest() != spec.sha256:
            raise ParadecError(
                f"model '{spec.name}': assembled file has sha256 {digest.hexdigest()[:16]}..., expected "
                f"{spec.sha256[:16]}... (reinstall its packages: `{spec.install}`)"
            )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _progress(items, desc):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty())
    except ImportError:  # pragma: no cover
        return items


def _quiet():
    """Silence transformers' load-time chatter (progress bars, GGUF notices)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*GGUF.*")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _converted_dir(src: Source) -> Path:
    """Convert a GGUF once to safetensors + tokenizer in the cache; return that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache_root() / "converted" / src.key
    if (out / ".complete").is_file():
        return out
    print(f"paradec: converting {Path(src.path).name} once (cached in {out})", file=sys.stderr)
    gguf_dir, gguf_file = os.path.dirname(src.path), os.path.basename(src.path)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are dequantized now; drop the GGUF quantizer so save_pretrained works.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{src.key}-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(src.path + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Loaded:
    source: Source
    model: object  # transformers PreTrainedModel (None for a native target: see causal_lm)
    tokenizer: object  # transformers tokenizer
    causal_lm: object = None  # a ready CausalLM adapter (the native backend), else made from model
    generation_config: object = None  # where model is None


def load_hf(name: str | None, dtype: str | torch.dtype = "float32", device: str | torch.device | None = "cpu") -> Loaded:
    """Resolve ``name`` and load (model, tokenizer) with transformers, offline."""
    torch_dtype, dev = parse_dtype(dtype), parse_device(device)
    src = resolve(name)
    _quiet()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = src.path
    kwargs: dict = {}
    if src.kind == "gguf":
        path = str(_converted_dir(src))
    elif src.kind == "hub":
        kwargs["local_files_only"] = True
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa", **kwargs)
    except OSError as e:
        if src.kind == "hub":
            raise ParadecError(f"model '{name}' is not in the local Hugging Face cache (paradec never downloads)") from None
        raise ParadecError(f"could not load model '{name}': {str(e).splitlines()[0]}") from None
    except ValueError as e:  # e.g. an architecture without sdpa support
        if "sdpa" not in str(e).lower():
            raise ParadecError(f"could not load model '{name}': {str(e).splitlines()[0]}") from None
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="eager", **kwargs)
    model.to(dev).eval()
    return Loaded(src, model, tok)
