"""Parameters: defaults are the paper, files and overrides parse, every bad value fails before work."""

from pathlib import Path

import pytest

from stmedfm.config import StudyConfig, parse_overrides
from stmedfm.errors import StmedfmError
from stmedfm import paths


def test_defaults_are_the_paper_protocol():
    cfg = StudyConfig()
    assert cfg.pretrain_tasks == ["pathmnist", "bloodmnist", "dermamnist", "organmnist3d"]
    assert (cfg.pretrain_steps, cfg.pretrain_lr, cfg.weight_decay) == (200, 2e-3, 1e-4)
    assert cfg.steps("pathmnist", "scratch") == 150 and cfg.steps("organmnist3d", "scratch") == 80
    assert cfg.steps("pathmnist", "lora") == 120 and cfg.steps("organmnist3d", "full") == 50
    assert cfg.lr("full") == 1.5e-3 and cfg.lr("lora") == cfg.lr("adapter") == 2e-3
    assert cfg.batch_size("bloodmnist") == 32 and cfg.batch_size("organmnist3d") == 8
    assert cfg.eval_batch_size("bloodmnist") == 256 and cfg.eval_batch_size("organmnist3d") == 32
    assert cfg.fewshot_tasks == {"dermamnist": 40, "organmnist3d": 10}


def test_paper_yaml_restates_the_defaults():
    cfg = StudyConfig.load(paths.project_root() / "params" / "paper.yaml")
    default = StudyConfig(study="paper", seeds=[0, 1, 2, 3, 4])
    assert cfg.to_dict() == default.to_dict()


@pytest.mark.parametrize("name", ["paper", "offline", "smoke"])
def test_project_parameter_files_validate(name):
    cfg = StudyConfig.load(paths.project_root() / "params" / f"{name}.yaml")
    assert cfg.study == name


def test_seeds_count_and_list():
    assert StudyConfig.from_dict({"seeds": 3}).seeds == [0, 1, 2]
    assert StudyConfig.from_dict({"seeds": [4, 7]}).seeds == [4, 7]


def test_overrides_parse_as_yaml():
    over = parse_overrides(["seeds=2", "pretrain_steps=10", "fewshot_tasks={bloodmnist: 5}", "strategies=[full, lora]"])
    cfg = StudyConfig.from_dict(over)
    assert cfg.seeds == [0, 1] and cfg.pretrain_steps == 10
    assert cfg.fewshot_tasks == {"bloodmnist": 5} and cfg.strategies == ["full", "lora"]
    with pytest.raises(StmedfmError, match="key=value"):
        parse_overrides(["seeds"])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"pretrain_step": 10}, "Unknown parameter 'pretrain_step'. Did you mean 'pretrain_steps'?"),
        ({"downstream_tasks": ["bloodmnst"]}, "Unknown MedMNIST flag 'bloodmnst'. Did you mean 'bloodmnist'?"),
        ({"pretrain_steps": 0}, "'pretrain_steps' must be a positive number, got 0"),
        ({"finetune_steps_3d": -5}, "'finetune_steps_3d' must be a positive number, got -5"),
        ({"fewshot_tasks": {"dermamnist": 0}}, "'fewshot_tasks.dermamnist' must be a positive number"),
        ({"leave_out_tasks": ["retinamnist"]}, "'leave_out_tasks' names 'retinamnist', which is not a pretraining task"),
        ({"calibration_task": "retinamnist"}, "'calibration_task' is 'retinamnist', which is not a downstream task"),
        ({"strategies": ["lroa"]}, "Unknown strategy 'lroa' in 'strategies'. Did you mean 'lora'?"),
        ({"downstream_tasks": ["chestmnist"]}, "multi-label"),
        ({"task_sampling": "uniformm"}, "Did you mean 'uniform'?"),
        ({"image_size": 32}, "Unsupported image size 32"),
        ({"image_size": 128}, "organmnist3d"),
        ({"seeds": 0}, "'seeds' must be positive"),
        ({"flip_policy": "label-safe"}, "Unknown flip_policy 'label-safe'. Did you mean 'label_safe'?"),
    ],
)
def test_validation_messages(values, message):
    with pytest.raises(StmedfmError) as err:
        StudyConfig.from_dict(values)
    assert message in str(err.value)


def test_missing_parameter_file():
    with pytest.raises(StmedfmError, match="does not exist"):
        StudyConfig.load("params/nope.yaml")


def test_notebook_namespace_overrides_only_named_fields(tmp_path, monkeypatch):
    from stmedfm.config import from_namespace

    monkeypatch.chdir(tmp_path)  # like a notebook outside the project: the path resolves against the root
    monkeypatch.setenv("STMEDFM_ROOT", str(Path(__file__).resolve().parents[1]))
    cfg = from_namespace("params/smoke.yaml", {"seeds": 3, "pretrain_steps": 7, "params": "x", "unrelated": 1})
    assert cfg.study == "smoke" and cfg.seeds == [0, 1, 2] and cfg.pretrain_steps == 7
    assert cfg.eval_max_samples == 256  # from the file
