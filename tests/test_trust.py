"""Issue 29 (trust, second pass), items 2-5, 7 and 8: every input checked, every failure one line. Each test is a
reproduction from the issue and failed before its fix (item 1 is tests/test_seal.py, item 6 tests/test_download.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from stmedfm import synthetic
from stmedfm.cli import main
from stmedfm.errors import StmedfmError
from stmedfm.planning import plan, run_id, study_data
from stmedfm.store import ResultStore, StoreWarning
from stmedfm.study import run_study

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = dict(strategies=["scratch"])


@pytest.fixture(scope="module")
def other_bytes(tmp_path_factory) -> Path:
    """BloodMNIST-shaped synthetic files with other bytes than ``synthetic_dir`` (another seed)."""
    d = tmp_path_factory.mktemp("other-bytes")
    synthetic.write_synthetic(d, ["bloodmnist"], n={"train": 48, "val": 16, "test": 32}, seed=1)
    return d


# --- 2. a run record is checked against the study's data, not only by its id ----------------------------------
def _forge(source: ResultStore, rid: str, into: Path) -> Path:
    """The issue's reproduction: a run file of other data renamed to this study's run id (its run_id edited)."""
    rec = json.loads(next((source.root / "runs").glob("*.json")).read_text())
    rec["run_id"] = rid
    rec["metrics"]["macro_auroc"] = 1.0
    path = into / "runs" / f"{rid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


@pytest.mark.slow
def test_a_record_of_other_data_is_quarantined_not_reused(make_config, other_bytes, tmp_path):
    a, b = make_config(**SCRATCH), make_config(data_dir=other_bytes, **SCRATCH)
    source = run_study(a, out=tmp_path / "A", progress=False)
    rid = run_id(b, plan(b)[0].spec, study_data(b))
    # through --reuse: a store whose file carries b's id but was computed on a's bytes
    forged = ResultStore(shutil.copytree(source.root, tmp_path / "R"))
    _forge(source, rid, forged.root)
    with pytest.warns(StoreWarning, match=r"computed on bloodmnist=synthetic:sha256:\w+, and this study reads "):
        store = run_study(b, out=tmp_path / "B", progress=False, reuse=[forged.root])
    rec = store.read_run(rid)
    assert str(study_data(b)["bloodmnist"]) in rec["provenance"]["data"] and rec["metrics"]["macro_auroc"] != 1.0
    assert len(list((store.root / "quarantine").iterdir())) == 1
    assert forged.has_run(rid), "the other store is never changed"
    # already in runs/ of the store (a resumed study)
    _forge(source, rid, store.root)
    with pytest.warns(StoreWarning, match="and this study reads"):
        run_study(b, out=store.root, progress=False)
    assert store.read_run(rid)["metrics"]["macro_auroc"] != 1.0
