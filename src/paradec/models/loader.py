"""Load a model by short name, local directory, GGUF file or cached hub id, fully offline.

transformers dequantizes GGUF on every load (slow), so the first load converts the GGUF once and
stores the weights as safetensors (plus tokenizer) in the user cache; later loads read that.
The cache root is ``$PARADEC_CACHE`` or the platform's user cache dir.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ParadecError
from .cache_store import cache_root, cached_dir, cached_file
from .registry import DEFAULT_MODEL, REGISTRY, PackagedModel, packaged

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


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

    def assemble(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:
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

    return cached_file(out, spec.sha256, assemble, _note)


def _note(msg: str) -> None:
    print(f"paradec: {msg}", file=sys.stderr)


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


GGUF_MAGIC = b"GGUF"


def check_gguf(path: str, name: str) -> None:
    """A one-line error unless ``path`` starts like a GGUF file (the full parse happens on conversion)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ParadecError(f"cannot read GGUF file '{name}': {e.strerror or e}") from None
    if head != GGUF_MAGIC:
        raise ParadecError(f"'{name}' is not a GGUF file (it does not start with the GGUF magic bytes)")


def _convert_gguf(src: Source, out: Path) -> None:
    """Dequantize the GGUF at ``src.path`` and save safetensors + tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_file = os.path.dirname(src.path), os.path.basename(src.path)
    try:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    except (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, struct.error, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ParadecError(f"cannot read GGUF file '{src.name}' (damaged, truncated or unsupported): {reason}") from None
    # The weights are dequantized now; drop the GGUF quantizer so save_pretrained works.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _converted_dir(src: Source) -> Path:
    """The GGUF converted once to safetensors + tokenizer in the cache, checksummed: a damaged
    entry is rebuilt from the GGUF (with a one-line note) before anything loads from it."""
    check_gguf(src.path, src.name)

    def build(tmp: Path) -> None:
        _note(f"converting {Path(src.path).name} once (cached in {cache_root() / 'converted' / src.key})")
        _convert_gguf(src, tmp)

    return cached_dir(cache_root() / "converted", src.key, build, src.path, _note)


@dataclass
class Loaded:
    source: Source
    model: object  # transformers PreTrainedModel (None for a native target: see causal_lm)
    tokenizer: object  # transformers tokenizer
    causal_lm: object = None  # a ready CausalLM target (the native backend), else made from model
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
