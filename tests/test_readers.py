"""Issue 20, where the readers are: one repository URL, Colab / Binder cells, one study name, progress in
notebooks, CLI conventions, licence and citation, and using a trained model. (The test that plays Colab end to
end is tests/test_colab.py.)"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

from stmedfm import __version__, cli
from stmedfm.core import paths
from stmedfm import notebook as nb
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- 1. the repository URL in one place ------------------------------------------------------------------------------
def test_repository_url_comes_from_pyproject_and_every_link_uses_it():
    url = PYPROJECT["project"]["urls"]["Repository"]
    assert nb.repository_url() == url and url == f"https://github.com/{nb.github_repo()}"
    repo = nb.github_repo()
    assert "git clone --quiet --depth 1 {_repo}" in nb.colab_cell() and f'"{url}"' in nb.colab_cell()
    assert not hasattr(nb, "GITHUB_REPO")  # no second copy of the URL in the code
    for path in [ROOT / "README.md", *NOTEBOOKS]:
        found = re.findall(r"(?:colab\.research\.google\.com/github|mybinder\.org/v2/gh|github\.com)/([\w.-]+/[\w.-]+)",
                           path.read_text())
        assert found and set(found) == {repo}, path.name


def test_relink_rewrites_links_after_a_fork(tmp_path, monkeypatch):
    project = tmp_path / "fork"
    (project / "notebooks").mkdir(parents=True)
    (project / "params").mkdir()
    shutil.copy(ROOT / "README.md", project / "README.md")
    shutil.copy(ROOT / "notebooks" / "01_data.ipynb", project / "notebooks")
    (project / "pyproject.toml").write_text("[project]\nname='x'\n")
    monkeypatch.setenv(paths.ENV_ROOT, str(project))
    monkeypatch.setattr(nb, "repository_url", lambda: "https://github.com/someone/fork")
    nb.relink([project / "notebooks" / "01_data.ipynb"])
    text = (project / "README.md").read_text() + (project / "notebooks" / "01_data.ipynb").read_text()
    assert "someone/fork" in text and "stmedfm/stmedfm" not in text


# --- 2. Colab: parameters first, a Colab cell that sets none, one data helper ------------------------------------------
def _bound_names(source: str) -> set[str]:
    code = "\n".join(line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())
    tree = ast.parse(code)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_parameters_cell_holds_every_reader_parameter_and_the_colab_cell_overwrites_none(path):
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert _bound_names(code[0].source) == {"params", "download"}
    namespace: dict = {}
    exec(code[0].source, namespace)
    assert namespace["download"] is False
    assert code[1].source == nb.colab_cell(path.stem)
    assert not _bound_names(code[1].source) & (set(StudyConfig.keys()) | {"params"})
    assert "download" not in code[1].source


def test_colab_cell_installs_the_extras_its_notebook_imports():
    """Notebook 10 runs the peft strategies: its Colab cell installs stmedfm[peft]; the others the base package."""
    assert '%pip install --quiet -e "{_home}[peft]"' in nb.colab_cell("10_peft_methods")
    assert '%pip install --quiet -e "{_home}"' in nb.colab_cell("01_data")
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        needs_peft = "peft_methods" in source or "methods." in source
        assert ("[peft]" in nb.colab_cell(path.stem)) == needs_peft, path.stem


def test_notebook_download_failure_gives_notebook_advice(no_default_data, monkeypatch):
    """A failed download in a notebook names what to set there (a mirror by %env, data_dir), never --mirror."""
    import stmedfm.data.download

    real = stmedfm.data.download.download

    def failing(task, size=28, data_dir=None, **kwargs):  # the real message of a failed download
        return real(task, size=size, data_dir=data_dir, retries=0, timeout=5, progress=False)

    monkeypatch.setenv(paths.ENV_MIRROR, "http://127.0.0.1:9/")  # a closed port: refused at once
    monkeypatch.setattr(stmedfm.data.download, "download", failing)
    cfg = StudyConfig.load(ROOT / "params" / "smoke.yaml", {"download": True})
    with pytest.raises(StmedfmError) as err:
        nb.ensure_data(cfg)
    message = str(err.value)
    assert "\n" not in message and "Could not download organamnist" in message and "--mirror" not in message
    assert "%env STMEDFM_MIRROR=" in message and "data_dir = " in message and "run this cell again" in message


def test_colab_install_keeps_an_installed_torch():
    """The package asks for a minimum torch (pip keeps Colab's when it satisfies it); make setup pins the exact
    version through constraints.txt, and the Colab cell never upgrades."""
    torch_req = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert re.fullmatch(r"torch>=[\d.]+", torch_req.replace(" ", ""))
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert "--upgrade" not in nb.colab_cell() and "-U " not in nb.colab_cell() and "torch" not in nb.colab_cell()


def test_data_notebooks_call_the_one_data_helper():
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        if path.stem == "02_architecture":
            continue  # reads no data
        assert ("nb.ensure_data(cfg)" in source or "nb.setup(" in source or "variants.from_namespace" in source), path


def test_ensure_data_without_download_says_how_in_one_line(no_default_data):
    cfg = StudyConfig.load(ROOT / "params" / "smoke.yaml")
    with pytest.raises(StmedfmError) as err:
        nb.ensure_data(cfg)
    message = str(err.value)
    assert "\n" not in message and "organamnist.npz" in message and "download = True" in message
    assert str(no_default_data / ".medmnist") in message
    assert err.value._render_traceback_() == [f"StmedfmError: {message}"]  # Jupyter shows this, no traceback


def test_ensure_data_with_download_fetches_verified_files(no_default_data, monkeypatch, tmp_path):
    calls = []

    def fake_download(task, size=28, data_dir=None):
        calls.append((task, size, data_dir))
        path = paths.download_dir(data_dir) / f"{task}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return path

    import stmedfm.data.download

    monkeypatch.setattr(stmedfm.data.download, "download", fake_download)
    cfg = StudyConfig.load(ROOT / "params" / "smoke.yaml", {"download": True})
    nb.ensure_data(cfg)
    assert [c[0] for c in calls] == ["organamnist", "bloodmnist", "retinamnist"]
    nb.ensure_data(cfg)  # present now: nothing downloaded again
    assert len(calls) == 3


# --- 3. Binder -------------------------------------------------------------------------------------------------------
def test_first_notebook_tells_binder_and_colab_users_how_to_get_the_data():
    first = nbformat.read(ROOT / "notebooks" / "01_data.ipynb", as_version=4).cells[0].source
    assert "Binder" in first and "download = True" in first


# --- 4. first success offline, and advice that never repeats the failed command -----------------------------------------
def test_preflight_advice_never_names_the_study_that_failed(no_default_data, monkeypatch):
    from stmedfm.run.planning import preflight

    offline = StudyConfig.load(ROOT / "params" / "offline.yaml")
    with pytest.raises(StmedfmError) as err:
        preflight(offline)
    assert "params/offline.yaml" not in str(err.value) and "make quick" not in str(err.value)

    import stmedfm.data.download

    def offline_download(task, **kwargs):
        raise StmedfmError(f"Could not download {task}: no network")

    monkeypatch.setattr(stmedfm.data.download, "download", offline_download)
    with pytest.raises(StmedfmError) as err:
        preflight(StudyConfig.load(ROOT / "params" / "paper.yaml", {"download": True}))
    text = str(err.value)
    assert "Could not download pathmnist: no network" in text
    assert "stmedfm download" not in text and "download=True" not in text  # the download that just failed


def test_preflight_suggests_the_offline_protocol_when_its_files_are_here(no_default_data, synthetic_dir, tmp_path,
                                                                        monkeypatch):
    from stmedfm.data import synthetic
    from stmedfm.run.planning import preflight

    data = tmp_path / "data"
    synthetic.write_synthetic(data, ["organamnist", "bloodmnist", "retinamnist", "adrenalmnist3d"], n=12)
    monkeypatch.setenv(paths.ENV_DATA, str(data))
    monkeypatch.setenv(paths.ENV_ROOT, str(ROOT))
    with pytest.raises(StmedfmError) as err:
        preflight(StudyConfig.load(ROOT / "params" / "paper.yaml"))
    assert "`make quick`" in str(err.value)


def test_readme_first_lines_show_the_three_commands_and_where_data_is():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    for command in ("make study", "make quick", "make test"):
        assert command in head, command
    assert "STMEDFM_DATA" in head and "~/.medmnist" in head
    assert "quick:" in (ROOT / "Makefile").read_text()


# --- 5. one study name --------------------------------------------------------------------------------------------------
def test_config_get_study_is_the_yaml_key(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    shutil.copy(ROOT / "params" / "smoke.yaml", mine)
    assert cli.main(["config", str(mine), "--get", "study"]) == 0
    assert capsys.readouterr().out == "smoke\n"
    assert cli.main(["config", str(mine), "--get", "study", "-p", "study=x"]) == 0
    assert capsys.readouterr().out == "x\n"
    (tmp_path / "nokey.yaml").write_text("seeds: 2\n")
    assert cli.main(["config", str(tmp_path / "nokey.yaml"), "--get", "study"]) == 0
    assert capsys.readouterr().out == "nokey\n"
    beyond = tmp_path / "mybeyond.yaml"  # a variant-study file: the Makefile's variants target asks the same way
    shutil.copy(ROOT / "params" / "beyond_smoke.yaml", beyond)
    assert cli.main(["config", str(beyond), "--get", "study"]) == 0
    assert capsys.readouterr().out == "beyond_smoke\n"
    assert "stmedfm config $(VARIANTS) --get study" in (ROOT / "Makefile").read_text()


#: A tiny study with pretraining on two tasks, Scratch and LoRA on one (changes to the tiny config).
READER_STUDY = dict(pretrain_tasks=["bloodmnist", "dermamnist"], strategies=["scratch", "lora"],
                    calibration_task="bloodmnist", calibration_strategy="lora")


def test_a_copied_params_file_cannot_touch_another_study(make_config, tmp_path, monkeypatch, capsys):
    from stmedfm.run.studyname import claim

    monkeypatch.setenv(paths.ENV_ROOT, str(tmp_path))
    (tmp_path / "params").mkdir()
    smoke = tmp_path / "params" / "smoke.yaml"
    smoke.write_text(make_config(READER_STUDY, study="smoke").to_yaml())
    mine = tmp_path / "params" / "mine.yaml"
    shutil.copy(smoke, mine)
    root = claim(StudyConfig.load(smoke), smoke)
    assert root == tmp_path / "results" / "smoke"
    assert yaml.safe_load((root / "source.yaml").read_text()) == {"study": "smoke", "params": "params/smoke.yaml"}
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    assert set(before) == {"source.yaml", "store.json"}
    # the CLI stops before any work, in one line, naming what to do
    assert cli.main(["study", str(mine), "-p", "pretrain_steps=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "params/mine.yaml names study 'smoke'" in err and "study: mine" in err
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    # the notebooks too
    with pytest.raises(StmedfmError, match="holds the results of params/smoke.yaml"):
        nb.setup(str(mine), {})
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    # the same file with overrides, or the copy under its own name, are fine
    assert claim(StudyConfig.load(smoke, {"seeds": 3}), smoke) == root
    assert claim(StudyConfig.load(mine, {"study": "mine"}), mine) == tmp_path / "results" / "mine"
    assert "params: params/mine.yaml" in (tmp_path / "results" / "mine" / "source.yaml").read_text()


FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
if [ "$(basename "$0")" = stmedfm ] && [ "$1" = config ]; then exec "{python}" -m stmedfm "$@"; fi
"""


@pytest.mark.slow
@pytest.mark.parametrize("args, study", [("", "smoke"), ("-p study=x -p seeds=2", "x")])
def test_make_study_names_every_directory_by_the_study_key(tmp_path, args, study):
    """The Makefile asks the CLI for the name: a copy mine.yaml of smoke.yaml is study 'smoke' in every command
    (and the claim then stops the copy in `stmedfm study`), `-p study=x` is 'x' everywhere."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    project = tmp_path / "project"
    (project / "params").mkdir(parents=True)
    (project / "notebooks").mkdir()
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, project / name)
    shutil.copy(ROOT / "params" / "smoke.yaml", project / "params" / "mine.yaml")
    shutil.copy(ROOT / "notebooks" / "04_transfer.ipynb", project / "notebooks")
    bin_dir = project / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for tool in ("stmedfm", "papermill", "jupyter"):
        (bin_dir / tool).write_text(FAKE_TOOL.format(log=log, python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    (bin_dir / ".installed").touch()
    cmd = ["make", "-s", "study", "VENV=venv", "PARAMS=params/mine.yaml"] + ([f"ARGS={args}"] if args else [])
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("stmedfm config params/mine.yaml --get study")
    assert f"papermill notebooks/04_transfer.ipynb runs/{study}/04_transfer.ipynb" in "\n".join(calls)
    assert f"stmedfm tables results/{study}" in calls and f"stmedfm figures results/{study}" in calls
    assert not any("results/mine" in c or "runs/mine" in c for c in calls)
    assert (project / "runs" / study).is_dir()


@pytest.mark.slow
def test_make_quick_runs_its_own_params_file_and_injects_no_undeclared_parameter(tmp_path):
    """Issue 31: papermill warned 'Passed unknown parameter: study' for every notebook of make quick, and the
    notebooks' kernel logged a KeyboardInterrupt at shutdown: make quick now injects only the declared `params`,
    on the kernelspec that silences the kernel's own log, and says which stage runs."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    project = tmp_path / "project"
    (project / "params").mkdir(parents=True)
    (project / "notebooks").mkdir()
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "params/quick.yaml", "notebooks/04_transfer.ipynb",
                 "tools/jupyter/kernels/stmedfm/kernel.json"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    bin_dir = project / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for tool in ("stmedfm", "papermill", "jupyter"):
        (bin_dir / tool).write_text(FAKE_TOOL.format(log=log, python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    (bin_dir / ".installed").touch()
    result = subprocess.run(["make", "-s", "quick", "VENV=venv"], cwd=project, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert "stmedfm study params/quick.yaml -p download=true" in calls
    papermill = [c for c in calls if c.startswith("papermill ")]
    assert papermill == ["papermill notebooks/04_transfer.ipynb runs/quick/04_transfer.ipynb --cwd notebooks -k "
                         "stmedfm --no-progress-bar -p params params/quick.yaml"]
    for stage in ("== 1/4 study quick", "== 2/4 notebook 1 of 1: papermill notebooks/04_transfer.ipynb",
                  "== 3/4 HTML", "== 4/4 tables and figures of results/quick"):
        assert stage in result.stdout, stage
    kernel = json.loads((ROOT / "tools/jupyter/kernels/stmedfm/kernel.json").read_text())
    assert kernel["argv"][:3] == ["python", "-m", "ipykernel_launcher"] and "--IPKernelApp.log_level=CRITICAL" in kernel["argv"]


def test_claims_of_a_one_seed_study_are_untestable_not_an_error(tiny_store):
    """make quick (one seed) stopped in notebook 08: with no testable claim the table had no p column (KeyError)."""
    from stmedfm.analysis.claims import claims_table

    table = claims_table(tiny_store.config(), tiny_store.table("metrics"))
    assert len(table) and (table["verdict"] == "untestable").all() and table["p_holm"].isna().all()


# --- 6. progress where the work is ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_setup_shows_a_progress_bar_and_one_summary_line(make_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(paths.ENV_ROOT, str(tmp_path))
    params = tmp_path / "tiny.yaml"
    params.write_text(make_config(READER_STUDY).to_yaml())
    nb.setup(str(params), {})
    out, err = capsys.readouterr()
    assert "study tiny: 100%" in err and "2/2" in err and "checkpoints 1/1" in err  # tqdm.auto: a widget in Jupyter
    assert "3/3" not in err  # the bar counts runs, as the summary does (issue 31: it said 32 where the summary said 30)
    lines = [line for line in out.splitlines() if not line.startswith("NOTE: ")]  # notices of the store
    assert len(lines) == 2 and lines[0].startswith("computing 2 of 2 runs") and "0 reused, 2 computed" in lines[1]
    assert "acc " not in out  # no line per run in a notebook


@pytest.mark.slow
def test_quiet_study_prints_no_line_per_run_and_the_bar_counts_runs(make_config, tmp_path, capsys):
    params = tmp_path / "tiny.yaml"
    params.write_text(make_config(READER_STUDY).to_yaml())
    assert cli.main(["study", str(params), "--out", str(tmp_path / "q"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"study 'tiny': results in {tmp_path / 'q'}"] and err == ""
    assert cli.main(["study", str(params), "--out", str(tmp_path / "v")]) == 0
    out, err = capsys.readouterr()
    assert "1 pretraining jobs and 2 runs" in out and out.count("acc ") == 2 and "pretrained seed=0" in out
    assert "2/2" in err and "3/3" not in err


def test_notebook_dependencies_include_ipywidgets():
    assert any(d.startswith("ipywidgets") for d in PYPROJECT["project"]["optional-dependencies"]["notebooks"])


# --- 7. conventions ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_python_m_stmedfm_version_and_bare_help():
    version = subprocess.run([sys.executable, "-m", "stmedfm", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout == f"stmedfm {__version__}\n"
    bare = subprocess.run([sys.executable, "-m", "stmedfm"], capture_output=True, text=True)
    assert bare.returncode == 0 and bare.stdout.startswith("usage: stmedfm") and "study" in bare.stdout
    assert bare.stderr == ""


def test_every_option_has_help():
    import argparse

    parser = cli.build_parser()
    missing = []
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in [("stmedfm", parser), *sub.choices.items()]:
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_license_and_citation():
    license_text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["version"] == __version__
    assert cff["license"] == "Apache-2.0" and cff["repository-code"] == nb.repository_url()
    refs = {r["title"].split(" ")[0]: r for r in cff["references"]}
    assert refs["A"]["title"].startswith("A Lightweight Medical Multi-Task Backbone") and "STMedFM" in refs["A"]["notes"]
    assert [a["family-names"] for a in refs["A"]["authors"]] == ["Mi", "Ye", "Wood"]
    assert refs["MedMNIST"]["title"].startswith("MedMNIST v2") and refs["MedMNIST"]["doi"] == "10.1038/s41597-022-01721-8"


def test_notebooks_are_counted_correctly():
    n = len(nb.NOTEBOOKS)
    for i, path in enumerate(NOTEBOOKS, 1):
        text = nbformat.read(path, as_version=4).cells[0].source
        for m in re.finditer(r"Notebook (\d+) of (\d+)", text):
            assert (int(m.group(1)), int(m.group(2))) == (i, n), path.name
    readme = (ROOT / "README.md").read_text()
    assert "`01_data.ipynb` … `08_report.ipynb`" not in readme
    section = readme.split("## Notebooks", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^\| \[`\d\d_\w+`\]", section, re.M)) == n
    assert f"{n} notebooks" in section


# --- 8. use what was trained ---------------------------------------------------------------------------------------------------
def test_load_model_rematerialises_verifies_saves_and_predicts(tiny_store, synthetic_dir, tmp_path):
    import torch

    from stmedfm import data as D
    from stmedfm.run.inference import load_model, model_path
    from stmedfm.model.peft import LoRALinear
    from stmedfm.run.store import ResultStore

    store = ResultStore(shutil.copytree(tiny_store.root, tmp_path / "tiny"))  # load_model writes into the store
    m = load_model(store.root, task="bloodmnist", strategy="lora", seed=0)
    assert m.source == "re-materialised" and m.spec.strategy == "lora" and m.cfg.study == "tiny"
    assert any(isinstance(x, LoRALinear) for x in m.model.modules())  # the strategy's modules
    assert model_path(store, m.run_id).is_file()
    test = D.load_task("bloodmnist", data_dir=synthetic_dir)["test"]
    raw = test.images.permute(0, 2, 3, 1).numpy()  # MedMNIST's (N, H, W, 3) layout
    probs = m.predict(raw)
    assert probs.shape == (len(raw), 8) and np.allclose(probs.sum(1), 1)
    # the prediction is the run's: its test accuracy equals the stored one
    acc = float((probs.argmax(1) == test.labels.numpy()).mean())
    assert acc == pytest.approx(ResultStore(store.root).read_run(m.run_id)["metrics"]["accuracy"])
    again = load_model(store.root, task="bloodmnist", strategy="lora", seed=0)
    assert again.source == "saved" and np.array_equal(again.predict(raw), probs)
    assert m.predict(raw[0]).shape == (1, 8)
    # a store whose metrics the software cannot reproduce hands out no model
    record = store.read_run(m.run_id)
    record["metrics"]["accuracy"] += 0.25
    store.run_path(m.run_id).write_text(__import__("json").dumps(record))
    model_path(store, m.run_id).unlink()
    with pytest.raises(StmedfmError, match="gave other metrics than the stored ones"):
        load_model(store.root, task="bloodmnist", strategy="lora", seed=0)
    with pytest.raises(StmedfmError, match="plans no transfer run of task=pathmnist"):
        load_model(store.root, task="pathmnist")
    with pytest.raises(StmedfmError, match="must be uint8"):
        again.predict(raw.astype(np.float32))
    assert torch.get_num_threads() >= 1
