"""Binder's environment.yml carries every run-time and notebook dependency of pyproject.toml, with consistent pins
(two files, one set of versions); constraints.txt pins what `make setup` installs exactly."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _env_requirements() -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    reqs = [Requirement(s) for s in pip if not s.startswith("-")]
    return {r.name.lower(): r for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = _env_requirements()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["notebooks"]]
    for dep in map(Requirement, wanted):
        assert dep.name.lower() in env, f"{dep} of pyproject.toml is missing from environment.yml"
        pinned = env[dep.name.lower()]
        pins = [s.version for s in pinned.specifier if s.operator == "=="]
        if pins:  # an exact version must satisfy the package's range
            assert dep.specifier.contains(pins[0], prereleases=True), f"environment.yml {pinned} vs pyproject {dep}"
        else:
            assert pinned.specifier == dep.specifier, f"environment.yml {pinned} vs pyproject {dep}"
    for dep in ("nbval", "pytest"):
        assert dep in env


def test_exact_torch_everywhere_it_is_pinned():
    constraints = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
    torch = next(r for r in constraints if r.name == "torch")
    assert str(_env_requirements()["torch"].specifier) == str(torch.specifier) == "==2.13.0"
