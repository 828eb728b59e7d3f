"""Post-hoc temperature scaling (Guo et al., 2017), the fix the paper recommends when ECE is high (Sec. V).

The paper reports raw probabilities only; this module lets the study show what one scalar temperature,
fitted on validation logits, does to ECE and Brier without changing any prediction (argmax is invariant
to dividing logits by T > 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stmedfm.core.errors import StmedfmError


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis in float64, shifted by the row maximum so large logits cannot overflow."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0:
        raise StmedfmError("softmax needs at least one axis of logits; got a scalar.")
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_logits(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise StmedfmError(f"logits must have shape (N, C) with C >= 2; got shape {z.shape}.")
    if not np.all(np.isfinite(z)):
        raise StmedfmError("logits contain NaN or infinite values; check the model outputs.")
    return z


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise StmedfmError(f"temperature must be a finite number > 0; got {temperature!r}.")
    return t


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """Scalar T > 0 minimising the NLL of softmax(logits / T) on held-out logits; fit on validation, not test.

    Optimises log T (so T stays positive without constraints) with L-BFGS and a strong-Wolfe line search in
    float64, starting from T = 1. Deterministic: no randomness, CPU float64 arithmetic.
    """
    z = _check_logits(logits)
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise StmedfmError(f"labels must have shape ({z.shape[0]},) to match logits {z.shape}; got shape {y.shape}.")
    if z.shape[0] == 0:
        raise StmedfmError("Cannot fit a temperature on zero samples; the validation split is empty.")
    if not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= z.shape[1]:
        raise StmedfmError(f"labels must be integer class indices in [0, {z.shape[1] - 1}].")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise StmedfmError(f"max_iter must be a positive integer; got {max_iter!r}.")

    logits_t = torch.from_numpy(z)
    labels_t = torch.from_numpy(y.astype(np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=int(max_iter), line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / torch.exp(log_t), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(log_t).item())
    if not math.isfinite(temperature) or temperature <= 0:
        raise StmedfmError(
            "Temperature scaling diverged (the validation logits may separate the classes perfectly); "
            "use more validation samples or skip calibration."
        )
    return temperature


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T) as float64; predictions (argmax) are unchanged."""
    z = _check_logits(logits)
    return softmax(z / _check_temperature(temperature))
