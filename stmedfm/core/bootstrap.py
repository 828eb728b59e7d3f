"""The hierarchical bootstrap over seeds x test images: how far a claim's estimate moves when *both* the training
randomness (seeds) and the finite test set (images) are resampled.

A run's test metric has two sources of error: the seed (initialisation, data order, pretraining checkpoint) and
the test images, a sample of the population that every run of a task shares. An interval over seeds alone
treats the test set as the population; with 298 test volumes (adrenalmnist3d) or 400 images (retinamnist) its
sampling error is as large as the effects. Each replicate here

1. draws one resample of the task's test images (multinomial counts ``w``, *shared* by every run of the task in
   that replicate, because every run is evaluated on the same images: this keeps the pairing of a claim);
2. recomputes every run's metric on that resample, from its stored per-image probabilities (:func:`replicates`);
3. draws the seeds with replacement (:func:`resample_seeds`) and averages the per-seed differences.

Written here rather than with ``scipy.stats.bootstrap`` because scipy resamples one level of one sample; two
nested levels with a resample shared across arms, and weighted versions of the paper's metrics evaluated for
thousands of weight vectors at once (one sort per class and run), are not something it offers. The weighted
metrics reproduce :mod:`stmedfm.model.metrics` exactly for unit weights (tested).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["REPLICATES", "image_weights", "replicates", "resample_seeds", "percentile_interval", "two_sided_p",
           "METRICS"]

#: Replicates of every hierarchical interval: a two-sided bootstrap p-value cannot go below 2 / (REPLICATES + 1)
#: (0.002), which keeps Holm over up to 25 rows of a family able to reject at 0.05.
REPLICATES = 1000
#: Replicates evaluated at once (memory: a few arrays of CHUNK x n_test float64).
CHUNK = 200
N_BINS = 15


def image_weights(n: int, replicates: int, seed: int) -> np.ndarray:
    """``replicates`` x ``n`` multinomial resampling counts of ``n`` test images (row = one bootstrap resample),
    deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(replicates, n))
    flat = (idx + (np.arange(replicates) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=replicates * n).reshape(replicates, n).astype(np.float64)


def _normalise(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


def _accuracy(y, p, w):
    return w @ (p.argmax(axis=1) == y).astype(np.float64) / w.sum(axis=1)


def _macro_f1(y, p, w):
    pred = p.argmax(axis=1)
    scores = []
    for c in range(p.shape[1]):
        tp = w @ ((pred == c) & (y == c)).astype(np.float64)
        fp = w @ ((pred == c) & (y != c)).astype(np.float64)
        fn = w @ ((pred != c) & (y == c)).astype(np.float64)
        denom = 2 * tp + fp + fn
        scores.append(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0))  # zero_division=0
    return np.mean(scores, axis=0)


def _auc(score: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted AUROC of one class for every row of ``w``: P(score_pos > score_neg) + P(tie) / 2 under the
    weights; NaN where the resample has no positive or no negative.

    One sort of the negatives per class and run, then per replicate a cumulative sum of the negatives' weights in
    score order: a positive's share is the weight of negatives strictly below its score plus half of those tied
    with it (found by ``searchsorted``), so the cost is linear in the test set for every replicate."""
    neg_idx, pos_idx = np.flatnonzero(~positive), np.flatnonzero(positive)
    order = neg_idx[np.argsort(score[neg_idx], kind="stable")]
    neg_scores = score[order]
    lo = np.searchsorted(neg_scores, score[pos_idx], side="left")
    hi = np.searchsorted(neg_scores, score[pos_idx], side="right")
    wt = w.T  # images x replicates: gathering images copies contiguous rows
    cum = np.zeros((len(order) + 1, w.shape[0]))
    np.cumsum(wt[order], axis=0, out=cum[1:])
    wp = wt[pos_idx]
    num = np.einsum("ij,ij->j", wp, cum[lo] + cum[hi]) * 0.5
    den = wp.sum(axis=0) * cum[-1]
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def _macro_auroc(y, p, w):
    classes = [1] if p.shape[1] == 2 else range(p.shape[1])
    aucs = np.stack([_auc(p[:, c], y == c, w) for c in classes])
    with warnings.catch_warnings():  # a resample without any defined class: NaN, as metrics.macro_auroc
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(aucs, axis=0)


def _ece(y, p, w):
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.arange(N_BINS + 1, dtype=np.float64) / N_BINS
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, N_BINS - 1)
    onehot = np.zeros((len(y), N_BINS))
    onehot[np.arange(len(y)), idx] = 1.0
    gap = (w * (correct - conf)) @ onehot  # per replicate and bin: sum of accuracy - confidence
    return np.abs(gap).sum(axis=1) / w.sum(axis=1)


def _brier(y, p, w):
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return w @ ((p - onehot) ** 2).sum(axis=1) / w.sum(axis=1)


#: The metrics the bootstrap can recompute from per-image probabilities (the names of stmedfm.model.metrics).
METRICS = {"accuracy": _accuracy, "macro_f1": _macro_f1, "macro_auroc": _macro_auroc, "ece": _ece,
           "brier": _brier}


def replicates(probs: np.ndarray, labels: np.ndarray, metric: str, weights: np.ndarray) -> np.ndarray:
    """``metric`` of one run on every resample of ``weights`` (rows), from its per-image probabilities."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    p = _normalise(probs)
    fn = METRICS[metric]
    return np.concatenate([np.atleast_1d(fn(y, p, weights[i:i + CHUNK])) for i in range(0, len(weights), CHUNK)])


def resample_seeds(n_seeds: int, replicates: int, seed: int) -> np.ndarray:
    """``replicates`` x ``n_seeds`` indices of seeds drawn with replacement (the outer level)."""
    return np.random.default_rng(seed).integers(0, n_seeds, size=(replicates, n_seeds))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def two_sided_p(values: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'the estimate is 0': twice the smaller share of replicates on either side
    of 0, with the +1 correction, so it is never 0 (floor 2 / (B + 1))."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    below, above = int((v <= 0).sum()), int((v >= 0).sum())
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(v) + 1)))
