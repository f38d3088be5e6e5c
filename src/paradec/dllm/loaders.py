"""Load a diffusion LM from a local directory into the adapter protocol.

- paradec's own checkpoints (config.json with a ``paradec_dllm`` section: model.safetensors),
  packaged as ``tiny-dllm`` (and ``tiny-ar``, the AR reference, which has no mask token);
- AR models converted by ``paradec convert`` (config.json with a ``paradec_converted`` section:
  the base model's name + adapter-*.safetensors), packaged as ``smollm2-135m-dlm``;
- Hugging Face checkpoints shaped like LLaDA (``model_type`` llada: unshifted logits,
  bidirectional), Dream (``Dream``: shifted logits, bidirectional) or SDAR (``sdar``: block-causal
  attention with a block size), loaded with ``trust_remote_code`` from the directory's own
  modeling files. Nothing is downloaded.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from ..errors import ParadecError
from .protocol import DiffusionSpec, HFDiffusionLM, TinyDLM

PACKAGED = {"tiny-dllm": "dllm", "tiny-ar": "ar"}
CONVERTED_DIR = "dlm"  # data/dlm/<name>/: converted AR models, loadable by <name>
FAMILIES = {"llada": "llada", "dream": "dream", "sdar": "sdar"}
LLADA_MASK_ID = 126336  # LLaDA's configs do not always carry it


def packaged_dir(name: str) -> Path:
    return Path(str(resources.files("paradec") / "data" / "dllm" / PACKAGED[name]))


def converted_dirs() -> dict[str, Path]:
    """Shipped converted models by name."""
    root = Path(str(resources.files("paradec") / "data" / CONVERTED_DIR))
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if (d / "config.json").is_file()}


def is_diffusion(name_or_path: str) -> bool:
    """A packaged dLLM name, or a directory whose config.json is paradec's or a dLLM family's."""
    if name_or_path in PACKAGED or name_or_path in converted_dirs():
        return True
    cfg = Path(name_or_path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        c = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return "paradec_dllm" in c or "paradec_converted" in c or str(c.get("model_type", "")).lower() in FAMILIES


def _converted_dir(name_or_path: str) -> Path | None:
    named = converted_dirs()
    if name_or_path in named:
        return named[name_or_path]
    d = Path(name_or_path)
    if (d / "config.json").is_file():
        try:
            if "paradec_converted" in json.loads((d / "config.json").read_text()):
                return d
        except (OSError, ValueError):
            return None
    return None


def converted_for(hf_model, adapter: str = "auto", max_context: int | None = None, copy_base: bool | str = True):
    """A BlockDiffusionAR over a copy of ``hf_model`` (``copy_base="share"``: over its very
    weights): the adapter named (or a directory), or with ``auto`` the shipped one trained on
    this very base model."""
    from ..distill.fingerprint import check_fingerprint
    from .converted import load_converted, read_config

    if adapter == "auto":
        for name, d in converted_dirs().items():
            try:
                check_fingerprint(read_config(d).get("base_fingerprint", {}), hf_model, name)
            except ParadecError:
                continue
            if any(d.glob("adapter-*.safetensors")):
                return load_converted(d, hf_model, copy_base=copy_base, max_context=max_context)
        known = ", ".join(converted_dirs()) or "none"
        raise ParadecError(f"deer: no converted adapter for this model (shipped: {known}); make one with `paradec convert` "
                           "and pass --opt adapter=DIR")
    d = _converted_dir(adapter)
    if d is None:
        raise ParadecError(f"deer: unknown adapter '{adapter}' (shipped: {', '.join(converted_dirs()) or 'none'}; or a directory from `paradec convert`)")
    return load_converted(d, hf_model, copy_base=copy_base, max_context=max_context)


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ParadecError(f"unknown dtype '{dtype}' (one of {', '.join(table)})")
    return table[dtype]


def load_diffusion(name_or_path: str, dtype="float32", device: str = "cpu", block_size: int | None = None):
    """A DiffusionLM (or, for paradec's AR reference, a TinyDLM whose spec has no mask token)."""
    conv = _converted_dir(name_or_path)
    if conv is not None:
        return _load_converted(conv, name_or_path, dtype, device, block_size)
    d = packaged_dir(name_or_path) if name_or_path in PACKAGED else Path(name_or_path)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ParadecError(f"no diffusion model at '{name_or_path}' (expected a directory with config.json)")
    cfg = json.loads(cfg_path.read_text())
    dt = _dtype(dtype)
    if "paradec_dllm" in cfg:
        from .toy.model import TinyTransformer

        if not (d / "model.safetensors").is_file():
            raise ParadecError(f"'{name_or_path}' has no model.safetensors")
        m = TinyDLM(TinyTransformer.load(d, dtype=dt).to(device), name=name_or_path)
        m.directory = d
        return m
    family = FAMILIES.get(str(cfg.get("model_type", "")).lower())
    if family is None:
        raise ParadecError(f"'{name_or_path}' is not a LLaDA-, Dream- or SDAR-shaped checkpoint (model_type {cfg.get('model_type')!r})")
    return _load_hf(d, cfg, family, dt, device, block_size)


def _load_converted(d: Path, name: str, dtype, device, block_size):
    from ..models.loader import load_hf
    from .converted import load_converted, read_config
    from .converted_dlm import ConvertedDLM

    base = read_config(d)["paradec_converted"]["base"]
    loaded = load_hf(base, dtype=dtype, device=device)
    model = load_converted(d, loaded.model, copy_base=False)
    m = ConvertedDLM(model, loaded.tokenizer, name=name, block_size=block_size)
    m.directory = d
    return m


def _load_hf(d: Path, cfg: dict, family: str, dt, device, block_size):
    import transformers

    tok = None
    if (d / "tokenizer_config.json").is_file() or (d / "tokenizer.json").is_file():
        tok = transformers.AutoTokenizer.from_pretrained(str(d), trust_remote_code=True, local_files_only=True)
    mask_id = cfg.get("mask_token_id")
    if mask_id is None and tok is not None:
        mask_id = tok.mask_token_id
        if mask_id is None and "<|MASK|>" in tok.get_vocab():
            mask_id = tok.convert_tokens_to_ids("<|MASK|>")
    if mask_id is None and family == "llada":
        mask_id = LLADA_MASK_ID
    if mask_id is None:
        raise ParadecError(f"'{d.name}' has no mask token (no mask_token_id in config.json nor a mask token in the tokenizer)")
    auto = cfg.get("auto_map", {})
    cls = transformers.AutoModelForCausalLM if "AutoModelForCausalLM" in auto else transformers.AutoModel
    try:
        model = cls.from_pretrained(str(d), trust_remote_code=True, local_files_only=True, dtype=dt)
    except Exception as e:  # noqa: BLE001 - a broken checkpoint: one line
        raise ParadecError(f"could not load '{d}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    model = model.to(device).eval()
    vocab = int(cfg.get("vocab_size") or model.get_output_embeddings().weight.shape[0])
    if family == "sdar":
        bs = block_size or cfg.get("block_size") or cfg.get("block_length")
        if not bs:
            raise ParadecError("an SDAR-shaped model needs a block size (config block_size, or block_size=N)")
    eos = cfg.get("eos_token_id", tok.eos_token_id if tok is not None else None)
    eos = eos[0] if isinstance(eos, list) else eos
    spec = DiffusionSpec(
        mask_id=int(mask_id), eos_id=int(eos if eos is not None else -1), pad_id=int(cfg.get("pad_token_id") or 0),
        vocab_size=vocab, max_len=int(cfg.get("max_position_embeddings") or cfg.get("max_sequence_length") or 4096),
        shifted=family == "dream", attention="block_causal" if family == "sdar" else "bidirectional",
        block_size=int(bs) if family == "sdar" else None, caches=("none",),
    )
    return HFDiffusionLM(model, spec, name=d.name, tokenizer=tok)
