"""The tables that describe the study's inputs rather than its results: the data files (Table 1, split sizes, class
distributions; notebook 01), parameter counts computed from the model (Table 4 beside the paper's, notebook 02;
every strategy's counts, notebook 10) and the software that computes. They load files and build models, so they
need torch; the report of results (:mod:`stmedfm.analysis.report`, :mod:`stmedfm.analysis.tables`) reads parameter counts from the
store (``runs.csv``) and imports none of it (``tests/test_architecture.py``).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import numpy as np
import pandas as pd
import torch

from stmedfm.core import registry, strategies
from stmedfm.core.config import PAPER_TASKS, StudyConfig
from stmedfm.data import class_weights, load_task, status_table
from stmedfm.model.peft import parameter_table
from stmedfm.analysis.report import paper_params, role_assignments

__all__ = ["table1", "split_sizes", "class_distribution", "imbalance_summary", "table4_against_paper", "counts",
           "package_versions"]


def table1(cfg: StudyConfig) -> pd.DataFrame:
    """Table 1 for the study's flags: their roles in this parameter file, modality, input shape, channels, classes,
    official split sizes, licence and the local status of the file (missing / verified / bad checksum)."""
    roles = role_assignments(cfg).groupby("flag", sort=False)["role"].agg(", ".join)
    frame = status_table(data_dir=cfg.data_dir, size=cfg.image_size, flags=cfg.all_tasks())
    frame.insert(1, "roles", frame["flag"].map(roles).fillna(""))
    frame.insert(3, "input shape", [str(registry.get(f).image_shape(cfg.image_size)) for f in frame["flag"]])
    return frame.drop(columns=["path"])


def split_sizes(cfg: StudyConfig) -> pd.DataFrame:
    """The split sizes read from the study's files, the tensor shape of one sample as loaded (2D grayscale repeated
    to 3 channels) and whether the sizes are the official ones; loads (and verifies) every file."""
    rows = []
    for flag in cfg.all_tasks():
        data = load_task(flag, size=cfg.image_size, data_dir=cfg.data_dir)
        sizes = {s: len(data[s]) for s in registry.SPLITS}
        rows.append({"flag": flag, "dim": data.info.modality, "loaded as": str(tuple(data["train"].images.shape[1:])),
                     "classes": data.info.n_classes, **sizes,
                     "official sizes": "yes" if sizes == data.info.n_samples else "no"})
    return pd.DataFrame(rows)


def class_distribution(cfg: StudyConfig) -> pd.DataFrame:
    """Per task and class: counts in each split, share of the training split, and the class weight that share
    implies under the study's rule (:func:`stmedfm.data.class_weights`, clipped to ``class_weight_clip``; 1 when
    ``class_weights`` is off)."""
    rows = []
    for flag in cfg.all_tasks():
        data = load_task(flag, size=cfg.image_size, data_dir=cfg.data_dir)
        n = data.info.n_classes
        counts = {s: torch.bincount(data[s].labels, minlength=n).tolist() for s in registry.SPLITS}
        weights = (class_weights(data["train"].labels, n, clip=tuple(cfg.class_weight_clip)).tolist()
                   if cfg.class_weights else [1.0] * n)
        total = sum(counts["train"])
        for c in range(n):
            rows.append({"task": flag, "class": c, "name": data.info.labels[c],
                         **{s: counts[s][c] for s in registry.SPLITS},
                         "train share": counts["train"][c] / total, "weight": weights[c]})
    return pd.DataFrame(rows)


def imbalance_summary(dist: pd.DataFrame) -> pd.DataFrame:
    """Per task of :func:`class_distribution`: classes, largest / smallest class of the training split, their
    ratio, and the weight range."""
    g = dist.groupby("task", sort=False)
    return pd.DataFrame({
        "classes": g.size(), "largest class": g["train"].max(), "smallest class": g["train"].min(),
        "ratio": g["train"].max() / g["train"].min(), "min weight": g["weight"].min(), "max weight": g["weight"].max(),
    }).reset_index()


def table4_against_paper(width: int = 64) -> pd.DataFrame:
    """Table 4 recomputed from the model at the paper's four flags and strategies, beside the paper's counts."""
    ours = parameter_table(tasks=PAPER_TASKS, strategies=strategies.PAPER, width=width)
    paper = paper_params().rename(columns={"total": "paper total", "trainable": "paper trainable"})
    out = ours.merge(paper, on=["task", "strategy"], how="left")
    out["same as paper"] = np.where((out["total"] == out["paper total"]) & (out["trainable"] == out["paper trainable"]),
                                    "yes", "no")
    return out


def counts(names=None, tasks=registry.PAPER_TASKS, width: int = 64) -> pd.DataFrame:
    """Table 4 for strategies ``names`` (default: every registered one): per strategy what it trains, its trainable
    parameters on each of ``tasks`` (the paper's four by default) and its total on the first task."""
    names = list(strategies.names() if names is None else names)
    t = parameter_table(tasks=tasks, strategies=names, width=width)
    wide = t.pivot(index="strategy", columns="task", values="trainable").reindex(index=names, columns=list(tasks))
    out = pd.DataFrame({"strategy": [strategies.label(s) for s in names],
                        "trains": [strategies.get(s).description for s in names]})
    for task in tasks:
        out[f"trainable ({task})"] = wide[task].to_numpy()
    first = t[t["task"] == tasks[0]].set_index("strategy")["total"]
    out[f"total ({tasks[0]})"] = [int(first[s]) for s in names]
    return out


def package_versions(packages=("stmedfm", "torch", "numpy", "pandas", "scikit-learn", "scipy", "matplotlib",
                               "seaborn", "papermill", "nbval")) -> pd.DataFrame:
    """Python, platform, CPU and the version of every package that computed or drew the results."""
    rows = [{"component": "python", "version": sys.version.split()[0]},
            {"component": "platform", "version": platform.platform()},
            {"component": "cpu cores", "version": str(os.cpu_count())},
            {"component": "torch device", "version": "cuda" if torch.cuda.is_available() else "cpu"}]
    for name in packages:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        rows.append({"component": name, "version": version})
    return pd.DataFrame(rows)
