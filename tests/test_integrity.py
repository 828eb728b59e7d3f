"""Issue 18: every number traceable to the data and parameters that made it; bad input loses nothing.

Each test reproduces a reported defect of the result store (on synthetic files in temporary folders) and failed
before its fix.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

import stmedfm.run.study as study_mod
from stmedfm.core import paths, provenance, seal
from stmedfm.data import synthetic
from stmedfm.cli import main
from stmedfm.core.errors import StmedfmError
from stmedfm.run.planning import official_data, run_id, study_data
from stmedfm.core.records import plan
from stmedfm.core.results import StoreWarning
from stmedfm.run.store import PROVENANCE, ResultStore
from stmedfm.run.study import run_study
from stmedfm.analysis.tables import write_tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def other_synthetic(tmp_path_factory) -> Path:
    """Synthetic files of the same flags and shapes as ``synthetic_dir`` but other bytes (another seed)."""
    d = tmp_path_factory.mktemp("synthetic-other")
    synthetic.write_synthetic(d, ["bloodmnist", "retinamnist"], n={"train": 48, "val": 16, "test": 32}, seed=1)
    return d


@pytest.fixture(scope="module")
def retina_synthetic(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synthetic-retina")
    synthetic.write_synthetic(d, ["retinamnist", "bloodmnist"], n={"train": 48, "val": 16, "test": 32}, seed=0)
    return d


def count_runs(monkeypatch) -> dict:
    calls = {"n": 0}
    real = study_mod.run_downstream

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(study_mod, "run_downstream", counting)
    return calls


# --- 1. the data is part of a run's identity ------------------------------------------------------------------
def test_committed_reference_results_keep_their_run_ids():
    """Data entered run identities without changing the id of any run on the official files: the committed
    results/offline (and the label-safe study) are still found by the ids they were stored under."""
    for name in ("offline", "offline_earlier_cpu", "offline_label_safe"):
        store = ResultStore(ROOT / "results" / name)
        cfg = store.config()
        ids = {run_id(cfg, p.spec, official_data(cfg)) for p in plan(cfg)}
        committed = set(store.table("runs")["run_id"])
        assert committed == ids, name


@pytest.mark.slow
def test_results_of_other_bytes_are_never_reused(make_config, other_synthetic, tmp_path, monkeypatch):
    a, b = make_config(), make_config(data_dir=other_synthetic)
    ids_a = {run_id(a, p.spec, study_data(a)) for p in plan(a)}
    ids_b = {run_id(b, p.spec, study_data(b)) for p in plan(b)}
    assert not ids_a & ids_b
    calls = count_runs(monkeypatch)
    run_study(a, out=tmp_path / "D", progress=False)
    assert calls["n"] == 2
    run_study(b, out=tmp_path / "D", progress=False)
    assert calls["n"] == 4, "the second data set must be computed, not served from the first one's runs"
    fresh = run_study(b, out=tmp_path / "fresh", progress=False)
    assert calls["n"] == 6
    pd.testing.assert_frame_equal(ResultStore(tmp_path / "D").table("metrics"), fresh.table("metrics"))


@pytest.mark.slow
def test_synthetic_and_real_runs_never_share_a_store(make_config, retina_synthetic, real_data_dir, tmp_path):
    """The issue's reproduction: a study on synthetic files, then the same study on the real files into the
    same folder, reused the synthetic AUROC 1.0 as a real result."""
    over = dict(pretrain_tasks=["retinamnist"], downstream_tasks=["retinamnist"], strategies=["scratch"])
    run_study(make_config(data_dir=retina_synthetic, **over), out=tmp_path / "D", progress=False)
    before = (tmp_path / "D" / "metrics.csv").read_bytes()
    with pytest.raises(StmedfmError, match="holds results on synthetic data, and this study reads real files"):
        run_study(make_config(data_dir=real_data_dir, **over), out=tmp_path / "D", progress=False)
    assert (tmp_path / "D" / "metrics.csv").read_bytes() == before
    run_study(make_config(data_dir=real_data_dir, **over), out=tmp_path / "R", progress=False)
    with pytest.raises(StmedfmError, match="holds results on real data, and this study reads synthetic files"):
        run_study(make_config(data_dir=retina_synthetic, **over), out=tmp_path / "R", progress=False)


def test_eval_batch_size_is_part_of_a_run_identity(make_config):
    cfg = make_config()
    spec = plan(cfg)[0].spec
    data = study_data(cfg)
    assert run_id(cfg.replace(eval_batch_size_2d=128), spec, data) != run_id(cfg, spec, data)
    assert run_id(cfg.replace(eval_batch_size_3d=16), spec, data) != run_id(cfg, spec, data)


def test_a_worker_with_other_files_refuses_to_run(make_config, other_synthetic):
    """A Dask worker finds its own copy of the data: it must be the bytes the client planned with."""
    cfg = make_config(data_dir=other_synthetic)
    planned_with = {t: i.digest for t, i in study_data(make_config()).items()}
    with pytest.raises(StmedfmError, match="A worker reads other files than the client planned with"):
        study_mod._run_job(cfg.to_dict(), "run-x", plan(cfg)[0].spec, None, planned_with)


# --- 2. names and places -----------------------------------------------------------------------------------------
MIN = ["-p", "seeds=1", "-p", "strategies=[scratch]", "-p", "fewshot_tasks={}", "-p", "class_weight_ablation_tasks=[]",
       "-p", "leave_out_tasks=[]", "-p", "extended_tasks=[]", "-p", "calibration_task=null", "-p",
       "downstream_tasks=[retinamnist]", "-p", "pretrain_tasks=[retinamnist]", "-p", "scratch_steps_2d=2", "-q"]


@pytest.mark.parametrize("name", ["../../escaped", "/abs/dir", ".", "..", "a/b", ""])
def test_a_study_name_cannot_write_outside_results(name, retina_synthetic, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "results").mkdir(parents=True)
    monkeypatch.setenv(paths.ENV_ROOT, str(project))
    before = sorted(p for p in tmp_path.rglob("*"))
    rc = main(["study", str(ROOT / "params" / "smoke.yaml"), *MIN, "-p", f"study={name}", "--data-dir",
               str(retina_synthetic)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("stmedfm: error: Parameter 'study' must be") and "Traceback" not in err
    assert sorted(p for p in tmp_path.rglob("*")) == before, "nothing may be written"


@pytest.mark.slow
def test_out_refuses_a_folder_that_is_not_a_store_of_the_study(retina_synthetic, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text("precious\n")
    (other / "config.yaml").write_text("study: someone_else\n")
    args = ["study", str(ROOT / "params" / "smoke.yaml"), *MIN, "--data-dir", str(retina_synthetic)]
    assert main([*args, "--out", str(other)]) == 2
    assert "is not empty and is a store of study 'someone_else'" in capsys.readouterr().err
    assert (other / "metrics.csv").read_text() == "precious\n" and len(list(other.iterdir())) == 2

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    assert main([*args, "--out", str(notes)]) == 2
    assert "is not empty and is not a result store (no store.json)" in capsys.readouterr().err

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main([*args, "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert f"The result folder '{a_file}' is a file" in err and "Traceback" not in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--out", str(empty)]) == 0  # a new or empty folder is fine, and becomes a store
    assert json.loads((empty / "store.json").read_text())["study"] == "smoke"
    assert main([*args, "--out", str(empty), "-p", "study=another"]) == 2
    assert "holds study 'smoke', not 'another'" in capsys.readouterr().err


def test_figures_out_at_a_file_is_a_clear_error(tiny_store, tmp_path, capsys):
    a_file = tmp_path / "f.png"
    a_file.write_text("x")
    assert main(["figures", str(tiny_store.root), "--out", str(a_file)]) == 2
    assert "The figure folder" in capsys.readouterr().err


# --- 4. config.yaml always describes the tables beside it -----------------------------------------------------
@pytest.mark.slow
def test_a_failed_study_leaves_config_and_tables_as_they_were(make_config, tmp_path, monkeypatch):
    store = run_study(make_config(), out=tmp_path / "D", progress=False)
    config, metrics = (store.root / "config.yaml").read_bytes(), (store.root / "metrics.csv").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(study_mod, "run_downstream", broken)
    with pytest.raises(RuntimeError, match="power cut"):
        run_study(make_config(width=128), out=tmp_path / "D", progress=False)
    assert (store.root / "config.yaml").read_bytes() == config
    assert (store.root / "metrics.csv").read_bytes() == metrics
    assert ResultStore(tmp_path / "D").config().width == 64


# --- 5. a damaged store heals ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_damaged_runs_and_checkpoints_are_quarantined_and_recomputed(make_config, tmp_path, monkeypatch):
    cfg = make_config(seeds=[0, 1])
    reference = run_study(cfg, out=tmp_path / "ref", progress=False)
    shutil.copytree(reference.root, tmp_path / "hurt")
    store = ResultStore(tmp_path / "hurt")
    runs = sorted((store.root / "runs").glob("*.json"))
    assert len(runs) == 4
    runs[0].write_text(runs[0].read_text()[:40])  # truncated
    runs[1].write_bytes(b"\xff\xfe garbage \x00")  # not UTF-8
    shutil.copy(runs[3], runs[2])  # a valid run file of another run
    ckpt = next((store.root / "checkpoints").glob("*.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated checkpoint
    damaged = [runs[0], runs[1], runs[2], ckpt]

    calls = count_runs(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_study(cfg, out=store.root, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]
    for path in damaged:
        assert any(msg.startswith(f"{path} is damaged") for msg in said), path
    assert any("it holds run" in msg for msg in said)
    # the two bloodmnist 'full' runs of the damaged checkpoint's seed are recomputed with it, plus the three
    # damaged run files (one of which may be among them)
    assert calls["n"] >= 3
    quarantined = sorted(p.name for p in (store.root / "quarantine").iterdir())
    assert len(quarantined) == 5  # 3 runs + checkpoint + its loss table: set aside, never deleted
    for name in ("metrics.csv", "per_class.csv", "pretrain_loss.csv"):
        if (reference.root / name).exists():
            assert (store.root / name).read_bytes() == (reference.root / name).read_bytes(), name

    calls["n"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        run_study(cfg, out=store.root, progress=False)  # healed: nothing to warn about or compute
    assert calls["n"] == 0


@pytest.mark.slow
def test_cli_names_a_damaged_file_in_one_warning_line(make_config, tmp_path, capsys):
    params = tmp_path / "mini.yaml"
    params.write_text(make_config(strategies=["scratch"]).to_yaml())
    out = tmp_path / "S"
    assert main(["study", str(params), "--out", str(out), "-q"]) == 0
    run = next((out / "runs").glob("*.json"))
    run.write_text("{")
    capsys.readouterr()
    assert main(["study", str(params), "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"stmedfm: warning: {run} is damaged (unreadable: JSONDecodeError); moved to ")
    assert "Traceback" not in err


# --- provenance and notices --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_run_records_where_and_from_what_it_was_made(make_config, tmp_path):
    cfg = make_config()
    store = run_study(cfg, out=tmp_path / "S", progress=False)
    runs = pd.read_csv(store.root / "runs.csv", dtype=str, keep_default_na=False)
    assert set(PROVENANCE) <= set(runs.columns)
    assert set(runs["machine"]) == {provenance.machine()}
    assert set(runs[runs["strategy"] == "full"]["pretrain_machine"]) == {provenance.machine()}
    digest = study_data(cfg)["bloodmnist"].digest
    assert set(runs["data"]) == {f"bloodmnist=synthetic:{digest}"}
    assert set(runs["torch"]) == {provenance.software()["torch"]}
    record = json.loads(store.run_path(runs["run_id"].iloc[0]).read_text())
    assert record["config"] == cfg.to_dict()  # each run keeps the config it was made with
    import importlib.metadata

    assert record["provenance"]["peft"] == importlib.metadata.version("peft")  # peft's inits shape peft runs


@pytest.mark.slow
def test_synthetic_and_smoke_stores_are_marked_everywhere(make_config, tmp_path):
    store = run_study(make_config(eval_max_samples=16), out=tmp_path / "S", progress=False)
    assert store.notices() == ["synthetic data — not results", "smoke budgets — not results"]
    write_tables(store.root)
    md = (store.root / "tables" / "table7_auroc.md").read_text()
    assert "> **synthetic data — not results**" in md and "> **smoke budgets — not results**" in md
    csv = pd.read_csv(store.root / "tables" / "table7_auroc.csv")
    assert set(csv["notice"]) == {"synthetic data — not results; smoke budgets — not results"}
    assert "paper" not in csv.columns and "delta" not in csv.columns
    assert "paper" not in md.split("|", 1)[0].split("not results**")[-1]  # the note promises no paper values


def test_a_store_of_several_machines_says_so(tiny_store, tmp_path):
    store = ResultStore(shutil.copytree(tiny_store.root, tmp_path / "S"))
    runs = pd.read_csv(store.root / "runs.csv")
    runs.loc[0, "machine"] = "Intel(R) Xeon(R) Platinum 8481C; ATen AVX512; avx512_bf16 amx_bf16"
    seal.write_csvs(store.root, {"runs.csv": runs})  # resealed: the tables read runs.csv (its parameter counts)
    notice = [n for n in store.notices() if "machines" in n]
    assert len(notice) == 1 and notice[0].startswith("runs computed on 2 machines")
    write_tables(store.root)
    assert "runs computed on 2 machines" in (store.root / "tables" / "table5_accuracy.md").read_text()
    csv = pd.read_csv(store.root / "tables" / "table5_accuracy.csv")
    assert csv["notice"].str.contains("runs computed on 2 machines").all()


# --- found by the adversarial review ---------------------------------------------------------------------------
@pytest.mark.slow
def test_more_kinds_of_damage_heal(make_config, tmp_path, monkeypatch):
    """A damaged loss table, a run record with wrong types inside, and a checkpoint replaced by another job's bare
    state dict are set aside and recomputed, not used and not a traceback."""
    import torch

    cfg = make_config(seeds=[0, 1], strategies=["full"])
    reference = run_study(cfg, out=tmp_path / "ref", progress=False)
    shutil.copytree(reference.root, tmp_path / "hurt")
    store = ResultStore(tmp_path / "hurt")
    losses = sorted((store.root / "checkpoints").glob("*.loss.csv"))
    ckpts = sorted((store.root / "checkpoints").glob("*.pt"))
    losses[0].write_text("")  # empty loss table
    other = torch.load(ckpts[1], weights_only=True)["state_dict"]
    torch.save(other, ckpts[1])  # another job's bare state dict (same shapes)
    run = next((store.root / "runs").glob("*.json"))
    rec = json.loads(run.read_text())
    rec["metrics"]["accuracy"] = "abc"
    run.write_text(json.dumps(rec))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_study(cfg, out=store.root, progress=False)
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, StoreWarning))
    assert f"{losses[0]} is damaged" in said and f"{ckpts[1]} is damaged (not a checkpoint of this job)" in said
    assert f"{run} is damaged (its metrics are missing or not numbers)" in said
    for name in ("metrics.csv", "pretrain_loss.csv"):
        assert (store.root / name).read_bytes() == (reference.root / name).read_bytes(), name


@pytest.mark.slow
def test_unusable_folders_are_clear_errors(make_config, tmp_path):
    cfg = make_config(strategies=["scratch"])
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(StmedfmError, match="is a file \\(or a broken link\\)"):
        run_study(cfg, out=dangling, progress=False)
    store = run_study(cfg, out=tmp_path / "S", progress=False)
    shutil.rmtree(store.root / "runs")
    (store.root / "runs").write_text("x")
    with pytest.raises(StmedfmError, match="runs' should be a folder of the result store"):
        run_study(cfg, out=store.root, progress=False)
    under_a_file = tmp_path / "file.txt"
    under_a_file.write_text("x")
    with pytest.raises(StmedfmError, match="Cannot create the result folder"):
        run_study(cfg, out=under_a_file / "sub", progress=False)


def test_an_unmarked_store_is_taken_as_real_and_refuses_synthetic_runs(make_config, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("study: tiny\n")
    (legacy / "metrics.csv").write_text("kept\n")
    with pytest.raises(StmedfmError, match="is an unmarked store, taken to hold real data"):
        run_study(make_config(), out=legacy, progress=False)
    assert (legacy / "metrics.csv").read_text() == "kept\n"


def test_a_damaged_table_is_named_not_a_traceback(tmp_path, capsys):
    store = tmp_path / "S"
    shutil.copytree(ROOT / "results" / "offline_label_safe", store)
    (store / "metrics.csv").write_text("garbage,x\n")
    assert main(["tables", str(store)]) == 2
    assert "metrics.csv' is damaged: its sha256" in capsys.readouterr().err  # its digest (issue 29)
    (store / "digests.json").unlink()  # an unsealed store: its columns are still checked
    assert main(["tables", str(store)]) == 2
    assert "metrics.csv' is damaged (no column 'run_id')" in capsys.readouterr().err
    (store / "metrics.csv").write_bytes(b"\xff\xfe\x00")
    assert main(["tables", str(store)]) == 2
    assert "metrics.csv' is damaged" in capsys.readouterr().err
