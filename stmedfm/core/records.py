"""What a run *is* and what a study runs, without torch: a run's spec (:class:`RunSpec`, whose key enters its
identity, :func:`stmedfm.run.planning.run_id`), its result record (:class:`RunResult`), the plan of a config
(:func:`plan`: every run and pretraining job its parameters ask for) and the pretraining mix a config implies
(:func:`sampling_probabilities`, :func:`in_task_pretraining_steps`).

Kept apart from :mod:`stmedfm.run.train` (which computes runs) so that everything that reads results — the store's
tables, the report, the figures — can name a run and its pretraining mix without importing torch
(``tests/test_architecture.py`` checks that the readers import none of it). Identities stay in
:mod:`stmedfm.run.planning`: they hold what ``precision: auto`` resolves to on this machine, which asks torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stmedfm.core import registry, strategies
from stmedfm.core.config import StudyConfig

__all__ = ["RunSpec", "RunResult", "PretrainJob", "PlannedRun", "EXPERIMENTS", "SELECTED_LR_EXPERIMENTS", "plan",
           "pretrain_jobs", "sampling_probabilities", "in_task_pretraining_steps"]

EXPERIMENTS = ("transfer", "fewshot", "class_weights", "leave_out", "extended", "budget", "data_efficiency",
               "lr_selection")


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
    #: hierarchical bootstrap over seeds x test images resamples (stmedfm.core.stats.hierarchical_bootstrap)
    predictions: np.ndarray | None = None


@dataclass(frozen=True)
class PretrainJob:
    """One pretraining run (a checkpoint): its seed and tasks. Its identity is
    :func:`stmedfm.run.planning.job_id` (it holds the config's pretraining fields and the data's bytes)."""

    seed: int
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class PlannedRun:
    experiment: str
    variant: str  #: the ablation setting this run stands for (e.g. 'weights off', '2D-only', 'extended')
    spec: RunSpec

    @property
    def pretrain_job(self) -> PretrainJob | None:
        return PretrainJob(self.spec.seed, self.spec.pretrain) if self.spec.pretrain else None


#: Experiments whose runs train at the learning rate selected on validation (``lr_grid``): those on the whole
#: train split at the standard data. Few-shot and data-efficiency runs train on subsets, where the best rate of
#: the full split says little, so they keep the configured one.
SELECTED_LR_EXPERIMENTS = ("transfer", "class_weights", "leave_out", "extended", "budget")


def plan(cfg: StudyConfig, selected: Mapping[tuple[str, str], float] | None = None) -> list[PlannedRun]:
    """Every (experiment, run) the parameters ask for, in a stable order; the same spec may appear twice.

    With ``lr_grid``, the plan holds the ``lr_selection`` runs (each grid point x ``lr_selection_seeds``) and, for
    each (strategy, task) that ``selected`` decides (:func:`stmedfm.core.selection.chosen` of the store's selection runs),
    the runs of :data:`SELECTED_LR_EXPERIMENTS` at the selected rate; runs still waiting for their selection are
    left out (the study plans again once the selection runs are in, :func:`stmedfm.run.study.run_study`)."""
    full_pretrain = tuple(cfg.pretrain_tasks)
    out: list[PlannedRun] = []
    selected = selected or {}

    def spec(task, strategy, seed, steps=None, class_weights=None, pretrain=None, k=0, split=-1, fraction=1.0,
             lr=None):
        steps = cfg.steps(task, strategy) if steps is None else steps
        class_weights = cfg.class_weights if class_weights is None else class_weights
        fresh = not strategies.get(strategy).pretrained
        pretrain = () if fresh else (full_pretrain if pretrain is None else pretrain)
        # the per-class / reliability / confusion outputs belong to the calibration task's standard run
        detail = (task == cfg.calibration_task and strategy == cfg.calibration_strategy and k == 0
                  and steps == cfg.steps(task, strategy) and class_weights == cfg.class_weights
                  and pretrain == (() if fresh else full_pretrain)
                  and split == -1 and fraction == 1.0)
        return RunSpec(task=task, strategy=strategy, seed=seed, steps=steps, lr=cfg.lr(strategy) if lr is None else lr,
                       class_weights=class_weights, pretrain=pretrain, k=k, fewshot_split=split, detail=detail,
                       fraction=float(fraction))

    for seed in cfg.lr_selection_seeds if cfg.lr_grid else ():
        for task in cfg.downstream_tasks:
            for strategy, lrs in cfg.lr_grid.items():
                for lr in lrs:
                    out.append(PlannedRun("lr_selection", f"lr={lr:g}", spec(task, strategy, seed, lr=lr)))
    for seed in cfg.seeds:
        for task in cfg.downstream_tasks:
            for strategy in cfg.strategies:
                out.append(PlannedRun("transfer", "", spec(task, strategy, seed)))
        for task, steps in cfg.fewshot_tasks.items():
            for k in cfg.fewshot_k:
                for split in range(cfg.fewshot_splits):
                    for strategy in cfg.fewshot_strategies:
                        out.append(PlannedRun("fewshot", f"K={k}", spec(task, strategy, seed, steps=steps, k=k, split=split)))
        for task in cfg.class_weight_ablation_tasks:
            for strategy in cfg.class_weight_ablation_strategies:
                for on in (True, False):
                    out.append(PlannedRun("class_weights", "weights on" if on else "weights off",
                                          spec(task, strategy, seed, class_weights=on)))
        for task in cfg.leave_out_tasks:
            without = tuple(t for t in full_pretrain if t != task)
            for strategy in cfg.leave_out_strategies:
                out.append(PlannedRun("leave_out", "all tasks", spec(task, strategy, seed)))
                out.append(PlannedRun("leave_out", f"without {task}", spec(task, strategy, seed, pretrain=without)))
        for task in cfg.extended_tasks:
            out.append(PlannedRun("extended", "extended", spec(task, "scratch", seed, steps=cfg.extended_scratch_steps)))
            out.append(PlannedRun("extended", "extended", spec(task, "full", seed, steps=cfg.extended_full_steps)))
        # beyond the paper: the same strategies at several step budgets (a budget equal to the standard one *is*
        # the transfer run), and stratified fractions of the train split with repeats (the repeat index is the
        # run's fewshot_split, which also seeds its head and batches)
        for task, budgets in cfg.budget_tasks.items():
            for steps in budgets:
                for strategy in cfg.budget_strategies:
                    out.append(PlannedRun("budget", f"{steps} steps", spec(task, strategy, seed, steps=steps)))
        for task in cfg.data_fraction_tasks:
            for fraction in cfg.data_fractions:
                for repeat in range(cfg.data_fraction_repeats):
                    for strategy in cfg.data_fraction_strategies:
                        out.append(PlannedRun("data_efficiency", f"{100 * fraction:g} %",
                                              spec(task, strategy, seed, split=repeat, fraction=fraction)))
    return [_at_selected_lr(cfg, p, selected) for p in out if not _waiting(cfg, p, selected)]


def _selects(cfg: StudyConfig, p: PlannedRun) -> bool:
    """Whether ``p`` trains at a learning rate selected on validation (:data:`SELECTED_LR_EXPERIMENTS`)."""
    return (p.experiment in SELECTED_LR_EXPERIMENTS and p.spec.strategy in cfg.lr_grid
            and p.spec.task in cfg.downstream_tasks)


def _waiting(cfg: StudyConfig, p: PlannedRun, selected: Mapping) -> bool:
    return _selects(cfg, p) and (p.spec.strategy, p.spec.task) not in selected


def _at_selected_lr(cfg: StudyConfig, p: PlannedRun, selected: Mapping) -> PlannedRun:
    if not _selects(cfg, p):
        return p
    return dataclasses.replace(p, spec=dataclasses.replace(p.spec, lr=selected[(p.spec.strategy, p.spec.task)]))


def pretrain_jobs(planned: list[PlannedRun]) -> list[PretrainJob]:
    """The pretraining jobs the planned runs start from, each once, by seed then tasks."""
    return sorted({p.pretrain_job for p in planned if p.pretrain_job}, key=lambda j: (j.seed, j.tasks))


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
