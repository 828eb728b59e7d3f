"""Binder's environment.yml pins what pyproject.toml pins (two files, one set of versions)."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    specs = {s.replace(" ", "") for s in pip if not s.startswith("-")}
    assert "torch==2.13.0" in specs
    for dep in project["dependencies"]:
        assert dep.replace(" ", "") in specs, f"{dep} of pyproject.toml is missing from environment.yml"
    for dep in ("jupyterlab>=4", "papermill>=2.5", "nbval>=0.11"):
        assert dep in specs
