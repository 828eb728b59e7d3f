"""Shared fixtures: tests never touch the user's cache or ~/.medmnist, and never need the internet."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stmedfm import paths, synthetic

# Captured at import, before any test edits the environment: where CI keeps the real official files.
REAL_DATA = os.environ.get(paths.ENV_DATA)

SYNTHETIC_FLAGS = ("pathmnist", "bloodmnist", "dermamnist", "organmnist3d")
SYNTHETIC_N = {"train": 48, "val": 16, "test": 32}


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
def real_data_dir() -> Path:
    """$STMEDFM_DATA when it holds the official bloodmnist.npz, else skip (real files are never in the repo)."""
    if not REAL_DATA or not (Path(REAL_DATA).expanduser() / "bloodmnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not available: set ${paths.ENV_DATA} to a directory with bloodmnist.npz")
    return Path(REAL_DATA).expanduser()
