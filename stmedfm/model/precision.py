"""Numeric precision of training and evaluation: ``fp32`` (default), ``bf16`` or ``auto``.

``bf16`` runs the forward pass (and so its backward) under ``torch.autocast`` with bfloat16 on the CPU or a CUDA
device; the weights, the optimiser state, the loss (computed in fp32 from the logits) and every metric stay
fp32/fp64. ``fp16`` is what ``auto`` picks on a CUDA device without bf16 (a T4): float16 autocast with a gradient
scaler. ``fp32`` does nothing at all, so the reference numbers stay bit-for-bit what they were.

``auto`` picks, and :attr:`Precision.reason` says why:

* a CUDA device with native bf16 (compute capability >= 8.0: A100, H100, L4, ...) -> ``bf16``;
* a CUDA device without it (a T4, capability 7.5) -> ``fp16`` with a gradient scaler;
* a CPU with native bf16 instructions -> ``bf16``; any other CPU -> ``fp32``.

Decision, measured (docs/performance.md; ``results/bench.csv``): a CPU counts as native when it has
``amx_bf16`` (Intel Sapphire Rapids and later: bf16 matrix tiles) **or** ``avx512_bf16`` (Intel Cooper Lake, AMD
Zen 4 and later: the ``vdpbf16ps`` dot product that oneDNN uses for bf16 convolutions and matmuls). On an
AMD EPYC Zen 4 (avx512_bf16, no AMX) bf16 autocast was measured faster than fp32 in every throughput measure of
this model (see :data:`NATIVE_CPU_FLAGS`); on CPUs with neither flag bf16 is emulated (7x slower on an AVX2 EPYC),
so ``auto`` stays fp32 there, and ``stmedfm bench`` says so instead of timing it.

Run identity (:mod:`stmedfm.run.planning`): precision enters a run's id only when it is not fp32, and ``auto`` enters as
what it resolved to, so ``auto`` on a CPU without native bf16 *is* the fp32 run.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from stmedfm.core import registry
from stmedfm.core.errors import StmedfmError
from stmedfm.core.provenance import cpu_flags  # one definition, there

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  #: fp16 is CUDA only (what ``auto`` picks on a T4)
#: CPU flags (as in /proc/cpuinfo) that count as native bf16 for ``auto``; see the module docstring
NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """What a run computes in: ``name`` (fp32 | bf16 | fp16) on ``device_type``, and why (``reason``)."""

    requested: str
    name: str
    device_type: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def autocast(self):
        """The context the forward pass runs in (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self):
        """A gradient scaler for fp16 (its small exponent range underflows gradients), else None."""
        if self.name == "fp16":
            return torch.amp.GradScaler(self.device_type)
        return None

    def describe(self) -> str:
        return f"{self.name} on {self.device_type} (asked: {self.requested}; {self.reason})"


def native_cpu_bf16(flags: frozenset[str] | None = None) -> str | None:
    """The flag that makes bf16 native on this CPU (see :data:`NATIVE_CPU_FLAGS`), or None."""
    flags = cpu_flags() if flags is None else flags
    return next((f for f in NATIVE_CPU_FLAGS if f in flags), None)


def _cuda_capability(device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def resolve(requested: str, device: torch.device | str | None = None, flags: frozenset[str] | None = None,
            cuda_capability: tuple[int, int] | None = None) -> Precision:
    """The precision a run on ``device`` (default: CUDA when present, else CPU) computes in.

    ``flags`` (CPU flags) and ``cuda_capability`` override what is read from the machine (tests mock them).
    """
    if requested not in PRECISIONS:
        raise StmedfmError(f"Unknown precision '{requested}'.{registry.closest(str(requested), PRECISIONS)} "
                           f"Choose one of fp32, bf16, auto (fp16: CUDA only).")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    kind = device.type
    if requested == "fp32":
        return Precision(requested, "fp32", kind, "asked for")
    if kind == "cuda":
        cap = _cuda_capability(device) if cuda_capability is None else tuple(cuda_capability)
        native = cap >= (8, 0)
        if requested == "auto":
            if native:
                return Precision(requested, "bf16", kind, f"CUDA capability {cap[0]}.{cap[1]} runs bf16 natively")
            return Precision(requested, "fp16", kind, f"CUDA capability {cap[0]}.{cap[1]} has no native bf16: "
                                                      f"fp16 with a gradient scaler")
        reason = "asked for" + ("" if native or requested == "fp16" else
                                f" (CUDA capability {cap[0]}.{cap[1]} emulates bf16: slow)")
        return Precision(requested, requested, kind, reason)
    if kind != "cpu":
        if requested == "auto":
            return Precision(requested, "fp32", kind, f"no bf16 policy for device '{kind}'")
        return Precision(requested, requested, kind, "asked for")
    # CPU
    if requested == "fp16":
        raise StmedfmError("precision 'fp16' needs a CUDA device (it is what 'auto' picks on a GPU without bf16); "
                           "on a CPU use 'bf16' or 'auto'.")
    flag = native_cpu_bf16(flags)
    if requested == "auto":
        if flag:
            return Precision(requested, "bf16", kind, f"the CPU has {flag}")
        return Precision(requested, "fp32", kind, f"the CPU has none of {', '.join(NATIVE_CPU_FLAGS)}: "
                                                  f"bf16 would be emulated (slower)")
    return Precision(requested, "bf16", kind, "asked for" + ("" if flag else " (this CPU emulates bf16: slow)"))


@functools.lru_cache(maxsize=16)
def _resolved_name(requested: str, device_type: str) -> str:
    return resolve(requested, device_type).name


def identity_name(requested: str) -> str:
    """What a config's ``precision`` means for run identity on this machine: ``auto`` as what it resolves to."""
    if requested in ("fp32", "bf16", "fp16"):
        return requested
    return _resolved_name(requested, "cuda" if torch.cuda.is_available() else "cpu")
