"""Test-set metrics of the paper (Sec. III.H): accuracy, macro-F1, macro AUROC, ECE, Brier, plus NLL.

Everything takes integer labels ``y_true`` of shape (N,) and class probabilities ``probs`` of shape (N, C)
(rows summing to 1; pass softmax outputs, not logits) and returns plain Python floats or pandas / numpy
tables, so results serialise to JSON/CSV without torch. scikit-learn computes every metric it has;
ECE and the multiclass Brier score are written here because scikit-learn has no multiclass versions.

Conventions, chosen to match the paper and to be explicit where papers usually are not:

* ECE uses the top-class confidence and ``n_bins`` (15) equal-width bins that are right-closed,
  bin ``b`` = ``(b/n, (b+1)/n]``; a confidence of exactly 0 goes to bin 0 (Guo et al., 2017).
* The multiclass Brier score sums the squared error over classes and averages over samples (range [0, 2]),
  as in Brier (1950); the paper's values (0.35-0.89) are on this scale, not the per-class mean.
* Macro AUROC is one-vs-rest, averaged over the classes whose one-vs-rest problem is defined (the class
  has at least one positive and one negative in ``y_true``); other classes are skipped rather than
  crashing a small or few-shot test split. For C == 2 it is the AUROC of the positive class.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from stmedfm.core.errors import StmedfmError

NLL_EPS = 1e-12
_ROW_SUM_ATOL = 1e-3  # loose enough for float32 softmax, tight enough to catch logits passed as probs


def _check(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert inputs once, so every metric fails with the same clear message."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
        y = y[:, 0]
    if y.ndim != 1:
        raise StmedfmError(f"y_true must have shape (N,) (or (N, 1)); got shape {y.shape}.")
    if p.ndim != 2:
        raise StmedfmError(f"probs must have shape (N, C); got shape {p.shape}.")
    if p.shape[0] != y.shape[0]:
        raise StmedfmError(
            f"y_true has {y.shape[0]} samples but probs has {p.shape[0]} rows; they must describe the same samples."
        )
    if y.shape[0] == 0:
        raise StmedfmError("Cannot compute metrics on zero samples; the evaluation split is empty.")
    if p.shape[1] < 2:
        raise StmedfmError(f"probs must have at least 2 classes (columns); got {p.shape[1]}.")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise StmedfmError(f"y_true must hold integer class indices; got dtype {y.dtype} with non-integer values.")
        y = y.astype(np.int64)
    n_classes = p.shape[1]
    if y.min() < 0 or y.max() >= n_classes:
        raise StmedfmError(
            f"y_true holds labels in [{y.min()}, {y.max()}] but probs has {n_classes} classes; "
            f"labels must lie in [0, {n_classes - 1}]."
        )
    if not np.all(np.isfinite(p)):
        raise StmedfmError("probs contains NaN or infinite values; check the model outputs.")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6 or not np.allclose(p.sum(axis=1), 1.0, atol=_ROW_SUM_ATOL):
        raise StmedfmError(
            "probs rows must be probabilities in [0, 1] summing to 1; these look like logits or scores. "
            "Apply a softmax first (stmedfm.model.calibration.softmax)."
        )
    return y.astype(np.int64), p


def _bin_stats(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, sum of confidence, sum of correctness): the one binning shared by ECE and the diagram."""
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise StmedfmError(f"n_bins must be a positive integer; got {n_bins!r}.")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Edges b/n computed by correctly rounded division, so a confidence such as 0.6 equals the edge 9/15 exactly;
    # side='left' gives edges[i-1] < conf <= edges[i], i.e. right-closed bins; conf == 0 lands in bin 0.
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return counts, conf_sum, acc_sum


def ece(y_true, probs, n_bins: int = 15) -> float:
    """Expected calibration error: sum_b (n_b / N) |acc_b - conf_b| over right-closed equal-width bins."""
    y, p = _check(y_true, probs)
    counts, conf_sum, acc_sum = _bin_stats(y, p, n_bins)
    # (n_b/N) |acc_b - conf_b| = |acc_sum_b - conf_sum_b| / N, and empty bins contribute 0.
    return float(np.abs(acc_sum - conf_sum).sum() / counts.sum())


def reliability_bins(y_true, probs, n_bins: int = 15) -> pd.DataFrame:
    """Per-bin table behind the reliability diagram (Fig. 6); ``gap`` = accuracy - confidence (NaN if empty).

    A positive gap means under-confidence. ``ece == sum(count / N * |gap|)`` over non-empty bins.
    """
    y, p = _check(y_true, probs)
    counts, conf_sum, acc_sum = _bin_stats(y, p, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts > 0, conf_sum / counts, np.nan)
        accuracy = np.where(counts > 0, acc_sum / counts, np.nan)
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": counts.astype(np.int64),
            "confidence": confidence,
            "accuracy": accuracy,
            "gap": accuracy - confidence,
        }
    )


def brier(y_true, probs) -> float:
    """Multiclass Brier score: mean over samples of sum_c (p_c - onehot_c)^2 (range [0, 2])."""
    y, p = _check(y_true, probs)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def nll(y_true, probs) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped at 1e-12 so it stays finite."""
    y, p = _check(y_true, probs)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], NLL_EPS, None)).mean())


def macro_auroc(y_true, probs) -> float:
    """One-vs-rest macro AUROC over the classes whose OvR problem is defined; NaN if none is.

    For C == 2 this is the AUROC of class 1 scored by ``probs[:, 1]`` (the usual binary AUROC).
    """
    y, p = _check(y_true, probs)
    n_classes = p.shape[1]
    classes = [1] if n_classes == 2 else range(n_classes)
    aucs = []
    for c in classes:
        positives = y == c
        if positives.all() or not positives.any():  # no positives (absent class) or no negatives: undefined
            continue
        aucs.append(roc_auc_score(positives, p[:, c]))
    return float(np.mean(aucs)) if aucs else math.nan


def classification_metrics(y_true, probs) -> dict[str, float]:
    """All metrics of Tables 5-8b for one evaluation: accuracy, macro_f1, macro_auroc, ece, brier, nll."""
    y, p = _check(y_true, probs)
    labels = list(range(p.shape[1]))
    pred = p.argmax(axis=1)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "macro_auroc": macro_auroc(y, p),
        "ece": ece(y, p),
        "brier": brier(y, p),
        "nll": nll(y, p),
    }


def per_class_report(y_true, probs, labels: list[str] | None = None) -> pd.DataFrame:
    """Per-class support, precision, recall and F1, to show which classes a macro average hides."""
    y, p = _check(y_true, probs)
    n_classes = p.shape[1]
    if labels is None:
        names = [str(c) for c in range(n_classes)]
    else:
        names = [str(name) for name in labels]
        if len(names) != n_classes:
            raise StmedfmError(f"labels has {len(names)} names but probs has {n_classes} classes; give one name per class.")
    precision, recall, f1, support = precision_recall_fscore_support(
        y, p.argmax(axis=1), labels=list(range(n_classes)), zero_division=0
    )
    return pd.DataFrame(
        {
            "class": np.arange(n_classes),
            "name": names,
            "support": support.astype(np.int64),
            "precision": precision.astype(np.float64),
            "recall": recall.astype(np.float64),
            "f1": f1.astype(np.float64),
        }
    )


def confusion(y_true, probs) -> np.ndarray:
    """(C, C) confusion counts, rows = true class, columns = predicted (argmax) class (Fig. 7)."""
    y, p = _check(y_true, probs)
    return confusion_matrix(y, p.argmax(axis=1), labels=list(range(p.shape[1])))
