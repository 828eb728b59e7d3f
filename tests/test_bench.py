"""`stmedfm bench --quick` end to end (no timing assertions), the baseline pipeline, and the speed-ups that must
not change a number (shared stem outputs of frozen stems)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from stmedfm.run import bench, bench_baseline
from stmedfm import data as D
from stmedfm.cli import main
from stmedfm.core.config import StudyConfig
from stmedfm.core.records import RunSpec
from stmedfm.run.train import downstream_model, predict_logits, pretrain


@pytest.mark.slow
def test_quick_bench_writes_one_row_per_measure(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "compute does not depend on pixel values" in printed and "ratio" in printed
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["measure", "ours", "baseline", "ratio", "unit", "machine"]
    measures = list(frame["measure"])
    assert measures[:4] == ["train throughput 2D, batch 32, 1 thread", "train throughput 3D, batch 8, 1 thread",
                            "eval throughput 2D, batch 256, 1 thread", "eval throughput 3D, batch 32, 1 thread"]
    assert any(m.startswith("wall time, paper.yaml") for m in measures)
    assert any(m.startswith("peak RSS, paper.yaml") for m in measures)
    assert set(frame["unit"]) == {"samples/s", "s", "MiB"}
    assert (frame["ours"] > 0).all() and (frame["baseline"] > 0).all()  # quick measures every row both ways
    np.testing.assert_allclose(frame["ratio"], frame["ours"] / frame["baseline"], rtol=1e-9)
    assert frame["machine"].nunique() == 1 and "cores" in frame["machine"].iloc[0]
    assert not list(tmp_path.glob(".bench.csv.*"))  # written atomically: no temporary file left


def test_format_table_says_which_side_wins():
    frame = pd.DataFrame([bench._row("train", 200.0, 100.0, "samples/s", "m"), bench._row("wall", 50.0, 100.0, "s", "m"),
                          bench._row("rss", 300.0, 100.0, "MiB", "m"), bench._row("only ours", 5.0, None, "s", "m")])
    assert frame["ratio"].iloc[0] == 2.0 and frame["ratio"].iloc[1] == 0.5 and math.isnan(frame["ratio"].iloc[3])
    text = bench.format_table(frame)
    assert "2.00x faster" in text and "3.00x more" in text


def test_baseline_items_match_our_batches(synthetic_dir):
    """The per-item pipeline gives the same input tensors as our batch conversion (up to float rounding)."""
    for task in ("bloodmnist", "organmnist3d"):
        split = D.load_task(task, data_dir=synthetic_dir)["train"]
        ds = bench_baseline.per_item_dataset(task, split, flip=False)
        x, y = ds[3]
        ours = D.to_float(split.images[3:4])[0]
        assert x.shape == ours.shape and x.dtype == torch.float32 and y == int(split.labels[3])
        torch.testing.assert_close(x, ours, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_shared_stem_outputs_give_bit_identical_logits(make_config, synthetic_dir):
    """LoRA / adapter / linear-probe runs replay the frozen stem's recorded outputs: the logits must not change."""
    cfg = make_config(pretrain_tasks=["bloodmnist", "organmnist3d"], downstream_tasks=["bloodmnist", "organmnist3d"])
    state, _ = pretrain(cfg, ["bloodmnist", "organmnist3d"], 0)
    test = D.load_task("organmnist3d", data_dir=synthetic_dir)["test"]
    for strategy in ("lora", "adapter", "linear_probe", "full"):
        spec = RunSpec("organmnist3d", strategy, 0, 2, 1e-3, True, ("bloodmnist", "organmnist3d"))
        model = downstream_model(cfg, spec, state)
        plain = predict_logits(model, "organmnist3d", test.images, 8)
        key = (test.images, "organmnist3d", "test", None)
        first = predict_logits(model, "organmnist3d", test.images, 8, reuse=key)  # records (frozen stems only)
        again = predict_logits(model, "organmnist3d", test.images, 8, reuse=key)  # replays
        np.testing.assert_array_equal(plain, first)
        np.testing.assert_array_equal(plain, again)


@pytest.mark.slow
def test_shared_stem_outputs_follow_the_weights(make_config, synthetic_dir):
    """A stem with other weights (another checkpoint) never gets the outputs recorded for the first one."""
    cfg = make_config(pretrain_tasks=["organmnist3d"], downstream_tasks=["organmnist3d"])
    test = D.load_task("organmnist3d", data_dir=synthetic_dir)["test"]
    key = (test.images, "organmnist3d", "test", None)
    outs = []
    for seed in (0, 1):
        state, _ = pretrain(cfg, ["organmnist3d"], seed)
        model = downstream_model(cfg, RunSpec("organmnist3d", "lora", seed, 2, 1e-3, True, ("organmnist3d",)), state)
        outs.append((predict_logits(model, "organmnist3d", test.images, 8, reuse=key),
                     predict_logits(model, "organmnist3d", test.images, 8)))
    for cached, plain in outs:
        np.testing.assert_array_equal(cached, plain)
    assert not np.array_equal(outs[0][0], outs[1][0])


@pytest.mark.parametrize("strategy", ["scratch", "full"])
def test_trainable_stems_are_never_recorded(make_config, synthetic_dir, strategy):
    from stmedfm.run import train

    cfg = make_config()
    state = pretrain(cfg, ["bloodmnist"], 0)[0] if strategy != "scratch" else None
    model = downstream_model(cfg, RunSpec("bloodmnist", strategy, 0, 1, 1e-3, True,
                                          ("bloodmnist",) if state else ()), state)
    test = D.load_task("bloodmnist", data_dir=synthetic_dir)["test"]
    before = len(train._STEM_CACHE)
    predict_logits(model, "bloodmnist", test.images, 16, reuse=(test.images, "bloodmnist", "test", None))
    assert len(train._STEM_CACHE) == before


@pytest.mark.slow
def test_quick_profile_accounts_for_every_run_and_names_the_hot_operators(tmp_path):
    """`stmedfm bench --profile --quick`: one row per phase, the top operators, shares that add up."""
    from stmedfm.core import paths
    from stmedfm.run.planning import official_data, unique_runs
    from stmedfm.core.records import plan, pretrain_jobs

    out = tmp_path / "profile.csv"
    assert main(["bench", "--profile", "--quick", "--top", "5", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == bench.PROFILE_COLUMNS
    total = frame[frame["kind"] == "total"].iloc[0]
    cfg = StudyConfig.load(paths.params_dir() / "paper.yaml", {**bench.QUICK_OVERRIDES, "data_dir": str(tmp_path)})
    planned = plan(cfg)
    assert total["calls"] == len(pretrain_jobs(planned)) + len(unique_runs(cfg, planned, official_data(cfg)))  # every job and unique run
    phases = frame[frame["kind"] == "phase"].set_index("item")
    assert list(phases.index) == ["pretrain", "train", "evaluate", "metrics", "other"]
    assert (phases.loc[["pretrain", "train", "evaluate", "metrics"], "seconds"] > 0).all()
    assert phases["seconds"].sum() == pytest.approx(total["seconds"], rel=1e-9)  # 'other' is the remainder
    np.testing.assert_allclose(phases["share"], phases["seconds"] / total["seconds"], rtol=1e-9)
    ops = frame[frame["kind"] == "op"]
    assert len(ops) == 5 and list(ops["seconds"]) == sorted(ops["seconds"], reverse=True)
    assert not ops["item"].str.startswith("phase: ").any()  # annotations are phases, not operators
    assert ops["item"].str.contains("convolution").any()  # the convolutions are where the time goes


# --------------------------------------------------------------------------------------------- fp32 vs bf16, sizes
def test_precision_bench_says_so_instead_of_timing_without_native_bf16(tmp_path, monkeypatch):
    from stmedfm.model import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda *a, **k: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(bench, "_measure", lambda payload: pytest.fail("bf16 must not be timed here"))
    out = tmp_path / "bench.csv"
    pd.DataFrame([bench._row("kept row", 1.0, 2.0, "s", "m")]).to_csv(out, index=False)
    frame = bench.run_precision_bench(quick=True, out=out, log=lambda *a: None)
    assert len(frame) == 5 and frame["ours"].isna().all()
    assert all("not timed: this CPU has no native bf16 (avx2; none of amx_bf16, avx512_bf16)" in m
               for m in frame["measure"])
    merged = pd.read_csv(out)
    assert list(merged["measure"])[0] == "kept row" and len(merged) == 6  # merged, not overwritten


def test_merge_rows_replaces_rows_of_the_same_measure(tmp_path):
    out = tmp_path / "b.csv"
    bench.merge_rows(out, pd.DataFrame([bench._row("a", 1.0, None, "s", "m"), bench._row("b", 2.0, None, "s", "m")]))
    merged = bench.merge_rows(out, pd.DataFrame([bench._row("b", 3.0, None, "s", "m")]))
    assert list(merged["measure"]) == ["a", "b"] and merged["ours"].tolist() == [1.0, 3.0]


def _store(root, values):
    rows = []
    for (task, strategy, seed), (auroc, acc, ece) in values.items():
        for metric, v in (("macro_auroc", auroc), ("accuracy", acc), ("ece", ece)):
            rows.append({"experiment": "transfer", "task": task, "strategy": strategy, "seed": seed,
                         "metric": metric, "value": v})
    root.mkdir()
    pd.DataFrame(rows).to_csv(root / "metrics.csv", index=False)
    return root


def test_parity_table_pairs_runs_and_gives_mean_and_ci(tmp_path):
    fp32 = {("t", "full", s): (0.80 + 0.01 * s, 0.5, 0.05) for s in range(4)}
    bf16 = {("t", "full", s): (0.80 + 0.01 * s + d, 0.5, 0.05) for s, d in zip(range(4), (0.002, -0.001, 0.003, 0.0))}
    bf16[("t", "full", 9)] = (0.1, 0.1, 0.1)  # unpaired: ignored
    table = bench.parity_table(_store(tmp_path / "a", fp32), _store(tmp_path / "b", bf16))
    auroc = table[table["metric"] == "macro_auroc"].iloc[0]
    assert auroc["n_pairs"] == 4 and auroc["mean_delta"] == pytest.approx(0.001)
    half = 3.182446305284263 * np.std([0.002, -0.001, 0.003, 0.0], ddof=1) / 2  # t(0.975, 3) * sd / sqrt(4)
    assert auroc["ci_low"] == pytest.approx(0.001 - half) and auroc["ci_high"] == pytest.approx(0.001 + half)
    assert auroc["ci_contains_0"] and auroc["max_abs_delta"] == pytest.approx(0.003)
    acc = table[table["metric"] == "accuracy"].iloc[0]
    assert acc["mean_delta"] == 0 and acc["ci_contains_0"]
    rows = pd.DataFrame(bench.parity_rows(table, "m", "x"))
    assert rows["measure"].str.contains("largest \\|mean delta AUROC\\| \\(t full\\)").any()
    cells = rows[rows["unit"] == "cells"]
    assert (cells["ours"] == 1).all() and (cells["baseline"] == 1).all()


def test_streamed_synthetic_file_loads_like_any_other(tmp_path):
    from stmedfm.data import synthetic

    path = synthetic.write_synthetic_streaming(tmp_path, "pathmnist", size=64, scale=0.002, block=12)
    assert path.name == "pathmnist_64.npz" and D.verify(path, "pathmnist", 64) == "manifest"
    task = D.load_task("pathmnist", size=64, data_dir=tmp_path)
    assert task["train"].images.shape == (180, 3, 64, 64) and len(task["test"]) == 14  # 0.002 x official, >= 9
    assert torch.equal(task["train"].images[12:24], task["train"].images[:12])  # the block repeats
    assert set(task["val"].labels.tolist()) <= set(range(9))
    (tmp_path / "pathmnist_64.npz").write_bytes(b"not synthetic")
    (tmp_path / "MANIFEST.json").unlink()
    with pytest.raises(Exception, match="refusing to overwrite"):
        synthetic.write_synthetic_streaming(tmp_path, "pathmnist", size=64, scale=0.002)
