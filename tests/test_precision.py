"""precision: fp32 | bf16 | auto — what auto picks (mocked CPU flags / CUDA capabilities), run identity, and
finite, autocast bf16 runs with fp32 weights and metrics."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stmedfm.model import precision as P
from stmedfm.core import paths
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.run.planning import official_data, run_id
from stmedfm.core.records import RunSpec, plan
from stmedfm.run.study import run_study
from stmedfm.run.train import run_downstream

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX2_ONLY = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags, name", [(SAPPHIRE_RAPIDS, "bf16"), (ZEN4, "bf16"), (AVX2_ONLY, "fp32"),
                                         (frozenset(), "fp32")])
def test_auto_on_cpus(flags, name):
    got = P.resolve("auto", "cpu", flags=flags)
    assert got.name == name and got.device_type == "cpu"
    assert got.scaler() is None
    if name == "fp32":
        assert "emulated" in got.reason and got.dtype is None
    else:
        assert ("amx_bf16" if "amx_bf16" in flags else "avx512_bf16") in got.reason and got.dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
@pytest.mark.parametrize("capability, name", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_devices(capability, name):
    got = P.resolve("auto", "cuda", cuda_capability=capability)
    assert got.name == name and got.device_type == "cuda"
    if name == "fp16":  # a T4: fp16 autocast needs a gradient scaler
        assert isinstance(got.scaler(), torch.amp.GradScaler) and "gradient scaler" in got.reason
    else:
        assert got.scaler() is None


def test_explicit_choices_and_errors():
    assert P.resolve("fp32", "cpu", flags=SAPPHIRE_RAPIDS).name == "fp32"  # never silently upgraded
    emulated = P.resolve("bf16", "cpu", flags=AVX2_ONLY)
    assert emulated.name == "bf16" and "emulates" in emulated.reason  # asked for: done, with the warning
    assert P.resolve("bf16", "cuda", cuda_capability=(7, 5)).name == "bf16"
    with pytest.raises(StmedfmError, match="needs a CUDA device"):
        P.resolve("fp16", "cpu")
    with pytest.raises(StmedfmError, match="Unknown precision"):
        P.resolve("fp64", "cpu")
    with pytest.raises(StmedfmError, match="Unknown precision 'bf61'.*bf16"):
        StudyConfig(precision="bf61").validate()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n")
    from stmedfm.core import provenance

    flags = P.cpu_flags(f)
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= flags
    assert P.native_cpu_bf16(flags) == "amx_bf16" and provenance.cpu_model(f) == "Some CPU"
    assert provenance.isa_summary(flags) == "avx2 avx512_bf16 amx_bf16"
    assert P.cpu_flags(tmp_path / "missing") == frozenset()


def test_fp32_run_ids_of_committed_results_are_unchanged():
    """Adding ``precision`` must not change the id of any committed run (results/offline/runs.csv)."""
    root = paths.project_root() / "results" / "offline"
    cfg = StudyConfig.load(root / "config.yaml")
    committed = set(pd.read_csv(root / "runs.csv")["run_id"])
    data = official_data(cfg)
    ids = {run_id(cfg, p.spec, data) for p in plan(cfg)}
    assert committed and committed <= ids
    assert ids == {run_id(cfg.replace(precision="fp32"), p.spec, data) for p in plan(cfg)}
    bf16 = {run_id(cfg.replace(precision="bf16"), p.spec, data) for p in plan(cfg)}
    assert len(bf16) == len(ids) and not bf16 & ids  # bf16 runs (and their checkpoints) are other runs


@pytest.mark.parametrize("flags, same_as", [(AVX2_ONLY, "fp32"), (ZEN4, "bf16")])
def test_auto_enters_the_identity_as_what_it_resolves_to(monkeypatch, flags, same_as):
    monkeypatch.setattr(P, "cpu_flags", lambda *a, **k: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    P._resolved_name.cache_clear()
    try:
        cfg = StudyConfig(pretrain_tasks=["bloodmnist"], downstream_tasks=["bloodmnist"], strategies=["full"],
                          fewshot_tasks={}, class_weight_ablation_tasks=[], leave_out_tasks=[], extended_tasks=[],
                          calibration_task=None)
        spec, data = plan(cfg)[0].spec, official_data(cfg)
        assert run_id(cfg.replace(precision="auto"), spec, data) == run_id(cfg.replace(precision=same_as), spec, data)
        assert run_id(cfg.replace(precision="auto"), spec, data) != run_id(
            cfg.replace(precision={"fp32": "bf16", "bf16": "fp32"}[same_as]), spec, data)
    finally:
        P._resolved_name.cache_clear()


#: Transfer on a 2D and a 3D task with budgets of a few steps (changes to the tiny config).
TWO_TASKS = dict(study="prec", pretrain_tasks=["bloodmnist", "organmnist3d"], pretrain_steps=4,
                 downstream_tasks=["bloodmnist", "organmnist3d"], strategies=["scratch", "full", "lora"],
                 scratch_steps_2d=3, scratch_steps_3d=2, finetune_steps_2d=3, finetune_steps_3d=2,
                 calibration_task="bloodmnist")


@pytest.mark.slow  # 3 to 8 s of CPU where bf16 is emulated (no native bf16)
def test_bf16_runs_under_autocast_with_fp32_weights_and_finite_metrics(make_config):
    cfg = make_config(TWO_TASKS, precision="bf16")
    seen = []
    spec = RunSpec(task="bloodmnist", strategy="scratch", seed=0, steps=3, lr=2e-3, class_weights=True)
    from stmedfm.run import train

    real = train.downstream_model

    def spy(*args):
        model = real(*args)
        model.stem2d[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
        return model

    try:
        train.downstream_model = spy
        res = run_downstream(cfg, spec, None)
    finally:
        train.downstream_model = real
    assert seen and all(d == torch.bfloat16 for d in seen)  # training and evaluation convolutions in bf16
    assert all(np.isfinite(v) for v in res.metrics.values())
    ref = run_downstream(cfg.replace(precision="fp32"), spec, None).metrics
    assert res.metrics != ref  # the computation changed...
    assert abs(res.metrics["macro_auroc"] - ref["macro_auroc"]) < 0.2  # ...not the model


@pytest.mark.slow
def test_bf16_study_end_to_end(make_config, tmp_path):
    store = run_study(make_config(TWO_TASKS, precision="bf16", allow_emulated_bf16=True), out=tmp_path / "bf16",
                      progress=False)  # forced: this test runs on CPUs that emulate bf16 too
    metrics = store.table("metrics")
    assert len(metrics) and np.isfinite(metrics["value"]).all()
    state = torch.load(next(Path(tmp_path / "bf16" / "checkpoints").glob("*.pt")), weights_only=True)
    state = state.get("state_dict", state)  # checkpoints name their job: {'job_id', 'state_dict', 'provenance'}
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())  # fp32 weights
    fp32 = run_study(make_config(TWO_TASKS), out=tmp_path / "fp32", progress=False).table("runs")
    assert not set(fp32["run_id"]) & set(store.table("runs")["run_id"])
