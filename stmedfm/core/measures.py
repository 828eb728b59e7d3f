"""The metrics a study reports, defined once: each one's name in the tidy tables, its label in tables, figures and
sentences, and which way is better.

Every reader of results (tables, figures, the report, the claims, the methods and variant studies, the generated
findings) takes a metric's label and direction from :data:`METRICS`; :func:`stmedfm.core.stats.paired_test` orients
every paired difference with :func:`better` so that a positive difference favours ``a`` whatever the metric
(for ECE, a has the *lower* ECE). ``tests/test_measures.py`` fails when a second label table or a second
"lower is better" set appears in the package.

Plain data in the foundation layer (it imports only :mod:`stmedfm.core.errors`), so what the metrics are called
never needs numpy or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from stmedfm.core.errors import StmedfmError

__all__ = ["Metric", "METRICS", "get", "label", "axis_label", "higher_is_better", "better"]


@dataclass(frozen=True)
class Metric:
    """One metric: ``name`` (the ``metric`` column of ``metrics.csv``), ``label`` (short, for table headers and
    sentences), ``axis`` (the longer form figures print on an axis) and ``higher_is_better``."""

    name: str
    label: str
    axis: str
    higher_is_better: bool


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "accuracy", "accuracy", True),
    Metric("macro_f1", "macro-F1", "macro-F1", True),
    Metric("macro_auroc", "AUROC", "macro AUROC", True),
    Metric("ece", "ECE", "ECE", False),
    Metric("brier", "Brier", "Brier score", False),
    Metric("nll", "NLL", "NLL", False),
    Metric("ece_ts", "ECE (TS)", "ECE after temperature scaling", False),
    Metric("brier_ts", "Brier (TS)", "Brier score after temperature scaling", False),
    Metric("nll_ts", "NLL (TS)", "NLL after temperature scaling", False),
)}


def get(name: str) -> Metric:
    """The :class:`Metric` called ``name``; one line naming the known ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise StmedfmError(f"Unknown metric '{name}'; known: {', '.join(METRICS)}.") from None


def label(name: str) -> str:
    """The short label of ``name`` ('AUROC', 'macro-F1', 'ECE'); an unknown name is shown as it is."""
    return METRICS[name].label if name in METRICS else name


def axis_label(name: str) -> str:
    """The axis label of ``name`` ('macro AUROC'); an unknown name with '_' as spaces."""
    return METRICS[name].axis if name in METRICS else name.replace("_", " ")


def higher_is_better(name: str) -> bool:
    """Whether a larger value of ``name`` is better (False for ECE, Brier and NLL)."""
    return get(name).higher_is_better


def better(name: str | None) -> int:
    """+1 when a higher value of metric ``name`` is better, -1 when a lower one is (``None``: a quantity without a
    metric, e.g. a transfer gap, where higher is better). A paired difference ``a - b`` times this sign is positive
    exactly when it favours ``a`` (:func:`stmedfm.core.stats.paired_test`)."""
    return 1 if name is None or higher_is_better(name) else -1
