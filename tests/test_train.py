"""Training pieces: task sampling, class-weighted pools, determinism of a run."""

import math

import pytest
import torch

from stmedfm.core import registry
from stmedfm.core.config import StudyConfig
from stmedfm.core.records import RunSpec, sampling_probabilities
from stmedfm.run.train import generator, make_pool, run_downstream, task_schedule

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


@pytest.mark.slow  # about 5 s of CPU
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


# --- training options beyond the paper (UMedPT): accumulation step, loss normalisation -------------------------
def _count_optimizer_steps(monkeypatch):
    import stmedfm.run.train as train_mod

    calls = {"step": 0}
    real = train_mod.optimizer

    def counting(*args, **kwargs):
        opt = real(*args, **kwargs)
        step = opt.step

        def counted(*a, **k):
            calls["step"] += 1
            return step(*a, **k)

        opt.step = counted
        return opt

    monkeypatch.setattr(train_mod, "optimizer", counting)
    return calls


@pytest.mark.parametrize("sampling", [pytest.param("all_tasks", marks=pytest.mark.slow),  # about 5 s of CPU
                                      "proportional"])
def test_pretraining_step_touches_every_task_once_per_update_under_all_tasks(synthetic_dir, monkeypatch, sampling):
    from stmedfm.run.train import pretrain

    tasks = ["bloodmnist", "dermamnist", "organmnist3d"]
    cfg = StudyConfig(data_dir=str(synthetic_dir), pretrain_tasks=tasks, pretrain_steps=4, task_sampling=sampling,
                      batch_size_3d=2)
    calls = _count_optimizer_steps(monkeypatch)
    _, losses = pretrain(cfg, tasks, seed=0)
    assert calls["step"] == 4  # one optimiser update per step, whatever the sampler
    assert sorted(losses["step"].unique()) == [0, 1, 2, 3]
    per_step = losses.groupby("step")["task"].agg(list)
    if sampling == "all_tasks":  # one batch of every task, each exactly once, accumulated before the update
        assert all(sorted(ts) == sorted(tasks) for ts in per_step)
    else:
        assert all(len(ts) == 1 for ts in per_step)


def test_loss_log_normalisation_values():
    from stmedfm.run.train import Pool, loss_fn

    pool = Pool("bloodmnist", torch.empty(0), torch.empty(0), None, 32)
    y = torch.tensor([0, 3])
    zeros = torch.zeros(2, 8)  # uniform prediction over C = 8: cross-entropy log 8, divided by log 8 = 1
    assert loss_fn(zeros, y, pool).item() == pytest.approx(math.log(8))
    assert loss_fn(zeros, y, pool, log_normalise=True).item() == pytest.approx(1.0)
    # logits (2, 0, ..., 0), true class 0: CE = log(e^2 + 7) - 2 = 2.666468 - 2 = 0.666468; / log 8 (2.079442) = 0.320503
    logits = torch.zeros(1, 8)
    logits[0, 0] = 2.0
    assert loss_fn(logits, torch.tensor([0]), pool, log_normalise=True).item() == pytest.approx(0.320503, abs=1e-6)
    # binary task (C = 2): divided by log 2
    assert loss_fn(torch.zeros(1, 2), torch.tensor([1]), pool, log_normalise=True).item() == pytest.approx(1.0)


def test_eval_batches_are_capped_only_where_activations_would_grow():
    from stmedfm.run.train import EVAL_ACTIVATION_BYTES, eval_batch_size

    cfg = StudyConfig()
    # 28 px (every committed result) and 2D 64 px: the configured batches, unchanged
    assert eval_batch_size(cfg, "pathmnist", (3, 28, 28)) == 256 == eval_batch_size(cfg, "pathmnist", (3, 64, 64))
    assert eval_batch_size(cfg, "organmnist3d", (1, 28, 28, 28)) == 32
    # 224 px: 256 images would need 1.6 GB per first-layer activation; capped so a batch stays within the budget
    b = eval_batch_size(cfg, "pathmnist", (3, 224, 224))
    assert b == 41 and b * 32 * 224 * 224 * 4 <= EVAL_ACTIVATION_BYTES
    assert eval_batch_size(cfg, "organmnist3d", (1, 64, 64, 64)) == 16
