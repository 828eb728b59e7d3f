"""Parameters: defaults are the paper, files and overrides parse, every bad value fails before work."""

from pathlib import Path

import pytest

from stmedfm.core.config import StudyConfig, parse_overrides
from stmedfm.core.errors import StmedfmError
from stmedfm.core import paths


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
        ({"seeds": 0}, "'seeds' must be a positive count (5 = seeds 0..4; at most 10000) or a non-empty list"),
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
    from stmedfm.core.config import from_namespace

    monkeypatch.chdir(tmp_path)  # like a notebook outside the project: the path resolves against the root
    monkeypatch.setenv("STMEDFM_ROOT", str(Path(__file__).resolve().parents[1]))
    import os as module

    cfg = from_namespace("params/smoke.yaml", {"seeds": 3, "pretrain_steps": 7, "params": "x", "os": module,
                                               "In": [""], "Out": {}, "_i1": "x"})
    assert cfg.study == "smoke" and cfg.seeds == [0, 1, 2] and cfg.pretrain_steps == 7
    assert cfg.eval_max_samples == 256  # from the file


@pytest.mark.parametrize("namespace, message", [
    ({"seed": 3}, "Unknown notebook parameter 'seed' = 3. Did you mean 'seeds'?"),  # papermill -p seed 3
    ({"seeds": "abc"}, "Parameter 'seeds' must be a positive count"),  # papermill -p seeds abc
    ({"unrelated": 1}, "Unknown notebook parameter 'unrelated' = 1."),
])
def test_notebook_namespace_refuses_injected_typos(namespace, message, monkeypatch):
    from stmedfm.core.config import from_namespace

    monkeypatch.setenv("STMEDFM_ROOT", str(Path(__file__).resolve().parents[1]))
    with pytest.raises(StmedfmError) as err:
        from_namespace("params/smoke.yaml", namespace)
    assert message in str(err.value)


# Every bad input of issue 18, item 7: one line naming key, value and what is expected; never a traceback.
@pytest.mark.parametrize("override, message", [
    ("seeds=1.5", "Parameter 'seeds' must be a positive count (5 = seeds 0..4; at most 10000) or a non-empty "
                  "list of distinct non-negative integers, got 1.5."),
    ("seeds=1000000000", "Parameter 'seeds' must be a positive count"),  # no list of a billion seeds in memory
    ("study=" + "x" * 101, "Parameter 'study' must be a name of at most 100"),
    ("width=1000000000", "Parameter 'width' must be at most 4096"),
    ("downstream_tasks=[retinamnist, RetinaMNIST]", "Parameter 'downstream_tasks' names 'retinamnist' more than once"),
    ("seeds=abc", "Parameter 'seeds' must be a positive count"),
    ("seeds=[0,0]", "Parameter 'seeds' must be a list without repeats (0 appears more than once"),
    ("seeds=[-1]", "Parameter 'seeds' must be a positive count"),
    ("downstream_tasks=[retinamnist, retinamnist]", "'downstream_tasks' must be a list without repeats ('retinamnist'"),
    ("strategies=[full, full]", "'strategies' must be a list without repeats"),
    ("fewshot_k=[1, 5, 5]", "'fewshot_k' must be a list without repeats (5 appears"),
    ("fewshot_k=5", "Parameter 'fewshot_k' must be a list of integers, got 5."),
    ("fewshot_k=[1.5]", "Parameter 'fewshot_k' must be a list of integers, got [1.5]."),
    ("fewshot_tasks=[retinamnist]", "Parameter 'fewshot_tasks' must be a mapping of task to an integer"),
    ("class_weight_clip=5", "Parameter 'class_weight_clip' must be a list of numbers, got 5."),
    ("class_weight_clip=[1, 2, 3]", "'class_weight_clip' must be [low, high]"),
    ("weight_decay=abc", "Parameter 'weight_decay' must be a number, got 'abc'."),
    ("strategies=null", "Parameter 'strategies' must be a list of text values, got None."),
    ("study=", "Parameter 'study' must be a text value, got None."),
    ("study=../../escaped", "Parameter 'study' must be a name of at most 100 letters, digits"),
    ("study=/abs/dir", "Parameter 'study' must be a name"),
    ("study=.", "Parameter 'study' must be a name"),
    ("study=a/b", "Parameter 'study' must be a name"),
    ("scratch_steps_2d=2.5", "Parameter 'scratch_steps_2d' must be an integer, got 2.5."),
    ("workers=1.5", "Parameter 'workers' must be an integer or null, got 1.5."),
    ("augment=maybe", "Parameter 'augment' must be true or false, got 'maybe'."),
    ("data_fractions=[0.5, 0.5]", "'data_fractions' must be a list without repeats"),
    ("budget_tasks={retinamnist: [30, 30]}", "'budget_tasks' must be a list without repeats"),
])
def test_bad_overrides_fail_with_one_clear_line(override, message):
    with pytest.raises(StmedfmError) as err:
        StudyConfig.load(paths.project_root() / "params" / "smoke.yaml", parse_overrides([override]))
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_overrides_accept_what_users_write():
    over = parse_overrides(["lr_scratch=2e-3", "study=123", "calibration_task=null", "seeds=[3, 1]"])
    cfg = StudyConfig.load(paths.project_root() / "params" / "smoke.yaml", over)
    assert cfg.lr_scratch == 0.002 and cfg.study == "123" and cfg.calibration_task is None and cfg.seeds == [3, 1]
    # a path field: '~' (YAML's null) is the home folder; null asks for the default
    assert parse_overrides(["data_dir=~", "calibration_task=~"]) == {"data_dir": "~", "calibration_task": None}
    assert parse_overrides(["data_dir=null"]) == {"data_dir": None}


@pytest.mark.parametrize("option", ["--out", "--data-dir"])
def test_an_empty_folder_option_is_refused_not_read_as_the_default(option, capsys):
    from stmedfm.cli import main

    assert main(["study", "params/smoke.yaml", option, ""]) == 2
    assert capsys.readouterr().err == f"stmedfm: error: {option} needs a folder, got an empty path.\n"


def test_every_problem_is_reported_at_once():
    with pytest.raises(StmedfmError) as err:
        StudyConfig.from_dict({"seed": 1, "weight_decay": "abc", "pretrain_steps": 0, "strategies": ["lroa"]})
    lines = str(err.value).splitlines()
    assert lines[0].startswith("Unknown parameter 'seed'. Did you mean 'seeds'?")
    assert lines[1] == "Parameter 'weight_decay' must be a number, got 'abc'."
    assert len(lines) == 2  # types first: range rules need correct types


def test_malformed_override_yaml():
    with pytest.raises(StmedfmError, match=r"Override 'strategies=\[a': the value is not valid YAML"):
        parse_overrides(["strategies=[a"])


def test_variants_notebook_refuses_injected_typos():
    from stmedfm.analysis import variants

    with pytest.raises(StmedfmError, match="Unknown notebook parameter 'seed' = 3. Did you mean 'seeds'?"):
        variants.from_namespace(paths.project_root() / "params" / "beyond_smoke.yaml", {"seed": 3})


def test_flags_are_spelled_as_the_registry_spells_them():
    cfg = StudyConfig.load(paths.project_root() / "params" / "smoke.yaml",
                           parse_overrides(["downstream_tasks=[RetinaMNIST, BloodMNIST]", "calibration_task=BloodMNIST",
                                            "fewshot_tasks={RetinaMNIST: 4}"]))
    assert cfg.downstream_tasks == ["retinamnist", "bloodmnist"] and cfg.calibration_task == "bloodmnist"
    assert cfg.fewshot_tasks == {"retinamnist": 4}


def test_a_parameter_file_that_is_not_text_is_a_clear_error(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(StmedfmError, match="is not valid YAML text"):
        StudyConfig.load(bad)
