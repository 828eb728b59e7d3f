"""Shared fixtures: tests never touch the user's cache or ~/.medmnist, and never need the internet.

Three fixtures carry the studies of the tests:

* ``make_config(**changes)``: the one tiny-config factory. Its base, :data:`TINY`, is a study of one 2D task with
  Scratch and Full at a few steps and no side experiment, on the synthetic files (a second or two); a test states
  only what it exercises, e.g. ``make_config(seeds=[0, 1], strategies=["lora"])``. Mappings given before the
  keywords apply first, so a file can name its own starting point: ``make_config(EVERY_EXPERIMENT, seeds=[0, 1])``.
* ``tiny_store``: a finished tiny study (:data:`STORE`) run once per session, shared by every test that only reads a
  store. A test that changes a store copies it first (``shutil.copytree``); the session checks at its end that no
  file of the shared store changed.
* ``synthetic_dir``: the synthetic files both read.

Tests that run a study, a notebook or a subprocess, or take more than about 3 s, are marked ``slow``: the inner loop
is ``pytest -m "not slow" tests`` (docs/contributing.md); ``make test`` runs everything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from stmedfm.core import paths
from stmedfm.data import synthetic
from stmedfm.core.config import StudyConfig

# Captured at import, before any test edits the environment: where CI keeps the real official files.
REAL_DATA = os.environ.get(paths.ENV_DATA)

SYNTHETIC_FLAGS = ("pathmnist", "bloodmnist", "dermamnist", "organmnist3d")
SYNTHETIC_N = {"train": 48, "val": 16, "test": 32}

#: The base of every tiny config: one 2D task (BloodMNIST) pretrained and adapted with Scratch and Full at 2 steps,
#: one seed, one worker, no few-shot, ablation, extended or calibration runs. ``data_dir`` defaults to the
#: synthetic files.
TINY = dict(study="tiny", seeds=[0], workers=1, pretrain_tasks=["bloodmnist"], pretrain_steps=2,
            downstream_tasks=["bloodmnist"], strategies=["scratch", "full"], scratch_steps_2d=2, finetune_steps_2d=2,
            fewshot_tasks={}, class_weight_ablation_tasks=[], leave_out_tasks=[], extended_tasks=[],
            calibration_task=None)

#: The shared store (changes to TINY): two 2D tasks pretrained together, Scratch / Full / LoRA transfer on both, one
#: few-shot run per task and the calibration outputs, so that every figure and a LoRA model can be read from it.
STORE = dict(pretrain_tasks=["bloodmnist", "dermamnist"], pretrain_steps=3,
             downstream_tasks=["bloodmnist", "dermamnist"], strategies=["scratch", "full", "lora"],
             fewshot_tasks={"dermamnist": 1, "bloodmnist": 1}, fewshot_k=[1], fewshot_splits=1,
             fewshot_strategies=["full"], calibration_task="bloodmnist", calibration_strategy="full")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point $STMEDFM_CACHE at a temporary directory so verification records never land in ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv(paths.ENV_CACHE, str(tmp_path_factory.mktemp("stmedfm-cache")))
    yield
    mp.undo()


@pytest.fixture
def no_default_data(monkeypatch, tmp_path_factory) -> Path:
    """A fresh empty HOME (so ~/.medmnist is empty) and no $STMEDFM_DATA / $STMEDFM_MIRROR; returns the HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(paths.ENV_DATA, raising=False)
    monkeypatch.delenv(paths.ENV_MIRROR, raising=False)
    return home


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Small synthetic files (48/16/32 per split) of the study's four flags, with a MANIFEST.json. Read-only use."""
    d = tmp_path_factory.mktemp("synthetic")
    synthetic.write_synthetic(d, SYNTHETIC_FLAGS, n=SYNTHETIC_N, seed=0)
    return d


@pytest.fixture(scope="session")
def make_config(synthetic_dir):
    """``make_config(*starts, **changes)``: a validated tiny :class:`StudyConfig` — :data:`TINY`, then each mapping
    of ``starts``, then ``changes`` (``data_dir`` may be a Path; it defaults to ``synthetic_dir``)."""

    def make(*starts: Mapping, **changes) -> StudyConfig:
        values: dict = {**TINY, "data_dir": synthetic_dir}
        for start in starts:
            values.update(start)
        values.update(changes)
        if isinstance(values["data_dir"], os.PathLike):
            values["data_dir"] = os.fspath(values["data_dir"])
        return StudyConfig.from_dict(values)

    return make


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def tiny_store(make_config, tmp_path_factory):
    """A finished tiny study (:data:`STORE`, study 'tiny') on the synthetic files, run once per session and shared:
    read it, or copy it before changing anything (checked when the session ends)."""
    from stmedfm.run.study import run_study

    store = run_study(make_config(STORE), out=tmp_path_factory.mktemp("tiny-store") / "tiny", progress=False)
    before = _files(store.root)
    yield store
    changed = sorted(set(_files(store.root).items()) ^ set(before.items()))
    assert not changed, f"a test changed the shared tiny store (copy it before writing): {changed}"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """$STMEDFM_DATA when it holds the official bloodmnist.npz, else skip (real files are never in the repo)."""
    if not REAL_DATA or not (Path(REAL_DATA).expanduser() / "bloodmnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not available: set ${paths.ENV_DATA} to a directory with bloodmnist.npz")
    return Path(REAL_DATA).expanduser()
