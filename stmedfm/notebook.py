"""Helpers of the numbered notebooks (``notebooks/01_data.ipynb`` ...), so that every notebook stays a few lines
per cell and no logic is copied between them. Three jobs, nothing else:

* **Links**: the repository (:func:`repository_url`: ``[project.urls]`` of ``pyproject.toml``, the one place it is
  written), the Colab / Binder badges, the parameters cell (:func:`parameters_cell`) and the Colab cell
  (:func:`colab_cell`) every notebook starts with, and :func:`relink`, which rewrites them after a fork
  (``python -m stmedfm.notebook relink notebooks/*.ipynb``).
* **Setup**: :func:`setup` turns the ``parameters`` cell (``params`` plus anything papermill injected) into a
  validated :class:`~stmedfm.core.config.StudyConfig`, runs or resumes the study into the shared store
  ``results/<study>/`` and returns ``(cfg, store)``; :func:`config` does the same without running anything;
  :func:`ensure_data` is the one data helper (downloads when ``download`` is true, else says how in one line).
* **Display**: :func:`position` ("Notebook 2 of 10", counted from the notebooks that exist), :func:`show`,
  :func:`show_tables`, :func:`study_tables` (the paper tables, written into ``results/<study>/tables/``),
  :func:`save_figure` (a figure of :mod:`stmedfm.analysis.plots` into ``figures/<study>/``) and :func:`show_source` (the
  code a notebook explains, read from the package).

What a notebook *shows* lives next to what it shows: data tables in :mod:`stmedfm.analysis.report`, figures, Table 2 and
the study's model in :mod:`stmedfm.analysis.plots`. The maintenance of the committed notebooks (strip outputs, refresh the
nbval reference outputs, list policy problems) is a developer tool, ``tools/notebooks.py``, outside the package.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import inspect
import io
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from stmedfm.core import paths, registry, seal
from stmedfm.core.config import StudyConfig, from_namespace, params_path
from stmedfm.core.errors import StmedfmError

# tqdm.auto (the progress bars of stmedfm.run.study) draws a widget in Jupyter with ipywidgets (the notebooks extra);
# without it, it warns once ("IProgress not found") and falls back to text bars: import it here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

#: The branch the Colab / Binder links open.
GITHUB_BRANCH = "main"
#: Where the numbered notebooks are: the source tree next to the package (an editable install, Colab's clone).
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
#: The numbered notebooks (``NN_name``), in reading order, read from their directory: adding a notebook changes no
#: code, and "Notebook N of M" (:func:`position`) cannot go stale. Empty for an install without the source tree.
NOTEBOOKS = tuple(sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")))
#: The notebook the README's badges open.
FIRST_NOTEBOOK = "01_data"
#: The paper's captions of the tables of :func:`stmedfm.analysis.tables.build_tables`.
TABLE_TITLES = {
    "table4_params": "Table 4 · Total and trainable parameters per task and strategy (single-task heads)",
    "table5_accuracy": "Table 5 · Test accuracy",
    "table6_macro_f1": "Table 6 · Test macro-F1",
    "table7_auroc": "Table 7 · Test macro AUROC",
    "table8_ece": "Table 8 · Expected calibration error (ECE, 15 bins; lower is better)",
    "table8b_brier": "Table 8b · Multiclass Brier score (lower is better)",
    "table9_fewshot": "Table 9 · Few-shot macro AUROC, first few-shot task (split 0)",
    "table10_fewshot": "Table 10 · Few-shot macro AUROC, second few-shot task (split 0)",
    "table10b_fewshot_splits": "Table 10b · Few-shot macro AUROC, mean over splits (std over splits beside)",
    "table11_class_weights": "Table 11 · Class-weighted loss on / off",
    "table12_pretrain_subset": "Table 12 · Pretraining with and without the left-out task",
    "table12b_extended": "Table 12b · Extended training budget (scratch vs full)",
    "table13_per_class": "Table 13 · Per-class precision / recall / F1 of the calibration task",
    "temperature_scaling": "Temperature scaling · ECE, Brier and NLL before (raw) and after (_ts), fitted T",
    "medmnist_benchmark": "Beside MedMNIST v2's own baselines · our Scratch and Full vs ResNet-18 (28) / ResNet-18 + 3D",
}
DEFAULT_PARAMS = "params/smoke.yaml"
#: Notebooks with their own smoke default: 09_beyond reads a beyond file of variants (stmedfm.analysis.variants), 10_peft_methods
#: the study of every registered strategy (stmedfm.analysis.methods); `make study` runs 01-08 only, `make variants` runs 09 and
#: `make peft-methods` 10.
NOTEBOOK_PARAMS = {"09_beyond": "params/beyond_smoke.yaml", "10_peft_methods": "params/peft_methods_smoke.yaml"}
#: The parameter files that give a notebook its results (named in its parameters cell).
RESULT_PARAMS = {"09_beyond": "params/beyond.yaml", "10_peft_methods": "params/peft_methods_lr.yaml"}


# ---------------------------------------------------------------------------------------------------------------
# links
# ---------------------------------------------------------------------------------------------------------------
def repository_url() -> str:
    """The project's repository, ``Repository`` of ``[project.urls]`` in ``pyproject.toml``: the one place it is
    written (a fork changes that line). Read from the source tree's ``pyproject.toml`` when there is one, else
    from the installed package's metadata."""
    return _repository_url()


@functools.lru_cache(maxsize=1)
def _repository_url() -> str:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            tomllib = None
        if tomllib is not None:
            urls = tomllib.loads(pyproject.read_text()).get("project", {}).get("urls", {})
            if urls.get("Repository"):
                return urls["Repository"].rstrip("/")
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        for entry in metadata("stmedfm").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() == "repository":
                return url.strip().rstrip("/")
    except PackageNotFoundError:
        pass
    raise RuntimeError("No 'Repository' in [project.urls] of pyproject.toml")


def github_repo() -> str:
    """``owner/name`` of the GitHub repository (:func:`repository_url`)."""
    url = repository_url()
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise RuntimeError(f"[project.urls] Repository must be a GitHub URL ({prefix}OWNER/NAME), got {url}")
    return url[len(prefix):].removesuffix(".git")


def github_url() -> str:
    return f"https://github.com/{github_repo()}"


def colab_url(notebook: str) -> str:
    """Open ``notebooks/<notebook>.ipynb`` of the GitHub repository in Google Colab."""
    return f"https://colab.research.google.com/github/{github_repo()}/blob/{GITHUB_BRANCH}/notebooks/{notebook}.ipynb"


def binder_url(notebook: str | None = None) -> str:
    """Launch the repository on mybinder.org (built from ``environment.yml``), opening ``notebook`` if given."""
    url = f"https://mybinder.org/v2/gh/{github_repo()}/{GITHUB_BRANCH}"
    return url + (f"?labpath={quote(f'notebooks/{notebook}.ipynb', safe='')}" if notebook else "")


def badges(notebook: str | None = None) -> str:
    """Markdown of the Colab badge (of ``notebook``; of the first notebook when None) and the Binder badge."""
    colab = colab_url(notebook or FIRST_NOTEBOOK)
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
            f"[![Launch on Binder](https://mybinder.org/badge_logo.svg)]({binder_url(notebook)})")


#: Where the Colab cell clones the project (Colab's working directory is /content).
COLAB_DIR = "/content/stmedfm"


def parameters_cell(notebook: str) -> str:
    """Source of every notebook's first code cell, tagged ``parameters`` (papermill injects its values after it):
    every parameter a reader sets. Any other field of :class:`~stmedfm.core.config.StudyConfig` can be injected too
    (``-p seeds 5``)."""
    default = NOTEBOOK_PARAMS.get(notebook, DEFAULT_PARAMS)
    results = RESULT_PARAMS.get(notebook, "params/offline.yaml or params/paper.yaml")
    return (f'params = "{default}"  # the parameter file: {results} for results\n'
            "download = False  # True: download the official MedMNIST files it needs (your consent; CC BY 4.0,\n"
            "#                   DermaMNIST CC BY-NC 4.0), verified, into $STMEDFM_DATA or ~/.medmnist")


#: The extras of pyproject.toml a notebook needs beyond the base package (its Colab cell installs them).
NOTEBOOK_EXTRAS = {"10_peft_methods": ("peft",)}


def colab_cell(notebook: str = FIRST_NOTEBOOK) -> str:
    """Source of the second code cell of ``notebook``: in Colab only, fetch the project and install it, with the
    extras the notebook needs (:data:`NOTEBOOK_EXTRAS`).

    It sets no parameter (the parameters cell, or papermill, does). ``pip install -e`` keeps an installed torch
    that satisfies the package's minimum (Colab's own) instead of replacing it. ``$STMEDFM_REPO`` and
    ``$STMEDFM_COLAB_DIR`` override where it clones from and to (the test that plays Colab uses a local clone)."""
    extras = NOTEBOOK_EXTRAS.get(notebook, ())
    target = f"{{_home}}[{','.join(extras)}]" if extras else "{_home}"
    return f'''import os
import sys

if "google.colab" in sys.modules:  # Colab only: fetch and install the project (Binder and local installs have it)
    _repo = os.environ.get("STMEDFM_REPO", "{repository_url()}")
    _home = os.environ.get("STMEDFM_COLAB_DIR", "{COLAB_DIR}")
    if not os.path.isdir(_home):
        !git clone --quiet --depth 1 {{_repo}} {{_home}}
    %pip install --quiet -e "{target}"
    sys.path.insert(0, _home)
    os.chdir(f"{{_home}}/notebooks")'''


# ---------------------------------------------------------------------------------------------------------------
# configuration, study, display
# ---------------------------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    from matplotlib import rc_context

    from stmedfm.analysis.plots import style

    buf = io.BytesIO()
    with rc_context(style()):
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _display_setup() -> None:
    """In IPython: show matplotlib ``Figure`` objects (the plots module never uses pyplot) as PNG, and wide frames."""
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 120)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook extra
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    shell.display_formatter.formatters["image/png"].for_type(Figure, _png)


def config(params: str | os.PathLike = DEFAULT_PARAMS, namespace: Mapping | None = None) -> StudyConfig:
    """The notebook's config: the parameter file ``params`` overridden by every variable of ``namespace`` named
    like a :class:`~stmedfm.core.config.StudyConfig` field (papermill's ``-p key value``); sets up display."""
    _display_setup()
    return from_namespace(params, dict(namespace or {}))


def ensure_data(cfg: StudyConfig) -> None:
    """Make the study's MedMNIST files available, or stop with one line saying how.

    With ``download = True`` (the parameters cell, or papermill's ``-p download True``) missing official files are
    downloaded into the usual data directory (``data_dir``, else ``$STMEDFM_DATA``, else ``~/.medmnist``; a mirror
    from ``$STMEDFM_MIRROR``), MD5-verified, with a progress bar. Otherwise, when files are missing, raises a
    :class:`~stmedfm.core.errors.StmedfmError` whose one line says how to get them (shown without a traceback). Present
    files are verified when they are read. Every notebook that reads data calls this first (``setup`` does)."""
    from stmedfm import data as D

    missing = []
    for task in cfg.all_tasks():
        try:
            D.locate(task, size=cfg.image_size, data_dir=cfg.data_dir)
        except StmedfmError:
            missing.append(task)
    if not missing:
        return
    names = ", ".join(registry.get(t).filename(cfg.image_size) for t in missing)
    target = paths.download_dir(cfg.data_dir)
    if not cfg.download:
        raise StmedfmError(
            f"Missing MedMNIST file(s) {names}: set download = True in the parameters cell (papermill: -p download "
            f"True) to download them, verified, into {target}, or copy the official files there (or point "
            f"${paths.ENV_DATA} at a directory holding them).")
    from stmedfm.data.download import download

    print(f"downloading {len(missing)} official MedMNIST file(s) into {target}: {names}", flush=True)
    for task in missing:
        try:
            path = download(task, size=cfg.image_size, data_dir=cfg.data_dir)
        except StmedfmError as exc:  # the command line's advice (--mirror) means nothing here: a notebook's
            what = str(exc).split(" Try again later", 1)[0]
            raise StmedfmError(
                f"{what} In this notebook: run `%env {paths.ENV_MIRROR}=https://your.mirror/medmnist` in a cell above "
                f"to download from a mirror, or copy the official file into {target} (or set data_dir = "
                f"'/folder/with/the/files' in the parameters cell), then run this cell again.") from None
        print(f"{task}: verified {path}", flush=True)


def setup(params: str | os.PathLike = DEFAULT_PARAMS, namespace: Mapping | None = None, run: bool = True):
    """``(cfg, store)``: the notebook's config and its result store, after running or resuming the study.

    The store is ``results/<study>/`` of the ``study`` parameter, claimed for the parameter file
    (:func:`stmedfm.run.studyname.claim`: another file naming the same study stops here). Finished runs are reused
    (``make study`` computes them with workers before the notebooks run), so a notebook recomputes nothing that
    exists; while runs compute, a progress bar (tqdm.auto: a widget in Jupyter) counts them, and one summary line
    says how many runs were reused and computed.
    """
    from stmedfm.run import launch
    from stmedfm.run.planning import run_id, study_data
    from stmedfm.core.records import plan
    from stmedfm.run.store import ResultStore
    from stmedfm.run.studyname import check

    cfg = config(params, namespace)
    if not run:
        return cfg, ResultStore(paths.results_dir(cfg.study))
    source = params_path(params)
    root = check(cfg, source)  # before anything is downloaded or written: a folder of this study and this file
    ensure_data(cfg)  # missing files: a line about the parameters cell (launch.run would name the command line)
    ids = {run_id(cfg, p.spec, study_data(cfg)) for p in plan(cfg)}
    before = sum(ResultStore(root).has_run(r) for r in ids)
    if before < len(ids):
        print(f"computing {len(ids) - before} of {len(ids)} runs of study '{cfg.study}' into "
              f"{_relative(root)} ...", flush=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the bar stays; its line per finished run is summarised below
        store = launch.run(cfg, source, progress=True)  # the command line's path: claim, then run_study
    seeds = f"{len(cfg.seeds)} seed{'s' if len(cfg.seeds) != 1 else ''}"
    seconds = time.perf_counter() - t0
    print(f"study '{cfg.study}' ({Path(str(params)).name}, {seeds}): {len(ids)} runs in {_relative(store.root)} "
          f"({before} reused, {len(ids) - before} computed in {seconds:.0f} s)")
    for notice in store.notices():
        print(f"NOTE: {notice}")
    return cfg, store


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(path)


def study_tables(store) -> dict[str, pd.DataFrame]:
    """Write every paper table of the store into ``results/<study>/tables/`` (:func:`stmedfm.analysis.tables.write_tables`)
    and return them, read back from those CSV files."""
    from stmedfm.analysis.tables import write_tables

    out = {}
    for path in write_tables(store.root):
        if path.suffix == ".csv":
            frame = seal.read_csv(store.root, f"tables/{path.name}", dtype={"variant": str})
            if "variant" in frame:
                frame["variant"] = frame["variant"].fillna("")
            out[path.stem] = frame
    return out


def _markdown(frame: pd.DataFrame) -> str:
    from stmedfm.analysis.tables import format_markdown

    if "mean" not in frame.columns:
        frame = frame.copy()
        for col in frame.columns:
            if pd.api.types.is_float_dtype(frame[col]):
                frame[col] = frame[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
            elif pd.api.types.is_bool_dtype(frame[col]):
                frame[col] = frame[col].map({True: "yes", False: "no"})
    return format_markdown(frame)


def show(frame: pd.DataFrame, title: str | None = None) -> None:
    """Display a frame as a markdown table (paper tables as 'mean ± CI (paper)' cells), with a bold title."""
    show_markdown((f"**{title}**\n\n" if title else "") + (_markdown(frame) if len(frame) else "*(no rows)*\n"))


def show_markdown(text: str) -> None:
    """Display markdown text (e.g. :func:`stmedfm.analysis.report.claims_markdown`); printed outside IPython."""
    try:
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython comes with the notebook extra
        print(text)
        return
    display(Markdown(text))


def show_tables(tables: Mapping[str, pd.DataFrame], *names: str) -> None:
    """Display the named paper tables with their captions; a table the study did not produce is named as such."""
    for name in names:
        title = TABLE_TITLES.get(name, name)
        if name in tables:
            show(tables[name], title)
        else:
            show(pd.DataFrame(), f"{title}: not part of this study's parameter file")


def save_figure(fig, name: str, cfg: StudyConfig):
    """Write ``fig`` as ``figures/<study>/<name>.png`` (150 dpi) and ``.svg``, atomically; returns ``fig`` so that a
    cell ending with this call also displays it. Names follow :func:`stmedfm.analysis.plots.write_figures`."""
    from stmedfm.analysis.plots import write_figure
    from stmedfm.run.store import ResultStore

    notices = ResultStore(paths.results_dir(cfg.study)).notices()  # synthetic data, smoke budgets, machines
    write_figure(copy.deepcopy(fig), paths.figures_dir(cfg.study), name, notices)  # the shown figure stays as is
    return fig


def position(notebook: str) -> None:
    """Print where ``notebook`` stands in the study: "Notebook 2 of 10 of the STMedFM study", with its neighbours.

    Counted from the notebooks that exist (:data:`NOTEBOOKS`), at run time: a count written into each notebook's
    markdown went stale every time a notebook was added."""
    if notebook not in NOTEBOOKS:
        raise StmedfmError(f"'{notebook}' is not one of the numbered notebooks in {NOTEBOOK_DIR}: "
                           f"{', '.join(NOTEBOOKS) or 'none found'}.")
    i = NOTEBOOKS.index(notebook)
    parts = [f"Notebook {i + 1} of {len(NOTEBOOKS)} of the STMedFM study"]
    if i > 0:
        parts.append(f"previous: {NOTEBOOKS[i - 1]}")
    if i + 1 < len(NOTEBOOKS):
        parts.append(f"next: {NOTEBOOKS[i + 1]}")
    print(" · ".join(parts))


def show_source(*objects) -> None:
    """Display the source code of classes or functions of the package, highlighted, each under its dotted name.

    The notebooks teach the code as d2l does: the explanation sits next to the code that runs, read from the
    imported module with :func:`inspect.getsource`, so it cannot drift from what the study executes."""
    blocks = [f"`{o.__module__}.{o.__qualname__}`\n\n```python\n{inspect.getsource(o).rstrip()}\n```"
              for o in objects]
    show_markdown("\n\n".join(blocks))


# ---------------------------------------------------------------------------------------------------------------
# relinking after a fork (documented in docs/notebooks.md)
# ---------------------------------------------------------------------------------------------------------------
def relink(files) -> None:
    """Rewrite the badges, the parameters cell and the Colab cell of each notebook from this module (after changing
    the repository in ``pyproject.toml``, or these cells), and the project's links in the README."""
    import nbformat  # the notebooks extra: only this command needs it

    for f in files:
        path = Path(f)
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        code[0].source = parameters_cell(path.stem)
        code[1].source = colab_cell(path.stem)
        book.cells[0].source = re.sub(r"\[!\[Open in Colab\]\(.*?\n", badges(path.stem) + "\n", book.cells[0].source,
                                      count=1)
        nbformat.write(book, path)
    readme = paths.project_root() / "README.md"
    if readme.is_file():
        text = re.sub(r"(colab\.research\.google\.com/github/|mybinder\.org/v2/gh/)[\w.-]+/[\w.-]+/",
                      lambda m: f"{m.group(1)}{github_repo()}/", readme.read_text())
        readme.write_text(text)
    citation = paths.project_root() / "CITATION.cff"
    if citation.is_file():
        citation.write_text(re.sub(r"^repository-code: .*$", f'repository-code: "{repository_url()}"',
                                   citation.read_text(), flags=re.M))


#: Commands that moved to ``tools/notebooks.py`` (developer tooling, not part of the package).
MOVED = ("check", "strip", "refresh")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stmedfm.notebook",
                                     description="Rewrite the badges, parameters and Colab cells of the notebooks "
                                                 "(and the README's links) after changing the repository.")
    parser.add_argument("command", choices=["relink", *MOVED],
                        help="relink: rewrite badges, parameters and Colab cells (and the README's links)")
    parser.add_argument("files", nargs="+", help="notebooks, e.g. notebooks/*.ipynb")
    args = parser.parse_args(argv)
    if args.command in MOVED:
        print(f"'{args.command}' is a developer tool now: python tools/notebooks.py {args.command} "
              f"{' '.join(args.files)}", file=sys.stderr)
        return 2
    relink(args.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
