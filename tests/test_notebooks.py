"""The committed notebooks (numbered, no outputs except nbval reference outputs, a parameters cell that defines
only ``params``, badges, the Colab cell, one alias per module, their position printed) and the helpers they call:
stmedfm.notebook (links, setup, display) and the views in stmedfm.analysis.report and stmedfm.analysis.plots.

The policy is defined once, in the developer tool ``tools/notebooks.py`` (outside the package), imported here by
path. Running the notebooks is nbval's job: ``pytest --nbval-lax notebooks/`` (part of ``make test``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
from matplotlib.figure import Figure
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from stmedfm import notebook as nb
from stmedfm.analysis import plots, report
from stmedfm.core import paths, registry
from stmedfm.run import inputs
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
FILES = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _load_tool():
    spec = importlib.util.spec_from_file_location("notebook_tools", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tools = _load_tool()


def test_the_numbered_notebooks_exist():
    assert [f.stem for f in FILES] == list(nb.NOTEBOOKS)  # read from the directory: a new notebook needs no code
    assert [f.stem[:2] for f in FILES] == [f"{i:02d}" for i in range(1, len(nb.NOTEBOOKS) + 1)]


def test_position_is_counted_from_the_notebooks_that_exist(capsys):
    nb.position(FILES[1].stem)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"Notebook 2 of {len(FILES)} of the STMedFM study")
    assert f"previous: {FILES[0].stem}" in line and (len(FILES) < 3 or f"next: {FILES[2].stem}" in line)
    with pytest.raises(StmedfmError, match="not one of the numbered notebooks"):
        nb.position("99_missing")


def test_show_source_displays_the_code_that_runs(capsys, monkeypatch):
    shown = []
    monkeypatch.setattr(nb, "show_markdown", shown.append)
    from stmedfm.model.peft import Adapter, LoRALinear

    nb.show_source(LoRALinear, Adapter)
    assert "`stmedfm.model.peft.LoRALinear`" in shown[0] and "class Adapter(nn.Module):" in shown[0]
    assert "```python\nclass LoRALinear(nn.Module):" in shown[0]


def test_maintenance_commands_point_to_the_tool(capsys):
    assert nb.main(["strip", "notebooks/01_data.ipynb"]) == 2
    assert "python tools/notebooks.py strip notebooks/01_data.ipynb" in capsys.readouterr().err


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_committed_notebook_is_clean(path):
    """No outputs or execution counts except nbval's reference outputs; parameters cell first (``params``, the smoke
    file, and ``download``); badges; the Colab cell; no later cell binding a StudyConfig field name."""
    found = tools.problems(path)
    assert not found, (f"{path.name}: " + "; ".join(found) +
                       ". Fix with `python tools/notebooks.py strip` (outputs) or `... refresh` (reference outputs).")
    first = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][0]
    default = nb.NOTEBOOK_PARAMS.get(path.stem, nb.DEFAULT_PARAMS)
    assert first.source.startswith(f'params = "{default}"') and first.source == nb.parameters_cell(path.stem)


def test_reference_outputs_exist_where_the_issue_asks_for_them():
    """Dataset sizes (01) and parameter counts / shapes (02) are checked by nbval; no other notebook has outputs."""
    checked = {}
    for path in FILES:
        cells = [c for c in nbformat.read(path, as_version=4).cells if tools.is_checked(c)]
        checked[path.stem] = cells
        assert all(c.outputs for c in cells)
    assert len(checked["01_data"]) >= 1 and "34561" in checked["01_data"][0].outputs[0]["text"]
    table4 = "".join(o["text"] for c in checked["02_architecture"] for o in c.outputs)
    assert "4041" in table4 and "160105" in table4 and " no\n" not in table4
    assert all(not cells for name, cells in checked.items() if name not in ("01_data", "02_architecture"))


def test_links_come_from_one_constant():
    assert nb.colab_url("01_data") == (f"https://colab.research.google.com/github/{nb.github_repo()}/blob/"
                                       f"{nb.GITHUB_BRANCH}/notebooks/01_data.ipynb")
    assert nb.binder_url("01_data").endswith(
        f"/v2/gh/{nb.github_repo()}/{nb.GITHUB_BRANCH}?labpath=notebooks%2F01_data.ipynb")
    assert nb.github_url() in nb.colab_cell()


def test_readme_has_the_badges_and_every_notebook():
    readme = (ROOT / "README.md").read_text()
    assert nb.badges() in readme
    for name in nb.NOTEBOOKS:
        assert nb.colab_url(name) in readme, name
    # every GitHub / Colab / Binder link to the project uses the one constant
    texts = [readme, *(p.read_text() for p in FILES)]
    for text in texts:
        for repo in re.findall(r"(?:colab\.research\.google\.com/github|mybinder\.org/v2/gh|github\.com)/"
                               r"([\w.-]+/[\w.-]+)", text):
            assert repo == nb.github_repo()


# --- the maintenance helpers ----------------------------------------------------------------------------------------
def _notebook(*cells):
    book = new_notebook(cells=[new_markdown_cell(nb.badges("01_data")), *cells])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return book


def _params():
    cell = new_code_cell(nb.parameters_cell("01_data"))
    cell.metadata["tags"] = ["parameters"]
    return cell


def test_is_checked_follows_nbval():
    assert tools.is_checked(new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"))
    assert tools.is_checked(new_code_cell("x = 1\n#   NBVAL_CHECK_OUTPUT  \nprint(x)"))
    assert not tools.is_checked(new_code_cell("# NBVAL_CHECK_OUTPUT  sizes\nprint(1)"))  # nbval ignores this line
    assert not tools.is_checked(new_markdown_cell("# NBVAL_CHECK_OUTPUT"))


def test_strip_keeps_only_reference_outputs(tmp_path):
    checked = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", execution_count=7,
                            outputs=[new_output("stream", name="stdout", text="1\n"),
                                     new_output("stream", name="stderr", text="warning\n")])
    plain = new_code_cell("1 + 1", execution_count=8, outputs=[new_output("execute_result", data={"text/plain": "2"},
                                                                           execution_count=8)])
    position = new_code_cell('from stmedfm import notebook as nb\n\nnb.position("01_data")')
    book = tools.strip(_notebook(_params(), new_code_cell(nb.colab_cell()), position, checked, plain))
    assert checked.outputs == [new_output("stream", name="stdout", text="1\n")] and checked.execution_count == 4
    assert plain.outputs == [] and plain.execution_count is None
    path = tmp_path / "01_data.ipynb"
    nbformat.write(book, path)
    assert tools.problems(path) == []


def test_problems_names_what_is_wrong(tmp_path):
    params = new_code_cell('params = "params/smoke.yaml"\nseeds = 3')  # not tagged, and defines more than params
    leak = new_code_cell("from stmedfm import notebook\nstrategies = ['full']")
    unrun = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)")
    output = new_code_cell("1", execution_count=1, outputs=[new_output("execute_result", data={"text/plain": "1"},
                                                                        execution_count=1)])
    path = tmp_path / "01_data.ipynb"
    nbformat.write(_notebook(params, new_code_cell("pass"), leak, unrun, output), path)
    text = "\n".join(tools.problems(path))
    assert "not tagged 'parameters'" in text
    assert "is not stmedfm.notebook.parameters_cell()" in text
    assert "Colab install cell" in text
    assert "['strategies']" in text
    assert "has no reference output" in text
    assert "has outputs but no" in text
    assert "imports stmedfm.notebook as 'notebook': every notebook calls it 'nb'" in text
    assert 'no cell calls nb.position("01_data")' in text


# --- the views notebooks 01 and 02 call (stmedfm.analysis.report, stmedfm.analysis.plots), on synthetic files of official shapes ---
@pytest.fixture
def synthetic_cfg(synthetic_dir) -> StudyConfig:
    return StudyConfig(data_dir=str(synthetic_dir))  # the paper's four flags, 2D and 3D


def test_table1_and_split_sizes(synthetic_cfg):
    t1 = inputs.table1(synthetic_cfg).set_index("flag")
    assert list(t1.index) == ["pathmnist", "bloodmnist", "dermamnist", "organmnist3d"]
    assert set(t1["status"]) == {"synthetic (MANIFEST)"}  # synthetic files are listed in their MANIFEST.json
    assert t1.loc["organmnist3d", "input shape"] == "(28, 28, 28)"
    assert "pretraining task 1" in t1.loc["pathmnist", "roles"] and "calibration task" in t1.loc["pathmnist", "roles"]
    sizes = inputs.split_sizes(synthetic_cfg).set_index("flag")
    assert sizes.loc["organmnist3d", "loaded as"] == "(1, 28, 28, 28)"
    assert sizes.loc["pathmnist", "train"] == 48 and sizes.loc["pathmnist", "official sizes"] == "no"


def test_class_distribution_and_weights(synthetic_cfg):
    dist = inputs.class_distribution(synthetic_cfg)
    assert len(dist) == sum(registry.get(t).n_classes for t in synthetic_cfg.all_tasks())
    for _, d in dist.groupby("task"):
        assert d["train share"].sum() == pytest.approx(1.0)
        assert d["weight"].mean() == pytest.approx(1.0, abs=1e-5)
    summary = inputs.imbalance_summary(dist).set_index("task")
    assert summary.loc["organmnist3d", "classes"] == 11
    off = inputs.class_distribution(synthetic_cfg.replace(class_weights=False))
    assert set(off["weight"]) == {1.0}
    assert isinstance(plots.fig_class_distribution(dist), Figure)


def test_fig_samples_2d_grid_and_3d_slices(synthetic_cfg):
    grid = plots.fig_samples("dermamnist", synthetic_cfg, per_class=3)
    assert len(grid.axes) == 7 * 3
    slices = plots.fig_samples("organmnist3d", synthetic_cfg)
    assert len(slices.axes) == 11 * 3
    assert [ax.get_title() for ax in slices.axes[:3]] == ["axial (mid z)", "coronal (mid y)", "sagittal (mid x)"]


def test_architecture_and_parameter_counts():
    cfg = StudyConfig()
    arch = plots.architecture_table(plots.study_model(cfg)).set_index("component")["parameters"]
    assert arch["2D stem"] == 56_320 and arch["3D stem"] == 69_664 and arch["shared encoder"] == 33_536
    assert arch["LoRA"] == 3_072 and arch["adapters"] == 4_256 and arch["task head (pathmnist)"] == 585
    plain = plots.architecture_table(STMedFM(["bloodmnist"]))
    assert "LoRA" not in set(plain["component"])
    t4 = inputs.table4_against_paper()
    assert len(t4) == 16 and set(t4["same as paper"]) == {"yes"}


def test_forward_shapes():
    shapes = plots.forward_shapes(StudyConfig()).set_index("flag")
    assert list(shapes["logits"]) == [(2, 8), (2, 11), (2, 11), (2, 11)]
    assert shapes.loc["organmnist3d", "batch"] == (2, 1, 28, 28, 28)
    assert set(shapes["encoder"]) == {(2, 64)}


# --- config, setup, tables and figures of a tiny study on synthetic files ---------------------------------------------
def test_config_takes_papermill_overrides_from_the_namespace():
    cfg = nb.config("params/smoke.yaml", {"seeds": 3, "pretrain_steps": "7", "_private": 2})
    assert cfg.study == "smoke" and cfg.seeds == [0, 1, 2] and cfg.pretrain_steps == 7


@pytest.mark.slow
def test_setup_runs_then_reuses_and_writes_tables_and_figures(make_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(paths.ENV_ROOT, str(tmp_path))
    params = tmp_path / "tiny.yaml"
    params.write_text(make_config(pretrain_tasks=["bloodmnist", "dermamnist"], calibration_task="bloodmnist").to_yaml())
    cfg, store = nb.setup(str(params), {})
    assert store.root == tmp_path / "results" / "tiny"
    assert "2 runs in results/tiny (0 reused, 2 computed" in capsys.readouterr().out
    _, _ = nb.setup(str(params), {})
    assert "(2 reused, 0 computed" in capsys.readouterr().out
    tables = nb.study_tables(store)
    assert (store.root / "tables" / "table7_auroc.md").is_file()
    assert set(tables["table7_auroc"]["strategy"]) == {"scratch", "full"}
    fig = plots.fig_class_distribution(inputs.class_distribution(cfg))
    assert nb.save_figure(fig, "figX", cfg) is fig
    assert {p.name for p in (tmp_path / "figures" / "tiny").iterdir()} == {"figX.png", "figX.svg"}
