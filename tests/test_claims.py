"""Issue 27: the paper's claims as pre-registered contrasts, decided by the hierarchical bootstrap over seeds x
test images from stored per-image predictions; untestable claims listed, never dropped."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from stmedfm.analysis import claims
from stmedfm.core import bootstrap, stats
from stmedfm.model import metrics
from stmedfm.core.config import StudyConfig

TASK, N_IMAGES, N_CLASSES = "organamnist", 40, 11


def _probs(rng, labels, skill):
    logits = rng.normal(size=(len(labels), N_CLASSES))
    logits[np.arange(len(labels)), labels] += skill
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float16)


def _cfg(**extra) -> StudyConfig:
    return StudyConfig.from_dict({"pretrain_tasks": [TASK, "bloodmnist"], "downstream_tasks": [TASK],
                                  "strategies": ["scratch", "full", "lora"], "leave_out_tasks": [],
                                  "fewshot_tasks": {}, "class_weight_ablation_tasks": [], "extended_tasks": [],
                                  "calibration_task": None, **extra})


def _store(root, seeds=8, skills=None, bundle=True, seed_noise=0.3):
    """A store folder with per-image predictions and the metrics.csv rows they give (computed, not typed)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, N_IMAGES).astype(np.uint8)
    skills = skills or {"scratch": 1.0, "full": 2.0, "lora": 0.5}
    arrays, rows = {f"labels/{TASK}": labels}, []
    (root / "predictions").mkdir(parents=True, exist_ok=True)
    for strategy, skill in skills.items():
        for seed in range(seeds):
            rid = f"run-{strategy}-{seed}"
            p = _probs(rng, labels, skill + seed_noise * rng.normal())
            if bundle:
                arrays[f"probs/{rid}"] = p
            else:
                np.save(root / "predictions" / f"{rid}.npy", p)
            m = metrics.classification_metrics(labels, p.astype(np.float64) / p.astype(np.float64).sum(1, keepdims=True))
            rows += [{"run_id": rid, "experiment": "transfer", "variant": "", "task": TASK, "strategy": strategy,
                      "seed": seed, "k": 0, "fewshot_split": -1, "class_weights": True, "metric": k, "value": v}
                     for k, v in m.items()]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (root / "predictions.npz").write_bytes(buf.getvalue())
    return pd.DataFrame(rows)


def test_weighted_metrics_equal_the_metrics_of_the_resampled_images():
    rng = np.random.default_rng(1)
    for n_classes in (2, 5, 11):
        y = rng.integers(0, n_classes, 300)
        p = rng.dirichlet(np.ones(n_classes), 300)
        w = bootstrap.image_weights(300, 4, seed=3)
        w[0] = 1.0  # unit weights: the plain metric
        for row in range(4):
            rows = np.repeat(np.arange(300), w[row].astype(int))
            expect = metrics.classification_metrics(y[rows], p[rows])
            for name in bootstrap.METRICS:
                got = bootstrap.replicates(p, y, name, w[row:row + 1])[0]
                assert got == pytest.approx(expect[name], abs=1e-9), (n_classes, name)


def test_bootstrap_p_value_has_its_floor_and_is_two_sided():
    assert bootstrap.two_sided_p(np.ones(999)) == pytest.approx(2 / 1000)
    assert bootstrap.two_sided_p(np.r_[-np.ones(500), np.ones(500)]) == 1.0
    assert bootstrap.two_sided_p(np.r_[-np.ones(100), np.ones(900)]) == pytest.approx(2 * 101 / 1001)


@pytest.mark.slow  # a hierarchical bootstrap of every claim (about 3 s)
def test_hierarchical_intervals_come_from_the_predictions_and_are_reproduced(tmp_path):
    frame = _store(tmp_path, seed_noise=0.0)  # seeds differ only by their logit noise: the test set dominates
    cfg = _cfg()
    table = claims.claims_table(cfg, frame, root=tmp_path, replicates=300)
    again = claims.claims_table(cfg, frame, root=tmp_path, replicates=300)
    pd.testing.assert_frame_equal(table, again)  # deterministic: the committed intervals are regenerated exactly
    row = table.set_index(["claim", "metric"]).loc[("pretraining", "macro_auroc")]
    assert row["p_source"].startswith("hierarchical")
    # 40 test images: the image level adds spread that the interval over seeds alone does not see
    assert row["ci_high"] - row["ci_low"] > row["seed_ci_high"] - row["seed_ci_low"]
    seed_only = claims.claims_table(cfg, frame, root=None).set_index(["claim", "metric"])
    assert seed_only.loc[("pretraining", "macro_auroc"), "p_source"].startswith("Wilcoxon")
    assert seed_only.loc[("pretraining", "macro_auroc"), "estimate"] == pytest.approx(row["estimate"])


@pytest.mark.slow  # a hierarchical bootstrap of every claim (about 3 s)
def test_saved_replicates_reproduce_the_intervals_without_the_predictions(tmp_path):
    frame = _store(tmp_path, bundle=False)  # large test sets: predictions beside the runs, not in the bundle
    cfg = _cfg()
    first = claims.claims_table(cfg, frame, root=tmp_path, replicates=200, save=True)
    for f in (tmp_path / "predictions").iterdir():
        f.unlink()  # a committed store: no per-run files
    second = claims.claims_table(cfg, frame, root=tmp_path, replicates=200)
    pd.testing.assert_frame_equal(first, second)
    assert (second["p_source"].str.startswith("hierarchical") | (second["verdict"] == "untestable")).all()


def test_families_are_holm_adjusted_apart_and_the_verdict_follows_the_rule(tmp_path):
    table = claims.claims_table(_cfg(), _store(tmp_path), root=tmp_path, replicates=300)
    for fam in ("primary", "secondary"):
        rows = table[(table["family"] == fam) & (table["verdict"] != "untestable")]
        assert np.allclose(rows["p_holm"], stats.holm(rows["p"]))
    assert set(table[table["family"] == "primary"]["metric"]) == {"macro_auroc"}
    tested = table[table["verdict"] != "untestable"]
    assert list(tested["verdict"]) == [stats.verdict(e, p) for e, p in zip(tested["estimate"], tested["p_holm"])]
    by = table.set_index(["claim", "metric"])
    assert by.loc[("pretraining", "macro_auroc"), "verdict"] == "supported"  # full much better on every seed
    assert by.loc[("peft_lora", "macro_auroc"), "verdict"] == "contradicted"  # lora below scratch


def test_claims_without_data_are_listed_as_untestable_not_dropped(tmp_path):
    table = claims.claims_table(_cfg(), _store(tmp_path), root=tmp_path, replicates=100)
    assert len(table) == sum(len(c.metrics) for c in claims.CLAIMS)  # one row per claim x metric, always
    by = table.set_index(["claim", "metric"])
    assert by.loc[("negative_transfer_extended", "macro_auroc"), "verdict"] == "untestable"
    assert "extended runs" in by.loc[("negative_transfer_extended", "macro_auroc"), "note"]
    assert by.loc[("fewshot_3d_stability", "macro_auroc"), "verdict"] == "untestable"
    assert "'fewshot3d' role" in by.loc[("fewshot_3d_stability", "macro_auroc"), "note"]
    assert np.isnan(by.loc[("fewshot_3d_stability", "macro_auroc"), "p_holm"])


@pytest.mark.slow  # a hierarchical bootstrap of every claim (about 3 s)
def test_the_retained_fraction_by_hand_and_when_full_has_no_gain(tmp_path):
    frame = _store(tmp_path, skills={"scratch": 1.0, "full": 2.0, "lora": 1.5})
    table = claims.claims_table(_cfg(), frame, root=tmp_path, replicates=300).set_index(["claim", "metric"])
    auroc = frame[frame["metric"] == "macro_auroc"].groupby("strategy")["value"].mean()
    expect = (auroc["lora"] - auroc["scratch"]) / (auroc["full"] - auroc["scratch"])
    row = table.loc[("peft_lora", "macro_auroc")]
    assert row["retained"] == pytest.approx(expect)
    assert row["retained_low"] <= expect <= row["retained_high"] and row["note"] == ""
    flat = _store(tmp_path / "flat", skills={"scratch": 2.0, "full": 1.0, "lora": 1.5})
    note = claims.claims_table(_cfg(), flat, root=tmp_path / "flat", replicates=100).set_index(
        ["claim", "metric"]).loc[("peft_lora", "macro_auroc"), "note"]
    assert "is not positive" in note


def test_medmnist_baselines_cover_every_role_and_the_gap_is_ours_minus_theirs():
    from stmedfm.analysis import tables

    base = tables.medmnist_baselines()
    for flag in ("pathmnist", "bloodmnist", "dermamnist", "organamnist", "retinamnist"):
        assert len(base[(base["flag"] == flag) & (base["model"] == "ResNet-18 (28)")]) == 1, flag
    for flag in ("organmnist3d", "adrenalmnist3d"):
        assert len(base[(base["flag"] == flag) & (base["model"] == "ResNet-18 + 3D")]) == 1, flag
    assert base[["auc", "acc"]].stack().between(0, 1).all()
    frame = pd.DataFrame([{"experiment": "transfer", "task": t, "strategy": "scratch", "seed": s, "metric": m,
                           "value": v + 0.01 * s} for t in ("bloodmnist", "adrenalmnist3d") for s in range(3)
                          for m, v in (("macro_auroc", 0.8), ("accuracy", 0.6))])
    table = tables.benchmark_table(frame).set_index(["task", "metric"])
    adrenal = base[(base["flag"] == "adrenalmnist3d") & (base["model"] == "ResNet-18 + 3D")].iloc[0]
    assert table.loc[("adrenalmnist3d", "macro_auroc"), "baseline"] == "ResNet-18 + 3D"
    assert table.loc[("adrenalmnist3d", "macro_auroc"), "gap"] == pytest.approx(0.81 - adrenal["auc"], abs=5e-4)
    assert table.loc[("bloodmnist", "accuracy"), "baseline"] == "ResNet-18 (28)"
