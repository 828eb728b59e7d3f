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

from stmedfm.data import synthetic
from stmedfm.cli import main
from stmedfm.core.errors import StmedfmError
from stmedfm.run.planning import DegenerateSplitWarning, preflight, run_id, study_data
from stmedfm.core.records import plan
from stmedfm.core.results import StoreWarning
from stmedfm.run.store import ResultStore
from stmedfm.run.study import run_study

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


# --- 3. saved inference weights carry their sha256 --------------------------------------------------------------
def test_saved_weights_are_checked_at_load(tiny_store, tmp_path):
    """The issue's reproduction: one tensor of models/<rid>.pt scaled by 3 was loaded as is (predictions differed
    by up to 0.052); a foreign pickle was refused only by torch's raw UnpicklingError."""
    import torch

    from stmedfm.core import seal
    from stmedfm.run.inference import load_model, model_path

    store = ResultStore(shutil.copytree(tiny_store.root, tmp_path / "S"))
    first = load_model(store.root, task="bloodmnist", strategy="full", seed=0)
    saved = model_path(store, first.run_id)
    assert seal.load(store.root)["files"][f"models/{saved.name}"] == seal.sha256_file(saved)
    assert load_model(store.root, task="bloodmnist", strategy="full", seed=0).source == "saved"
    state = torch.load(saved, weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name] * 3
    torch.save(state, saved)
    with pytest.raises(StmedfmError, match="is not the model this store saved \\(its sha256 is not the one"):
        load_model(store.root, task="bloodmnist", strategy="full", seed=0)

    class Foreign:  # a pickle that is not a state dict (weights_only refuses it)
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save(Foreign(), saved)
    seal.record(store.root, {f"models/{saved.name}": seal.sha256_file(saved)})  # digests forged too
    with pytest.raises(StmedfmError, match=r"Cannot load '.*\.pt' \(UnpicklingError"):
        load_model(store.root, task="bloodmnist", strategy="full", seed=0)
    saved.unlink()  # as the message says: deleted, the model is re-materialised and saved again
    assert load_model(store.root, task="bloodmnist", strategy="full", seed=0).source == "re-materialised"


# --- 4. an explicit --data-dir is the only place looked ----------------------------------------------------------
MIN = ["-p", "seeds=1", "-p", "strategies=[scratch]", "-p", "fewshot_tasks={}", "-p", "class_weight_ablation_tasks=[]",
       "-p", "leave_out_tasks=[]", "-p", "extended_tasks=[]", "-p", "calibration_task=null", "-p",
       "downstream_tasks=[retinamnist]", "-p", "pretrain_tasks=[retinamnist]", "-p", "scratch_steps_2d=2", "-q"]


@pytest.fixture(scope="module")
def retina_env(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("retina-env")
    synthetic.write_synthetic(d, ["retinamnist"], n={"train": 48, "val": 16, "test": 32}, seed=0)
    return d


@pytest.mark.parametrize("case", ["missing", "empty", "fifo", "directory", "urandom"])
def test_an_explicit_data_dir_never_falls_back(case, retina_env, tmp_path, monkeypatch, capsys):
    """The issue's reproduction: `--data-dir /nonexistent` (or an empty folder, a FIFO, a directory or a link to
    /dev/urandom named retinamnist.npz) ran on the file in $STMEDFM_DATA and exited 0."""
    monkeypatch.setenv("STMEDFM_DATA", str(retina_env))
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    target = folder / "retinamnist.npz"
    if case == "fifo":
        os.mkfifo(target)
    elif case == "directory":
        target.mkdir()
    elif case == "urandom":
        target.symlink_to("/dev/urandom")
    rc = main(["study", str(ROOT / "params" / "smoke.yaml"), *MIN, "--data-dir", str(folder), "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"'{folder}'" in err and str(retina_env) not in err
    assert not (tmp_path / "out" / "metrics.csv").exists()


# --- 5. a write failure is one line; the store stays intact and the command resumes -----------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_write_is_one_line_and_loses_nothing(code, tiny_store, tmp_path, monkeypatch, capsys):
    """ENOSPC (a full disk), EACCES and EROFS (a read-only folder; tests run as root, whom chmod does not stop,
    so the refusal is raised where the write happens)."""
    import stmedfm.core.io

    store = shutil.copytree(tiny_store.root, tmp_path / "S")
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    real = os.replace

    def failing(src, dst, *a, **k):
        if str(dst).endswith(".csv"):
            raise OSError(code, os.strerror(code), str(src))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(stmedfm.core.io.os, "replace", failing)
    assert main(["tables", str(store)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"cannot write '{store / 'tables'}/table" in err and os.strerror(code) in err
    assert "the store is intact" in err and "resumes" in err
    after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before, "nothing changed, no temporary file left"
    monkeypatch.setattr(stmedfm.core.io.os, "replace", real)
    assert main(["tables", str(store)]) == 0


_UNDER_ULIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = 200 * 1024  # `ulimit -f 200`
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from stmedfm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_file_too_large_is_one_line_and_the_study_resumes(retina_env, tmp_path):
    """The issue's reproduction: `(ulimit -f 200; stmedfm study …)` was a traceback ending in
    `OSError: [Errno 27] File too large` from stmedfm/core/io.py. A checkpoint (about 0.7 MB) exceeds 200 KiB."""
    args = ["study", str(ROOT / "params" / "smoke.yaml"), *MIN, "-p", "strategies=[full]", "--data-dir",
            str(retina_env), "--out", str(tmp_path / "S")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STMEDFM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", _UNDER_ULIMIT, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot write '" in done.stderr and "File too large" in done.stderr and "the store is intact" in done.stderr
    assert not list((tmp_path / "S").rglob(".*.tmp")), "no partial file is left"
    again = subprocess.run([sys.executable, "-m", "stmedfm", *args], capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert ResultStore(tmp_path / "S").table("metrics")["run_id"].nunique() == 1


# --- 7. sizes and precisions that cannot be meant ------------------------------------------------------------------
@pytest.mark.parametrize("field, strategy, trainable", [("lora_r", "lora", "76,800,"),
                                                        ("adapter_bottleneck", "adapter", "25,800,")])
def test_a_peft_size_larger_than_the_model_is_refused_unless_forced(field, strategy, trainable, retina_env, tmp_path,
                                                                   capsys):
    """The issue's reproduction: lora_r=100000 trained 76.8 M parameters of a 160 k model, adapter_bottleneck=100000
    25.8 M, silently."""
    rc = main(["study", str(ROOT / "params" / "smoke.yaml"), *MIN, "-p", f"strategies=[{strategy}]", "-p",
               f"{field}=100000", "--data-dir", str(retina_env), "--out", str(tmp_path / "S")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"'{field}' = 100000 makes {strategy} train {trainable}" in err  # RetinaMNIST's head: 5 classes
    assert "than full fine-tuning of the whole model (159," in err and "allow_large_peft: true" in err
    assert not (tmp_path / "S" / "runs").exists()
    from stmedfm.core.config import StudyConfig
    from stmedfm.run.planning import check_limits

    check_limits(StudyConfig.from_dict({field: 100000, "allow_large_peft": True}))  # forced: accepted
    check_limits(StudyConfig.from_dict({field: 200}))  # large but smaller than the model: accepted


def test_explicit_bf16_on_a_cpu_that_emulates_it_is_refused_unless_forced(monkeypatch):
    import torch

    from stmedfm.core.config import StudyConfig
    from stmedfm.run.planning import check_limits

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    avx2 = frozenset({"avx2", "fma"})
    with pytest.raises(StmedfmError, match=r"precision: bf16 on this CPU .* is emulated, 10-26x slower than fp32 "
                                           r"\(measured on an AVX2 AMD EPYC\).*allow_emulated_bf16: true"):
        check_limits(StudyConfig.from_dict({"precision": "bf16"}), flags=avx2)
    check_limits(StudyConfig.from_dict({"precision": "bf16", "allow_emulated_bf16": True}), flags=avx2)
    check_limits(StudyConfig.from_dict({"precision": "bf16"}), flags=frozenset({"avx512_bf16"}))  # native
    check_limits(StudyConfig.from_dict({"precision": "auto"}), flags=avx2)  # auto picks fp32 there


# --- 8. a test or validation split of one class ------------------------------------------------------------------
@pytest.mark.slow
def test_a_split_of_one_class_is_named_at_load_and_the_table_says_why_its_cell_is_empty(make_config, tmp_path):
    """The issue's reproduction: a test split with one class gave AUROC NaN with no warning, and Table 7 showed a
    blank mean with n = 0."""
    from stmedfm import data
    from stmedfm.analysis.tables import write_tables

    import numpy as np

    from stmedfm.core import registry

    d = tmp_path / "data"
    target = synthetic.write_synthetic(d, ["bloodmnist"], n={"train": 48, "val": 16, "test": 32}, seed=0)["bloodmnist"]
    arrays = dict(np.load(target))
    for split in ("val", "test"):  # every evaluation sample of class 3
        arrays[f"{split}_labels"] = np.full_like(arrays[f"{split}_labels"], 3)
    np.savez_compressed(target, **arrays)
    digests = data.file_digests(target, ("sha256", "md5"))
    synthetic._merge_manifest(d, [{"name": target.name, "flag": "bloodmnist", "sha256": digests["sha256"],
                                   "md5": digests["md5"], "size": 28, "synthetic": True}])
    assert registry.get("bloodmnist").n_classes == 8
    data.release_cache()
    cfg = make_config(data_dir=d, **SCRATCH)
    with pytest.warns(DegenerateSplitWarning) as caught:
        preflight(cfg)
    said = sorted(str(w.message).split(" split")[0] for w in caught)
    assert said == ["bloodmnist: the test", "bloodmnist: the val"]
    assert "macro AUROC is undefined on it" in " ".join(str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateSplitWarning)
        store = run_study(cfg, out=tmp_path / "S", progress=False)
    write_tables(store.root)
    t7 = (store.root / "tables" / "table7_auroc.md").read_text()
    assert "undefined in all 1 run: AUROC needs two classes in the test split" in t7
    t5 = (store.root / "tables" / "table5_accuracy.md").read_text()
    assert "undefined" not in t5  # accuracy is defined on one class
