"""Any MedMNIST flag, any MedMNIST+ size, purely through parameters (synthetic files of the official shapes)."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pandas as pd
import pytest

from stmedfm import data
from stmedfm.core import paths, registry
from stmedfm.data import synthetic
from stmedfm.core.config import StudyConfig
from stmedfm.data.download import download, source_url
from stmedfm.core.errors import StmedfmError
from stmedfm.run.study import run_study
from stmedfm.analysis.tables import write_tables

#: Budgets of a few steps and small batches, applied on top of a parameter file or of the tiny config.
BUDGETS = dict(seeds=1, pretrain_steps=3, scratch_steps_2d=2, scratch_steps_3d=1, finetune_steps_2d=2,
               finetune_steps_3d=1, batch_size_2d=8, batch_size_3d=2, eval_batch_size_3d=4, extended_scratch_steps=2,
               extended_full_steps=2, fewshot_k=[1], fewshot_splits=1, temperature_scaling=False)

# Table 4 at width 64 for a binary head (64*2 + 2 = 130): 56320 + 69664 + 33536 + 130; LoRA +3072 / 3072+384+130;
# adapter +4256 / 4256+384+130. Bloodmnist's are the paper's.
COUNTS = {("pneumoniamnist", "scratch"): (159650, 159650), ("nodulemnist3d", "lora"): (162722, 3586),
          ("nodulemnist3d", "adapter"): (163906, 4770), ("bloodmnist", "scratch"): (160040, 160040),
          ("bloodmnist", "lora"): (163112, 3976)}


@pytest.fixture(scope="module")
def other_flags_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("other_flags")
    synthetic.write_synthetic(d, ["pneumoniamnist", "nodulemnist3d", "bloodmnist"], n={"train": 24, "val": 8, "test": 16})
    return d


@pytest.mark.slow
def test_example_params_file_runs_other_flags_end_to_end(other_flags_dir, tmp_path):
    """params/example_other_flag.yaml as written (2D grayscale binary + 3D binary + 2D RGB), tiny budgets."""
    over = dict(BUDGETS, data_dir=str(other_flags_dir), fewshot_tasks={"pneumoniamnist": 2, "nodulemnist3d": 1},
                class_weight_ablation_strategies=["scratch", "full"], seeds=2)
    cfg = StudyConfig.load(paths.project_root() / "params" / "example_other_flag.yaml", over)
    assert cfg.pretrain_tasks == ["bloodmnist", "pneumoniamnist", "nodulemnist3d"]
    store = run_study(cfg, out=tmp_path / "other", progress=False, workers=1)
    m = store.table("metrics")
    auroc = m[m["metric"] == "macro_auroc"]
    assert set(auroc["task"]) == {"bloodmnist", "pneumoniamnist", "nodulemnist3d"}
    assert auroc["value"].between(0, 1).all() and auroc["value"].notna().all()
    assert set(m["experiment"]) == {"transfer", "fewshot", "class_weights", "leave_out", "extended"}
    runs = store.table("runs")
    for (task, strategy), counts in COUNTS.items():
        if task != "bloodmnist":
            row = runs[(runs["task"] == task) & (runs["strategy"] == strategy) & (runs["experiment"] == "transfer")]
            assert tuple(row[["total_params", "trainable_params"]].iloc[0]) == counts
    names = {p.stem for p in write_tables(store.root)}
    assert {"table7_auroc", "table9_fewshot", "table10_fewshot", "table13_per_class"} <= names
    per_class = pd.read_csv(store.root / "tables" / "table13_per_class.csv")
    assert set(per_class["name"]) == {"normal", "pneumonia"}
    # the 3D flag takes OrganMNIST3D's claims by parameters only, decided from its stored per-image predictions
    from stmedfm.analysis import findings

    claims = findings.write_findings(store.root)["claims"].set_index(["claim", "metric"])
    row = claims.loc[("negative_transfer", "macro_auroc")]
    assert row["task"] == "nodulemnist3d" and row["n"] == 2 and row["p_source"].startswith("hierarchical")
    assert claims.loc[("fewshot_3d_stability", "macro_auroc"), "task"] == "nodulemnist3d"
    with np.load(store.root / "predictions.npz") as z:
        assert len(z["labels/nodulemnist3d"]) == 16 and sum(k.startswith("probs/") for k in z.files) == runs["run_id"].nunique()


def test_a_missing_3d_file_is_one_line_naming_it(tmp_path, no_default_data):
    from stmedfm.run.planning import preflight

    synthetic.write_synthetic(tmp_path, ["organamnist", "bloodmnist", "retinamnist"], n=12)
    cfg = StudyConfig.load(paths.project_root() / "params" / "offline.yaml", {"data_dir": str(tmp_path)})
    with pytest.raises(StmedfmError) as err:
        preflight(cfg)
    assert "adrenalmnist3d.npz" in str(err.value) and "\n" not in str(err.value).strip()


def test_medmnist_plus_facts_are_in_the_registry():
    assert sorted(registry.get("bloodmnist").md5) == [28, 64, 128, 224]
    assert sorted(registry.get("nodulemnist3d").md5) == [28, 64]  # 3D flags: 28 and 64 only
    assert registry.get("bloodmnist").filename(128) == "bloodmnist_128.npz"
    assert source_url("organmnist3d", 64).split("?")[0].endswith("/organmnist3d_64.npz")
    with pytest.raises(StmedfmError, match="organmnist3d"):
        StudyConfig.from_dict({"image_size": 128, "pretrain_tasks": ["organmnist3d"], "downstream_tasks": [],
                               "fewshot_tasks": {}, "leave_out_tasks": [], "extended_tasks": [],
                               "class_weight_ablation_tasks": [], "calibration_task": None})


@pytest.fixture(scope="module")
def sized_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sized")
    synthetic.write_synthetic(d, ["bloodmnist", "nodulemnist3d"], n={"train": 16, "val": 8, "test": 8}, size=64)
    synthetic.write_synthetic(d, ["pneumoniamnist"], n={"train": 16, "val": 8, "test": 8}, size=128)
    return d


@pytest.mark.slow
def test_64px_files_load_and_run_with_table4_counts(make_config, sized_dir, tmp_path, no_default_data):
    assert data.locate("nodulemnist3d", size=64, data_dir=sized_dir).name == "nodulemnist3d_64.npz"
    vol = data.load_task("nodulemnist3d", size=64, data_dir=sized_dir)
    assert tuple(vol["train"].images.shape) == (16, 1, 64, 64, 64)
    assert tuple(data.load_task("bloodmnist", size=64, data_dir=sized_dir)["test"].images.shape) == (8, 3, 64, 64)
    with pytest.raises(StmedfmError, match="bloodmnist.npz"):  # the 28 px file is another file
        data.load_task("bloodmnist", data_dir=sized_dir)
    tasks = ["bloodmnist", "nodulemnist3d"]
    cfg = make_config(BUDGETS, data_dir=sized_dir, image_size=64, pretrain_tasks=tasks, downstream_tasks=tasks,
                      strategies=["scratch", "lora", "adapter"], eval_batch_size_2d=8)
    store = run_study(cfg, out=tmp_path / "s64", progress=False, workers=1)
    runs = store.table("runs")
    got = {(r.task, r.strategy): (r.total_params, r.trainable_params) for r in runs.itertuples()}
    assert {k: v for k, v in got.items() if k in COUNTS} == {k: v for k, v in COUNTS.items() if k in got}
    assert len(got) == 6
    assert store.table("metrics").query("metric == 'macro_auroc'")["value"].between(0, 1).all()


@pytest.mark.slow
def test_128px_2d_flag_runs_through_a_study(make_config, sized_dir, tmp_path):
    task = data.load_task("pneumoniamnist", size=128, data_dir=sized_dir)
    assert tuple(task["train"].images.shape) == (16, 3, 128, 128)  # grayscale repeated to 3 channels
    cfg = make_config(BUDGETS, data_dir=sized_dir, image_size=128, pretrain_tasks=["pneumoniamnist"],
                      downstream_tasks=["pneumoniamnist"], strategies=["scratch", "full"], eval_batch_size_2d=8)
    store = run_study(cfg, out=tmp_path / "s128", progress=False, workers=1)
    runs = store.table("runs")
    assert set(runs["total_params"]) == {159650}
    assert len(store.table("metrics").query("metric == 'accuracy'")) == 2


def test_download_of_a_medmnist_plus_size_lands_as_flag_size_npz(sized_dir, tmp_path, no_default_data):
    body = (sized_dir / "bloodmnist_64.npz").read_bytes()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(sized_dir))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        mirror = f"http://127.0.0.1:{httpd.server_address[1]}"
        md5 = data.file_digests(sized_dir / "bloodmnist_64.npz")["md5"]
        target = download("bloodmnist", size=64, data_dir=tmp_path, mirror=mirror, md5=md5, progress=False, backoff=0)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert target == tmp_path / "bloodmnist_64.npz" and target.read_bytes() == body
    # not the official 64 px file: loading checks the official MD5 and names the sized download command
    with pytest.raises(StmedfmError, match=r"stmedfm download bloodmnist --size 64"):
        data.load_task("bloodmnist", size=64, data_dir=tmp_path)
