"""Training pieces: task sampling, class-weighted pools, determinism of a run."""

import pytest
import torch

from stmedfm import registry
from stmedfm.config import StudyConfig
from stmedfm.train import RunSpec, generator, make_pool, run_downstream, sampling_probabilities, task_schedule

PAPER = ["pathmnist", "bloodmnist", "dermamnist", "organmnist3d"]


def test_proportional_sampling_matches_official_train_sizes():
    probs = sampling_probabilities(StudyConfig(), PAPER)
    # Section III.D: 81.9 % / 10.9 % / 6.4 % / 0.9 % from 89996 / 11959 / 7007 / 971 training images
    assert [round(probs[t], 3) for t in PAPER] == [0.819, 0.109, 0.064, 0.009]
    schedule = task_schedule(StudyConfig(), PAPER, 40000, generator(0))
    freq = {t: sum(s == [t] for s in schedule) / len(schedule) for t in PAPER}
    for t in PAPER:
        assert abs(freq[t] - probs[t]) < 0.01


def test_uniform_temperature_and_all_tasks_samplers():
    uni = sampling_probabilities(StudyConfig(task_sampling="uniform"), PAPER)
    assert all(abs(v - 0.25) < 1e-12 for v in uni.values())
    temp = sampling_probabilities(StudyConfig(task_sampling="temperature", sampling_alpha=0.5), PAPER)
    n = {t: registry.get(t).n_samples["train"] ** 0.5 for t in PAPER}
    assert temp["organmnist3d"] == pytest.approx(n["organmnist3d"] / sum(n.values()))
    schedule = task_schedule(StudyConfig(task_sampling="all_tasks"), PAPER, 5, generator(0))
    assert schedule == [PAPER] * 5  # every task exactly once per optimiser update


def test_pool_weights_follow_the_trained_subset(synthetic_dir):
    cfg = StudyConfig(data_dir=str(synthetic_dir))
    pool = make_pool(cfg, "bloodmnist")
    assert pool.weights is not None and pool.weights.shape == (8,)
    assert make_pool(cfg, "bloodmnist", class_weights=False).weights is None
    x, y = pool.batch(generator(1), augment=True)
    assert x.shape == (32, 3, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_run_is_deterministic_and_reports_table4_counts(synthetic_dir):
    cfg = StudyConfig(data_dir=str(synthetic_dir), pretrain_tasks=["bloodmnist"])
    spec = RunSpec(task="bloodmnist", strategy="scratch", seed=3, steps=3, lr=2e-3, class_weights=True)
    a = run_downstream(cfg, spec, None)
    b = run_downstream(cfg, spec, None)
    assert a.metrics == b.metrics
    assert (a.total_params, a.trainable_params) == (160040, 160040)
    assert {"accuracy", "macro_f1", "macro_auroc", "ece", "brier", "ece_ts", "brier_ts", "temperature"} <= set(a.metrics)


def test_label_safe_flips_spare_lateral_flags_only(synthetic_dir):
    # OrganMNIST3D names body sides ('kidney-left'): mirroring would swap its labels
    assert registry.get("organmnist3d").lateral and not registry.get("bloodmnist").lateral
    safe = StudyConfig(data_dir=str(synthetic_dir), flip_policy="label_safe")
    assert make_pool(safe, "organmnist3d").flips is False
    assert make_pool(safe, "bloodmnist").flips is True
    assert make_pool(StudyConfig(data_dir=str(synthetic_dir)), "organmnist3d").flips is True  # the paper flips all
    pool = make_pool(safe, "organmnist3d")
    x, _ = pool.batch(generator(0), augment=True)
    idx = torch.randint(len(pool.labels), (pool.batch_size,), generator=generator(0))
    from stmedfm.data import to_float
    assert torch.equal(x, to_float(pool.images[idx]))  # no flip applied
