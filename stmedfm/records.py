"""What a run *is*, without torch: its spec (:class:`RunSpec`, whose key is its identity), its result record
(:class:`RunResult`), and the pretraining mix a config implies (:func:`sampling_probabilities`,
:func:`in_task_pretraining_steps`).

Kept apart from :mod:`stmedfm.train` (which computes runs) so that everything that reads results — the store's
tables, the report, the figures — can name a run and its pretraining mix without importing torch
(``tests/test_architecture.py`` checks that the readers import none of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stmedfm import registry
from stmedfm.config import StudyConfig

__all__ = ["RunSpec", "RunResult", "sampling_probabilities", "in_task_pretraining_steps"]


@dataclass
class RunSpec:
    """Everything that defines one downstream run; its hash is the run's identity in the result store."""

    task: str
    strategy: str
    seed: int
    steps: int
    lr: float
    class_weights: bool
    pretrain: tuple[str, ...] = ()  #: pretraining tasks of the starting checkpoint; () for scratch
    k: int = 0  #: K-shot per class; 0 = the full train split
    fewshot_split: int = -1  #: index of the random K-shot split or data-fraction repeat; -1 = none
    detail: bool = False  #: also store per-class report, confusion matrix and reliability bins
    fraction: float = 1.0  #: stratified fraction of the train split (data efficiency); 1.0 = all of it

    def key(self) -> dict:
        key = {"task": self.task, "strategy": self.strategy, "seed": self.seed, "steps": self.steps,
               "lr": self.lr, "class_weights": self.class_weights, "pretrain": "+".join(self.pretrain),
               "k": self.k, "fewshot_split": self.fewshot_split}
        if self.fraction != 1.0:  # only when set, so the identity of every run without it is unchanged
            key["fraction"] = self.fraction
        return key


@dataclass
class RunResult:
    spec: RunSpec
    metrics: dict[str, float]
    total_params: int
    trainable_params: int
    seconds: float
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)  #: where it was computed (filled by the worker)
    #: per-image test probabilities (n_test x C, float16, rows of the evaluated split in file order): what the
    #: hierarchical bootstrap over seeds x test images resamples (stmedfm.stats.hierarchical_bootstrap)
    predictions: np.ndarray | None = None


def sampling_probabilities(cfg: StudyConfig, tasks: list[str]) -> dict[str, float]:
    """Probability of drawing each task at a pretraining step, from the *official* train sizes."""
    if cfg.task_sampling in ("uniform", "all_tasks"):
        return {t: 1 / len(tasks) for t in tasks}
    if cfg.task_sampling == "temperature":
        w = {t: registry.get(t).n_samples["train"] ** cfg.sampling_alpha for t in tasks}
        total = sum(w.values())
        return {t: v / total for t, v in w.items()}
    return registry.train_proportions(tasks)


def in_task_pretraining_steps(cfg: StudyConfig) -> dict[str, float]:
    """Pretraining task -> the expected number of pretraining steps that drew it (``pretrain_steps`` x its
    sampling probability; every step for ``all_tasks``): the in-task steps a pretrained model has seen before its
    own, for contrasts of Scratch and Full at equal in-task steps (issue 28)."""
    if not cfg.pretrain_tasks:
        return {}
    if cfg.task_sampling == "all_tasks":
        return {t: float(cfg.pretrain_steps) for t in cfg.pretrain_tasks}
    return {t: cfg.pretrain_steps * p for t, p in sampling_probabilities(cfg, list(cfg.pretrain_tasks)).items()}
