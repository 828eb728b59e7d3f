"""Where a number was made: the machine, the software and the code version, recorded with every run.

Provenance is not identity. A run's identity (:func:`stmedfm.run.planning.run_id`) says what it computes — parameters
and data — so a committed result stays usable on any machine. Provenance says where and with what it was
computed, because the *same* seed gives bit-identical numbers only on the same hardware and software: recomputing
a run on another CPU (another SIMD instruction set in oneDNN/ATen kernels) changes floating-point summation order
and so the last digits of the weights, which a few hundred training steps can grow to differences of about 0.02
in accuracy and AUROC on a small test split (measured: README, "Reproducibility"). A store whose runs come from
several machines says so in its tables and report.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

from stmedfm import __version__

__all__ = ["ISA_FLAGS", "cpu_model", "cpu_flags", "isa_summary", "machine", "git_commit", "software"]

#: CPU flags worth naming with a machine: they decide which kernels run, and how fast bf16 is.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty when unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU model name ('AMD EPYC', 'Intel(R) Xeon(R) Platinum 8481C', ...)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def isa_summary(flags: frozenset[str] | None = None) -> str:
    """The flags of :data:`ISA_FLAGS` present, e.g. 'avx2 avx512f avx512_bf16'."""
    flags = cpu_flags() if flags is None else flags
    return " ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"


def machine(device: str | torch.device | None = None) -> str:
    """One line naming what computed a run: the GPU on CUDA, else the CPU model, the instruction set ATen
    dispatches to (``torch.backends.cpu.get_cpu_capability()``, the one oneDNN's kernels follow) and the ISA flags."""
    if device is not None and torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = "unknown"
    return f"{cpu_model()}; ATen {isa}; {isa_summary()}"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the code that runs, when it runs from a git checkout ('+dirty' with uncommitted changes to
    tracked files), else '' (an installed package)."""
    here = Path(__file__).resolve().parents[1]  # the package, stmedfm/
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")


def software() -> dict[str, str]:
    """Versions that can change a number: stmedfm, its commit, torch, and peft when installed (its initialisations,
    e.g. VeRA's projections, shape the peft strategies' numbers; kept in each run's record, not in its id)."""
    out = {"stmedfm": __version__, "git_commit": git_commit(), "torch": str(torch.__version__)}
    try:
        out["peft"] = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        pass
    return out
