"""The study engine on synthetic files: planning, resume, determinism across workers, paper.yaml end to end."""

import pandas as pd
import pytest

import stmedfm.run.study as study_mod
from stmedfm.core import paths
from stmedfm.cli import main
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.run.planning import job_id, official_data, run_id
from stmedfm.core.records import plan
from stmedfm.run.store import ResultStore
from stmedfm.run.study import run_study
from stmedfm.analysis.tables import write_tables


#: Every experiment of the protocol, 2D and 3D, with budgets of a few steps (changes to the tiny config).
EVERY_EXPERIMENT = dict(
    pretrain_tasks=["bloodmnist", "organmnist3d"], pretrain_steps=4, downstream_tasks=["bloodmnist", "organmnist3d"],
    strategies=["scratch", "full", "lora"], scratch_steps_2d=3, scratch_steps_3d=2, finetune_steps_2d=3,
    finetune_steps_3d=2, fewshot_tasks={"organmnist3d": 2}, fewshot_k=[1, 2], fewshot_splits=2,
    fewshot_strategies=["full", "adapter"], class_weight_ablation_tasks=["bloodmnist"],
    class_weight_ablation_strategies=["scratch", "full"], leave_out_tasks=["organmnist3d"],
    leave_out_strategies=["lora"], extended_tasks=["organmnist3d"], extended_scratch_steps=4, extended_full_steps=3,
    calibration_task="bloodmnist")


def sorted_metrics(store) -> pd.DataFrame:
    m = store.table("metrics")
    return m.sort_values(["run_id", "experiment", "variant", "metric"]).reset_index(drop=True)


def test_plan_shares_identical_runs_between_experiments(make_config):
    cfg = make_config(EVERY_EXPERIMENT)
    planned = plan(cfg)
    ids = {run_id(cfg, p.spec, official_data(cfg)) for p in planned}
    # transfer 6 + fewshot 2K*2 splits*2 strategies=8 + class weights 4 + leave-out 2 + extended 2 = 22 planned
    assert len(planned) == 22
    # shared: class weights 'on' = transfer (2), leave-out 'all tasks' = transfer lora (1)
    assert len(ids) == 19
    on = [p for p in planned if p.experiment == "class_weights" and p.variant == "weights on"]
    transfer = {run_id(cfg, p.spec, official_data(cfg)) for p in planned if p.experiment == "transfer"}
    assert all(run_id(cfg, p.spec, official_data(cfg)) in transfer for p in on)


@pytest.mark.slow
def test_interrupted_study_resumes_without_duplicates(make_config, tmp_path, monkeypatch):
    cfg = make_config(EVERY_EXPERIMENT, workers=1)
    reference = run_study(cfg, out=tmp_path / "ref", progress=False)

    calls = {"n": 0}
    real = study_mod.run_downstream

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study_mod, "run_downstream", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out=tmp_path / "resumed", progress=False)
    assert len(list((tmp_path / "resumed" / "runs").glob("*.json"))) == 4

    calls["n"] = 100  # no more interruptions; count the runs the second pass computes
    run_study(cfg, out=tmp_path / "resumed", progress=False)
    assert calls["n"] - 100 == 19 - 4
    resumed = ResultStore(tmp_path / "resumed")
    a, b = sorted_metrics(reference), sorted_metrics(resumed)
    assert not b.duplicated(["run_id", "experiment", "variant", "metric"]).any()
    pd.testing.assert_frame_equal(a, b)

    calls["n"] = 100
    run_study(cfg, out=tmp_path / "resumed", progress=False)  # a finished study recomputes nothing
    assert calls["n"] == 100


@pytest.mark.slow
def test_same_seed_same_numbers_whatever_the_worker_count(make_config, tmp_path):
    cfg = make_config(EVERY_EXPERIMENT, seeds=[0, 1], fewshot_tasks={}, class_weight_ablation_tasks=[],
                      leave_out_tasks=[], extended_tasks=[])
    one = run_study(cfg, out=tmp_path / "w1", progress=False, workers=1)
    two = run_study(cfg, out=tmp_path / "w2", progress=False, workers=2)
    pd.testing.assert_frame_equal(sorted_metrics(one), sorted_metrics(two))
    loss1, loss2 = one.table("pretrain_loss"), two.table("pretrain_loss")
    pd.testing.assert_frame_equal(loss1, loss2)


EXPECTED_TABLES = {
    "table4_params", "table5_accuracy", "table6_macro_f1", "table7_auroc", "table8_ece", "table8b_brier",
    "table9_fewshot", "table10_fewshot", "table10b_fewshot_splits", "table11_class_weights",
    "table12_pretrain_subset", "table12b_extended", "table13_per_class", "temperature_scaling", "medmnist_benchmark",
}


@pytest.mark.slow
def test_paper_protocol_end_to_end_on_synthetic_files(synthetic_dir, tmp_path):
    """params/paper.yaml as written, with smoke budgets, on synthetic files of the four official flags."""
    over = dict(data_dir=str(synthetic_dir), seeds=2, pretrain_steps=6, scratch_steps_2d=3, scratch_steps_3d=2,
                finetune_steps_2d=3, finetune_steps_3d=2, fewshot_tasks={"dermamnist": 2, "organmnist3d": 2},
                fewshot_k=[1, 2], fewshot_splits=2, extended_scratch_steps=3, extended_full_steps=3)
    cfg = StudyConfig.load(paths.project_root() / "params" / "paper.yaml", over)
    store = run_study(cfg, out=tmp_path / "paper", progress=False, workers=2)
    written = write_tables(store.root)
    names = {p.stem for p in written}
    assert names == EXPECTED_TABLES
    t4 = pd.read_csv(store.root / "tables" / "table4_params.csv")
    paper_rows = t4[t4["strategy"].isin(["scratch", "full", "lora", "adapter"])]
    assert len(paper_rows) == 32 and (paper_rows["delta"] == 0).all()
    t7 = pd.read_csv(store.root / "tables" / "table7_auroc.csv")
    assert len(t7) == 4 * 5 and set(t7["n"]) == {2}
    # synthetic files: no paper comparison, and every row says why (issue 18)
    assert "paper" not in t7.columns and set(t7["notice"]) == {"synthetic data — not results"}
    assert t7["ci95"].notna().all()
    t12 = pd.read_csv(store.root / "tables" / "table12_pretrain_subset.csv")
    assert set(t12["variant"]) == {"all tasks", "without organmnist3d"}
    t13 = pd.read_csv(store.root / "tables" / "table13_per_class.csv")
    assert set(t13["task"]) == {"pathmnist"} and t13["class"].nunique() == 9
    loss = store.table("pretrain_loss")
    assert set(loss["pretrain"]) == {"pathmnist+bloodmnist+dermamnist+organmnist3d", "pathmnist+bloodmnist+dermamnist"}


def test_missing_files_stop_before_any_work(tmp_path, no_default_data):
    cfg = StudyConfig.load(paths.project_root() / "params" / "paper.yaml", {"data_dir": str(tmp_path)})
    with pytest.raises(StmedfmError) as err:
        run_study(cfg, out=tmp_path / "out", progress=False)
    msg = str(err.value)
    assert "pathmnist.npz, bloodmnist.npz, dermamnist.npz, organmnist3d.npz" in msg
    assert "stmedfm download pathmnist bloodmnist dermamnist organmnist3d" in msg
    assert "make quick" not in msg  # the offline protocol is advised only when its files are here (test_readers)
    assert not (tmp_path / "out").exists()


def test_k_larger_than_a_class_is_rejected_before_training(make_config, tmp_path):
    cfg = make_config(EVERY_EXPERIMENT, fewshot_k=[50])
    with pytest.raises(StmedfmError, match=r"class \d+ has \d+ training samples but fewshot_k asks for K=50"):
        run_study(cfg, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_prints_errors_without_traceback(capsys):
    assert main(["study", "params/does-not-exist.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stmedfm: error: Parameter file") and "Traceback" not in err


def test_run_identity_is_stable():
    """Stored results are found by these ids: a change here orphans every finished run (add fields via LATER_FIELDS)."""
    from stmedfm.core.records import PretrainJob, RunSpec

    cfg = StudyConfig()
    spec = RunSpec(task="pathmnist", strategy="lora", seed=0, steps=120, lr=2e-3, class_weights=True,
                   pretrain=tuple(cfg.pretrain_tasks))
    assert run_id(cfg, spec, official_data(cfg)) == "run-43f61d1aed33087f"
    assert job_id(cfg, PretrainJob(0, tuple(cfg.pretrain_tasks)), official_data(cfg)) == "pretrain-179d0ffcf32bcfe4"
    assert run_id(cfg.replace(flip_policy="label_safe"), spec, official_data(cfg)) != "run-43f61d1aed33087f"


def test_opening_a_store_never_downloads(tmp_path, monkeypatch):
    """Issue 32: ``ResultStore.open`` called preflight, so opening a store could download. Opening a committed
    store whose config says ``download: true``, with its files absent, is one line and no download attempt;
    fetching files is running a study's (run_study's preflight)."""
    import shutil

    from stmedfm.data import download

    def no_download(*args, **kwargs):
        raise AssertionError("opening a store tried to download")

    monkeypatch.setattr(download, "download", no_download)
    store = ResultStore(shutil.copytree(paths.project_root() / "results" / "offline_label_safe", tmp_path / "s"))
    (tmp_path / "empty").mkdir()
    cfg = store.config().replace(download=True, data_dir=str(tmp_path / "empty"))
    with pytest.raises(StmedfmError, match="empty"):
        store.open(cfg)
