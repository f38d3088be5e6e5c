"""What the benchmark records about the machine and the process: hardware and software
versions, the load average, resident memory, and the paradec version and git commit."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (``getrusage``), in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / 1024 if sys.platform == "darwin" else kb / 1024


def rss_mb() -> float | None:
    """The process's current resident memory in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def loadavg() -> float | None:
    """The 1-minute load average: other work on the machine skews timings, so runs record it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(device: str) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    try:
        import importlib.metadata as md

        info["llama_cpp_python"] = md.version("llama_cpp_python")
    except Exception:  # noqa: BLE001
        info["llama_cpp_python"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def paradec_version() -> str | None:
    try:
        import importlib.metadata as md

        return md.version("paradec")
    except Exception:  # noqa: BLE001
        return None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, whether the tracked sources differ from it) of the checkout paradec runs from;
    (None, None) for an installed copy or when git is unavailable."""
    root = Path(__file__).resolve().parents[3]  # src/paradec/bench/machine.py -> checkout root
    if not (root / ".git").exists():
        return None, None

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return commit, (bool(status) if status is not None else None)
