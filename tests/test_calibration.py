"""Temperature scaling recovers a known miscalibration factor and never changes predictions."""

from __future__ import annotations

import numpy as np
import pytest

from stmedfm.model.calibration import apply_temperature, fit_temperature, softmax
from stmedfm.core.errors import StmedfmError
from stmedfm.model.metrics import classification_metrics, ece, nll


def _well_specified(seed: int = 0, n: int = 20000, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution, so the calibrated temperature is exactly 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, c))
    cdf = np.cumsum(softmax(logits), axis=1)
    labels = (rng.random((n, 1)) > cdf).sum(axis=1)
    return logits, np.minimum(labels, c - 1)


def test_softmax_stable_and_normalised():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]])
    assert p.dtype == np.float64


def test_recovers_overconfidence_factor():
    logits, labels = _well_specified()
    over = 3.0 * logits  # over-confident model
    t = fit_temperature(over, labels)
    assert isinstance(t, float)
    assert abs(t - 3.0) < 0.3
    before, after = softmax(over), apply_temperature(over, t)
    assert nll(labels, after) < nll(labels, before)
    assert ece(labels, after) < ece(labels, before)
    assert ece(labels, after) < 0.02


def test_underconfidence_gives_t_below_one():
    logits, labels = _well_specified(seed=1)
    t = fit_temperature(logits / 2.0, labels)
    assert abs(t - 0.5) < 0.05


def test_calibrated_logits_give_t_near_one():
    logits, labels = _well_specified(seed=2)
    assert abs(fit_temperature(logits, labels) - 1.0) < 0.05


def test_apply_temperature_rows_sum_to_one_and_argmax_unchanged():
    logits, labels = _well_specified(seed=3, n=2000)
    for t in (0.3, 1.0, 3.7):
        p = apply_temperature(logits, t)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))
        assert classification_metrics(labels, p)["accuracy"] == classification_metrics(labels, softmax(logits))["accuracy"]


def test_fit_is_deterministic():
    logits, labels = _well_specified(seed=4, n=3000)
    assert fit_temperature(3 * logits, labels) == fit_temperature(3 * logits, labels)


def test_bad_inputs():
    logits, labels = _well_specified(n=10)
    with pytest.raises(StmedfmError, match="labels"):
        fit_temperature(logits, labels[:5])
    with pytest.raises(StmedfmError, match="shape"):
        fit_temperature(logits[:, 0], labels)
    with pytest.raises(StmedfmError, match="NaN"):
        fit_temperature(np.full((10, 3), np.nan), labels)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(StmedfmError, match="temperature"):
            apply_temperature(logits, bad)
