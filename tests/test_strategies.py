"""Issue 31: extending is one registration. register() refuses what figures cannot tell apart; the registration
docs/strategies.md shows, made in a module of one's own, leaves the registry's tests green and reaches the workers
through the `strategies_module` parameter."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stmedfm.core import strategies
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "strategies.md"


def docs_registration() -> str:
    """The module of docs/strategies.md's "A strategy of your own" section, verbatim."""
    section = DOCS.read_text().split("## A strategy of your own", 1)[1]
    return re.search(r"```python\n# mystrategies.py\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def registry(monkeypatch):
    """A temporary registry: a copy of the package's, restored after the test."""
    monkeypatch.setattr(strategies, "REGISTRY", dict(strategies.REGISTRY))
    return strategies.REGISTRY


def test_register_refuses_a_taken_name_and_plots_a_taken_colour_or_marker_in_one_line(registry, monkeypatch):
    """Colours and markers are the figures' (stmedfm.analysis.plots.style, issue 32); the guarantee stays: distinct styles."""
    style = importlib.import_module("stmedfm.analysis.plots.style")  # the module (stmedfm.analysis.plots.style is also a function)

    monkeypatch.setattr(style, "STYLES", dict(style.STYLES))
    with pytest.raises(StmedfmError, match="already registered"):
        strategies.register(strategies.Strategy("lora", "again"))
    with pytest.raises(StmedfmError, match=r"color '#0173B2' is taken by 'full'") as err:
        style.set_style("new", "#0173B2", "x")  # full's, other case
    assert "\n" not in str(err.value)
    with pytest.raises(StmedfmError, match=r"marker '\^' is taken by 'lora'.*Free markers: .*x") as err:
        style.set_style("new", "#101010", "^")
    assert "new" not in style.STYLES
    exec(docs_registration(), {})  # the docs' example is legal, and is drawn in a generated style of its own
    assert registry["ln_head"].trains == ("layernorm", "head") and "ln_head" not in strategies.BUILT_IN
    drawn = [style.strategy_style(n) for n in registry]
    assert len(set(drawn)) == len(drawn) and len({c.lower() for c, _ in drawn}) == len(drawn)
    style.set_style("ln_head", "#9e0142", "x")
    with pytest.raises(StmedfmError, match="taken by 'ln_head'"):
        style.set_style("other", "#9E0142", "1")
    with pytest.raises(StmedfmError, match="surgery"):
        strategies.register(strategies.Strategy("mine", "Mine", trains=("own", "head")))


def test_a_study_names_the_strategies_of_its_module(registry, tmp_path, monkeypatch):
    (tmp_path / "mystrategies_a.py").write_text(docs_registration())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mystrategies_a", raising=False)
    with pytest.raises(StmedfmError, match=r"Unknown strategy 'ln_head' in 'strategies'.*register it in a module named by strategies_module"):
        StudyConfig.from_dict({"strategies": ["full", "ln_head"]})
    cfg = StudyConfig.from_dict({"strategies_module": "mystrategies_a", "strategies": ["full", "ln_head"]})
    assert cfg.strategies == ["full", "ln_head"] and "ln_head" in registry
    monkeypatch.delitem(sys.modules, "mystrategies_a")
    with pytest.raises(StmedfmError) as err:
        StudyConfig.from_dict({"strategies_module": "no_such_module_here", "strategies": ["full"]})
    assert str(err.value).count("\n") == 0 and "importing 'no_such_module_here' failed (ModuleNotFoundError" in str(err.value)


def test_registered_in_this_process_when_asked():
    """Run by the test below in a process whose registry holds the docs' strategy (skipped otherwise)."""
    name = os.environ.get("STMEDFM_EXPECT_STRATEGY")
    if not name:
        pytest.skip("only inside test_the_docs_registration_keeps_the_registry_tests_green")
    assert name in strategies.names() and name not in strategies.BUILT_IN


#: The tests that read the registry: styles, counts, the study files, training, the parameter table.
REGISTRY_TESTS = [
    "tests/test_strategies.py::test_registered_in_this_process_when_asked",
    "tests/test_plots.py::test_style_has_one_distinct_colour_per_strategy_and_saves_at_150_dpi",
    "tests/test_methods.py::test_counts_cover_every_registered_strategy",
    "tests/test_methods.py::test_the_study_files_plan_every_registered_strategy",
    "tests/test_peft.py::test_every_registered_strategy_trains_from_the_registry",
    "tests/test_peft_methods.py::test_params_lists_every_registered_strategy_with_counts",
    "tests/test_peft_methods.py::test_every_peft_method_is_counted_by_hand",
]


@pytest.mark.slow
def test_the_docs_registration_keeps_the_registry_tests_green(tmp_path):
    """A fresh process is the temporary registry: the docs' module, loaded as a pytest plugin before collection,
    registers its strategy; the registry's tests then pass unchanged."""
    (tmp_path / "mystrategies.py").write_text(docs_registration())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "STMEDFM_EXPECT_STRATEGY": "ln_head"}
    known = [t for t in REGISTRY_TESTS if t.split("::")[0] and (ROOT / t.split("::")[0]).is_file()]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "mystrategies", "-p", "no:cacheprovider",
                             "-m", "not slow", *known], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout and "error" not in result.stdout.lower()


@pytest.mark.slow
def test_strategies_module_reaches_the_worker_processes(make_config, registry, tmp_path, monkeypatch):
    """Two spawned pool workers (no state inherited) run the module's strategy: they import it from the config."""
    from stmedfm.run.study import run_study

    (tmp_path / "mystrategies_w.py").write_text(docs_registration())
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    monkeypatch.delitem(sys.modules, "mystrategies_w", raising=False)
    cfg = make_config(study="mine", workers=2, seeds=[0, 1], strategies=["full", "ln_head"],
                      strategies_module="mystrategies_w")
    runs = run_study(cfg, out=tmp_path / "mine", progress=False).table("runs")
    mine = runs[runs["strategy"] == "ln_head"]
    assert len(mine) == 2 and (mine["trainable_params"] == 384 + 65 * 8).all()  # LayerNorms + head, by hand
    monkeypatch.delitem(sys.modules, "mystrategies_w")
