"""Helpers of the numbered notebooks (``notebooks/01_data.ipynb`` ... ``09_beyond.ipynb``), so that every
notebook stays a few lines per cell and no logic is copied between them.

* :func:`setup` turns the ``parameters`` cell (``params`` plus anything papermill injected) into a validated
  :class:`~stmedfm.config.StudyConfig`, runs or resumes the study into the shared store ``results/<study>/`` and
  returns ``(cfg, store)``; :func:`config` does the same without running anything (notebooks 01 and 02).
* :func:`study_tables`, :func:`show`, :func:`show_tables` write the paper tables into ``results/<study>/tables/``
  and display them as markdown; :func:`save_figure` writes a figure of :mod:`stmedfm.plots` into
  ``figures/<study>/`` (PNG + SVG) and returns it for display.
* Data and architecture views that are not paper tables: :func:`table1`, :func:`split_sizes`,
  :func:`class_distribution`, :func:`fig_samples`, :func:`architecture_table`, :func:`forward_shapes`.
* The repository (:func:`repository_url`: ``[project.urls]`` of ``pyproject.toml``, the one place it is written),
  the Colab / Binder badges, the parameters cell (:func:`parameters_cell`) and the Colab cell (:func:`colab_cell`);
  :func:`ensure_data`, the one data helper (downloads when ``download`` is true, else says how in one line).
* Maintenance of the committed notebooks: they carry no outputs except the reference outputs of cells marked
  ``# NBVAL_CHECK_OUTPUT`` (the marker alone on its line), which ``pytest --nbval-lax`` compares with a fresh run.
  nbval only compares cells that were run, so those cells keep an execution count (their position); every other
  cell has neither outputs nor a count. After changing such a cell, refresh them with
  ``python -m stmedfm.notebook refresh notebooks/*.ipynb`` (executes with the smoke defaults, needs the real files);
  ``python -m stmedfm.notebook strip FILE...`` removes every other output (e.g. after saving from Jupyter);
  ``python -m stmedfm.notebook check FILE...`` lists what ``tests/test_notebooks.py`` would reject.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from stmedfm import paths, registry
from stmedfm.config import StudyConfig, from_namespace
from stmedfm.errors import StmedfmError

# tqdm.auto (the progress bars of stmedfm.study) draws a widget in Jupyter with ipywidgets (the notebooks extra);
# without it, it warns once ("IProgress not found") and falls back to text bars: import it here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

#: The branch the Colab / Binder links open.
GITHUB_BRANCH = "main"
#: The numbered notebooks, in reading order.
NOTEBOOKS = ("01_data", "02_architecture", "03_pretraining", "04_transfer", "05_calibration", "06_few_shot",
             "07_ablations", "08_report", "09_beyond")
#: Marker of cells whose output nbval compares with the committed reference output.
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
#: The paper's captions of the tables of :func:`stmedfm.tables.build_tables`.
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
}
DEFAULT_PARAMS = "params/smoke.yaml"
#: Notebooks whose parameter file is not a StudyConfig file: their own smoke default (09_beyond reads a beyond
#: file of variants, stmedfm.beyond; `make study` runs 01-08 only, `make beyond` runs 09).
NOTEBOOK_PARAMS = {"09_beyond": "params/beyond_smoke.yaml"}


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
    colab = colab_url(notebook or NOTEBOOKS[0])
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
            f"[![Launch on Binder](https://mybinder.org/badge_logo.svg)]({binder_url(notebook)})")


#: Where the Colab cell clones the project (Colab's working directory is /content).
COLAB_DIR = "/content/stmedfm"


def parameters_cell(notebook: str) -> str:
    """Source of every notebook's first code cell, tagged ``parameters`` (papermill injects its values after it):
    every parameter a reader sets. Any other field of :class:`~stmedfm.config.StudyConfig` can be injected too
    (``-p seeds 5``)."""
    default = NOTEBOOK_PARAMS.get(notebook, DEFAULT_PARAMS)
    return (f'params = "{default}"  # the parameter file: params/offline.yaml or params/paper.yaml for results\n'
            "download = False  # True: download the official MedMNIST files it needs (your consent; CC BY 4.0,\n"
            "#                   DermaMNIST CC BY-NC 4.0), verified, into $STMEDFM_DATA or ~/.medmnist")


def colab_cell() -> str:
    """Source of every notebook's second code cell: in Colab only, fetch the project and install it.

    It sets no parameter (the parameters cell, or papermill, does). ``pip install -e`` keeps an installed torch
    that satisfies the package's minimum (Colab's own) instead of replacing it. ``$STMEDFM_REPO`` and
    ``$STMEDFM_COLAB_DIR`` override where it clones from and to (the test that plays Colab uses a local clone)."""
    return f'''import os
import sys

if "google.colab" in sys.modules:  # Colab only: fetch and install the project (Binder and local installs have it)
    _repo = os.environ.get("STMEDFM_REPO", "{repository_url()}")
    _home = os.environ.get("STMEDFM_COLAB_DIR", "{COLAB_DIR}")
    if not os.path.isdir(_home):
        !git clone --quiet --depth 1 {{_repo}} {{_home}}
    %pip install --quiet -e {{_home}}
    sys.path.insert(0, _home)
    os.chdir(f"{{_home}}/notebooks")'''


# ---------------------------------------------------------------------------------------------------------------
# configuration, study, display
# ---------------------------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    from matplotlib import rc_context

    from stmedfm.plots import style

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
    like a :class:`~stmedfm.config.StudyConfig` field (papermill's ``-p key value``); sets up display."""
    _display_setup()
    return from_namespace(params, dict(namespace or {}))


def ensure_data(cfg: StudyConfig) -> None:
    """Make the study's MedMNIST files available, or stop with one line saying how.

    With ``download = True`` (the parameters cell, or papermill's ``-p download True``) missing official files are
    downloaded into the usual data directory (``data_dir``, else ``$STMEDFM_DATA``, else ``~/.medmnist``; a mirror
    from ``$STMEDFM_MIRROR``), MD5-verified, with a progress bar. Otherwise, when files are missing, raises a
    :class:`~stmedfm.errors.StmedfmError` whose one line says how to get them (shown without a traceback). Present
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
    from stmedfm.download import download

    print(f"downloading {len(missing)} official MedMNIST file(s) into {target}: {names}", flush=True)
    for task in missing:
        path = download(task, size=cfg.image_size, data_dir=cfg.data_dir)
        print(f"{task}: verified {path}", flush=True)


def setup(params: str | os.PathLike = DEFAULT_PARAMS, namespace: Mapping | None = None, run: bool = True):
    """``(cfg, store)``: the notebook's config and its result store, after running or resuming the study.

    The store is ``results/<study>/`` of the ``study`` parameter, claimed for the parameter file
    (:func:`stmedfm.studyname.claim`: another file naming the same study stops here). Finished runs are reused
    (``make study`` computes them with workers before the notebooks run), so a notebook recomputes nothing that
    exists; while runs compute, a progress bar (tqdm.auto: a widget in Jupyter) counts them, and one summary line
    says how many runs were reused and computed.
    """
    from stmedfm.study import ResultStore, plan, run_id, run_study
    from stmedfm.studyname import check, claim

    cfg = config(params, namespace)
    if not run:
        return cfg, ResultStore(paths.results_dir(cfg.study))
    source = _params_path(params)
    check(cfg, source)  # before anything is downloaded or written: a folder of this study, of this parameter file
    ensure_data(cfg)
    store = ResultStore(claim(cfg, source))
    data = store.open(cfg)
    ids = {run_id(cfg, p.spec, data) for p in plan(cfg)}
    before = sum(store.has_run(r) for r in ids)
    if before < len(ids):
        print(f"computing {len(ids) - before} of {len(ids)} runs of study '{cfg.study}' into "
              f"{_relative(store.root)} ...", flush=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the bar stays; its line per finished run is summarised below
        store = run_study(cfg, out=store.root, progress=True)
    seeds = f"{len(cfg.seeds)} seed{'s' if len(cfg.seeds) != 1 else ''}"
    seconds = time.perf_counter() - t0
    print(f"study '{cfg.study}' ({Path(str(params)).name}, {seeds}): {len(ids)} runs in {_relative(store.root)} "
          f"({before} reused, {len(ids) - before} computed in {seconds:.0f} s)")
    for notice in store.notices():
        print(f"NOTE: {notice}")
    return cfg, store


def _params_path(params: str | os.PathLike) -> Path:
    path = Path(params)
    return path if path.is_absolute() or path.is_file() else paths.project_root() / path


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(path)


def study_tables(store) -> dict[str, pd.DataFrame]:
    """Write every paper table of the store into ``results/<study>/tables/`` (:func:`stmedfm.tables.write_tables`)
    and return them, read back from those CSV files."""
    from stmedfm.tables import write_tables

    out = {}
    for path in write_tables(store.root):
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype={"variant": str})
            if "variant" in frame:
                frame["variant"] = frame["variant"].fillna("")
            out[path.stem] = frame
    return out


def _markdown(frame: pd.DataFrame) -> str:
    from stmedfm.tables import format_markdown

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
    text = (f"**{title}**\n\n" if title else "") + (_markdown(frame) if len(frame) else "*(no rows)*\n")
    try:
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover
        print(text)
        return
    display(Markdown(text))


def show_markdown(text: str) -> None:
    """Display markdown text (e.g. :func:`stmedfm.report.claims_markdown`)."""
    from IPython.display import Markdown, display

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
    cell ending with this call also displays it. Names follow :func:`stmedfm.plots.write_figures`."""
    from stmedfm.plots import write_figure
    from stmedfm.study import ResultStore

    notices = ResultStore(paths.results_dir(cfg.study)).notices()  # synthetic data, smoke budgets, machines
    write_figure(copy.deepcopy(fig), paths.figures_dir(cfg.study), name, notices)  # the shown figure stays as is
    return fig


# ---------------------------------------------------------------------------------------------------------------
# 01_data
# ---------------------------------------------------------------------------------------------------------------
def table1(cfg: StudyConfig) -> pd.DataFrame:
    """Table 1 for the study's flags: their roles in this parameter file, modality, input shape, channels, classes,
    official split sizes, licence and the local status of the file (missing / verified / bad checksum)."""
    from stmedfm.data import status_table
    from stmedfm.report import role_assignments

    roles = role_assignments(cfg).groupby("flag", sort=False)["role"].agg(", ".join)
    frame = status_table(data_dir=cfg.data_dir, size=cfg.image_size, flags=cfg.all_tasks())
    frame.insert(1, "roles", frame["flag"].map(roles).fillna(""))
    frame.insert(3, "input shape", [str(registry.get(f).image_shape(cfg.image_size)) for f in frame["flag"]])
    return frame.drop(columns=["path"])


def split_sizes(cfg: StudyConfig) -> pd.DataFrame:
    """The split sizes read from the study's files, the tensor shape of one sample as loaded (2D grayscale repeated
    to 3 channels) and whether the sizes are the official ones; loads (and verifies) every file."""
    from stmedfm.data import load_task

    rows = []
    for flag in cfg.all_tasks():
        data = load_task(flag, size=cfg.image_size, data_dir=cfg.data_dir)
        sizes = {s: len(data[s]) for s in registry.SPLITS}
        rows.append({"flag": flag, "dim": data.info.modality, "loaded as": str(tuple(data["train"].images.shape[1:])),
                     "classes": data.info.n_classes, **sizes,
                     "official sizes": "yes" if sizes == data.info.n_samples else "no"})
    return pd.DataFrame(rows)


def class_distribution(cfg: StudyConfig) -> pd.DataFrame:
    """Per task and class: counts in each split, share of the training split, and the class weight that share
    implies under the study's rule (:func:`stmedfm.data.class_weights`, clipped to ``class_weight_clip``; 1 when
    ``class_weights`` is off)."""
    import torch

    from stmedfm.data import class_weights, load_task

    rows = []
    for flag in cfg.all_tasks():
        data = load_task(flag, size=cfg.image_size, data_dir=cfg.data_dir)
        n = data.info.n_classes
        counts = {s: torch.bincount(data[s].labels, minlength=n).tolist() for s in registry.SPLITS}
        weights = (class_weights(data["train"].labels, n, clip=tuple(cfg.class_weight_clip)).tolist()
                   if cfg.class_weights else [1.0] * n)
        total = sum(counts["train"])
        for c in range(n):
            rows.append({"task": flag, "class": c, "name": data.info.labels[c],
                         **{s: counts[s][c] for s in registry.SPLITS},
                         "train share": counts["train"][c] / total, "weight": weights[c]})
    return pd.DataFrame(rows)


def imbalance_summary(dist: pd.DataFrame) -> pd.DataFrame:
    """Per task: classes, largest / smallest class of the training split, their ratio, and the weight range."""
    g = dist.groupby("task", sort=False)
    return pd.DataFrame({
        "classes": g.size(), "largest class": g["train"].max(), "smallest class": g["train"].min(),
        "ratio": g["train"].max() / g["train"].min(), "min weight": g["weight"].min(), "max weight": g["weight"].max(),
    }).reset_index()


def fig_class_distribution(dist: pd.DataFrame):
    """Share of the training split per class (bars) with the implied class weight written beside each bar."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from stmedfm.plots import short_label, style

    tasks = list(dict.fromkeys(dist["task"]))
    rows = max(dist.groupby("task").size())
    with rc_context(style()):
        fig = Figure(figsize=(4.6 * len(tasks) + 0.6, 0.34 * rows + 1.6))
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        for ax, task in zip(axes, tasks):
            d = dist[dist["task"] == task]
            y = np.arange(len(d))
            ax.barh(y, d["train share"], color="#0173b2", alpha=0.85)
            ax.set_yticks(y)
            ax.set_yticklabels([short_label(n, 24) for n in d["name"]])
            ax.invert_yaxis()
            top = float(d["train share"].max())
            ax.set_xlim(0, top * 1.45)
            for yi, share, w in zip(y, d["train share"], d["weight"]):
                ax.text(share + top * 0.02, yi, f"w={w:.2f}", va="center", fontsize=8)
            ax.set_xlabel("share of the training split")
            ax.set_title(f"{task} ({int(d['train'].sum()):,} train)")
        fig.suptitle("Class distribution of each training split and the class weight (w) it implies")
        fig.tight_layout()
    return fig


def fig_samples(task: str, cfg: StudyConfig, per_class: int = 8, seed: int = 0):
    """Training samples of ``task``: for 2D flags a grid of ``per_class`` images per class (rows), for 3D flags the
    three orthogonal mid-slices (axial, coronal, sagittal) of one volume per class."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from stmedfm.data import load_task
    from stmedfm.plots import short_label, style

    data = load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)
    info, split = data.info, data["train"]
    labels = split.labels.numpy()
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[: (per_class if info.dim == 2 else 1)]
             for c in range(info.n_classes)]
    with rc_context(style()):
        if info.dim == 2:
            fig = Figure(figsize=(0.85 * per_class + 2.2, 0.85 * info.n_classes + 0.8))
            axes = fig.subplots(info.n_classes, per_class, squeeze=False)
            for c, idx in enumerate(picks):
                for j in range(per_class):
                    ax = axes[c, j]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.grid(False)
                    for spine in ax.spines.values():
                        spine.set_visible(False)
                    if j < len(idx):
                        img = split.images[idx[j]].permute(1, 2, 0).numpy()
                        rgb = info.n_channels == 3
                        ax.imshow(img if rgb else img[..., 0], cmap=None if rgb else "gray", vmin=0, vmax=255,
                                  interpolation="nearest")
                axes[c, 0].set_ylabel(short_label(info.labels[c], 18), rotation=0, ha="right", va="center",
                                      fontsize=8.5)
            fig.suptitle(f"{task}: {per_class} random training images per class "
                         f"({cfg.image_size}×{cfg.image_size}, {'RGB' if info.n_channels == 3 else 'grayscale'})")
        else:
            planes = ("axial (mid z)", "coronal (mid y)", "sagittal (mid x)")
            fig = Figure(figsize=(6.4, 1.5 * info.n_classes + 0.8))
            axes = fig.subplots(info.n_classes, 3, squeeze=False)
            for c, idx in enumerate(picks):
                vol = split.images[idx[0], 0].numpy() if len(idx) else None
                for j in range(3):
                    ax = axes[c, j]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.grid(False)
                    if vol is not None:
                        mid = [s // 2 for s in vol.shape]
                        sl = (vol[mid[0]], vol[:, mid[1]], vol[:, :, mid[2]])[j]
                        ax.imshow(sl, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                    if c == 0:
                        ax.set_title(planes[j], fontsize=9)
                axes[c, 0].set_ylabel(short_label(info.labels[c], 18), rotation=0, ha="right", va="center",
                                      fontsize=8.5)
            fig.suptitle(f"{task}: orthogonal mid-slices of one training volume per class "
                         f"({cfg.image_size}³ voxels)")
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# 02_architecture
# ---------------------------------------------------------------------------------------------------------------
def study_model(cfg: StudyConfig, task: str | None = None):
    """The model the study adapts, with LoRA and adapters inserted at the study's settings (Figure 1's model):
    one head, for ``task`` (default: the calibration task, else the first downstream task)."""
    from stmedfm.model import STMedFM
    from stmedfm.peft import add_adapters, add_lora

    task = task or cfg.calibration_task or (cfg.downstream_tasks[0] if cfg.downstream_tasks else "pathmnist")
    model = STMedFM([task], width=cfg.width, ln_affine=cfg.ln_affine)
    add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    add_adapters(model, bottleneck=cfg.adapter_bottleneck)
    return model


def _layer(m) -> str:
    from torch import nn

    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        k = "×".join(map(str, m.kernel_size))
        return f"{type(m).__name__} {m.in_channels}→{m.out_channels} ({k}, s{m.stride[0]})"
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return "GlobalAvgPool"
    return type(m).__name__


def _stem(stem) -> str:
    from torch import nn

    parts: list[str] = []
    for m in stem.children():
        if isinstance(m, nn.ReLU) and parts:
            parts[-1] += " + ReLU"
        elif not isinstance(m, nn.Flatten):
            parts.append(_layer(m))
    return "; ".join(parts)


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def architecture_table(model) -> pd.DataFrame:
    """Table 2 read from ``model`` (an :class:`~stmedfm.model.STMedFM`, with or without LoRA / adapters):
    component, layers, output and parameter count. LoRA and adapter rows appear when they are inserted."""
    from stmedfm.peft import LoRALinear

    enc, w, h = model.encoder, model.width, model.hidden
    loras = [m for m in enc.modules() if isinstance(m, LoRALinear)]
    lora_params = sum(m.lora_A.numel() + m.lora_B.numel() for m in loras)
    adapter_params = sum(_numel(a) for a in enc.adapters)
    rows = [
        ("2D stem", _stem(model.stem2d), f"{w}-dim vector", _numel(model.stem2d)),
        ("3D stem", _stem(model.stem3d), f"{w}-dim vector", _numel(model.stem3d)),
        ("shared encoder", f"{len(enc.blocks)} × [LayerNorm({w}) → Linear({w}→{h}) → GELU → Linear({h}→{w}) → "
                           f"residual]; LayerNorm({w})", f"{w}-dim vector",
         _numel(enc) - lora_params - adapter_params),
    ]
    if loras:
        rows.append(("LoRA", f"r={loras[0].r} (alpha={loras[0].alpha:g}) on {len(loras)} encoder Linear layers",
                     "residual update", lora_params))
    if len(enc.adapters):
        b = enc.adapters[0].down.out_features
        rows.append(("adapters", f"{len(enc.adapters)} × [Linear({w}→{b}) → GELU → Linear({b}→{w}) → residual], "
                                 "after each encoder block", "residual update", adapter_params))
    for task, head in model.heads.items():
        rows.append((f"task head ({task})", f"Linear({w}→{head.out_features})", "logits", _numel(head)))
    return pd.DataFrame(rows, columns=["component", "layers", "output", "parameters"])


def table4_against_paper(width: int = 64) -> pd.DataFrame:
    """Table 4 recomputed from the model at the paper's four flags and strategies, beside the paper's counts."""
    from stmedfm.config import PAPER_TASKS
    from stmedfm.peft import parameter_table
    from stmedfm.report import paper_params

    ours = parameter_table(tasks=PAPER_TASKS, strategies=("scratch", "full", "lora", "adapter"), width=width)
    paper = paper_params().rename(columns={"total": "paper total", "trainable": "paper trainable"})
    out = ours.merge(paper, on=["task", "strategy"], how="left")
    out["same as paper"] = np.where((out["total"] == out["paper total"]) & (out["trainable"] == out["paper trainable"]),
                                    "yes", "no")
    return out


def forward_shapes(cfg: StudyConfig, batch: int = 2) -> pd.DataFrame:
    """Shapes through the model for a 2D RGB, a grayscale 2D (as loaded: channel repeated; and raw, 1 channel) and
    a 3D batch: input, stem output, encoder output, logits. Random inputs; nothing is read from disk."""
    import torch

    from stmedfm.data import to_float
    from stmedfm.model import STMedFM

    s = cfg.image_size
    v = 28 if s == 28 else 64  # MedMNIST+ provides 3D volumes at 28 and 64 voxels only
    cases = [("2D RGB", "bloodmnist", (batch, 3, s, s)),
             ("2D grayscale, as loaded (channel repeated)", "organamnist", (batch, 3, s, s)),
             ("2D grayscale, one channel (model repeats it)", "organamnist", (batch, 1, s, s)),
             ("3D volume", "organmnist3d", (batch, 1, v, v, v))]
    model = STMedFM([c[1] for c in cases], width=cfg.width, ln_affine=cfg.ln_affine).eval()
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for name, task, shape in cases:
            x = to_float(torch.randint(0, 256, shape, generator=g, dtype=torch.uint8))
            stem_in = x.expand(-1, 3, -1, -1) if x.ndim == 4 and x.shape[1] == 1 else x
            z = (model.stem2d if x.ndim == 4 else model.stem3d)(stem_in)
            rows.append({"input": name, "flag": task, "batch": tuple(x.shape), "stem": tuple(z.shape),
                         "encoder": tuple(model.features(x).shape), "logits": tuple(model(x, task).shape)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# maintenance of the committed notebooks
# ---------------------------------------------------------------------------------------------------------------
def is_checked(cell) -> bool:
    """Whether nbval compares the cell's output: a line that is exactly the marker comment (nbval ignores the
    marker followed by other text on its line) or the ``nbval-check-output`` tag."""
    if cell.get("cell_type") != "code":
        return False
    marker = CHECK_MARKER.lstrip("# ")
    comments = [line.strip() for line in "".join(cell.get("source", "")).splitlines() if line.strip().startswith("#")]
    return (any(c.lstrip("#").strip() == marker for c in comments)
            or "nbval-check-output" in cell.get("metadata", {}).get("tags", []))


def strip(nb):
    """Remove every output and execution count, except the reference outputs of ``# NBVAL_CHECK_OUTPUT`` cells
    (text streams only). Also drops papermill / execution metadata. Returns ``nb``."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for number, cell in enumerate(code, 1):
        cell.outputs = [o for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
                        ] if is_checked(cell) else []
        # nbval compares only cells that were run: a reference output needs an execution count (its position)
        cell.execution_count = number if cell.outputs else None
        for o in cell.outputs:
            o.pop("execution_count", None)
        for key in ("execution", "papermill", "scrolled", "collapsed"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}  # no interpreter version: it would change with every run
    return nb


def problems(path: str | os.PathLike) -> list[str]:
    """What is wrong with a committed notebook: outputs outside check cells, execution counts, a first code cell
    that is not the ``parameters`` cell (:func:`parameters_cell`), a missing badge or Colab cell, or a later code
    cell that assigns a name of a StudyConfig field (which would silently override the parameters)."""
    import ast

    import nbformat

    nb = nbformat.read(path, as_version=4)
    name = Path(path).stem
    found: list[str] = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        if cell.outputs and not is_checked(cell):
            found.append(f"code cell {i} has outputs but no '{CHECK_MARKER}' marker")
        elif cell.execution_count != (i + 1 if cell.outputs else None):
            found.append(f"code cell {i} has execution_count {cell.execution_count} (expected "
                         f"{i + 1 if cell.outputs else None}: only reference outputs carry one, their position)")
        if is_checked(cell) and not cell.outputs:
            found.append(f"code cell {i} is marked '{CHECK_MARKER}' but has no reference output (nbval would not "
                         "check it): run `python -m stmedfm.notebook refresh`")
        if is_checked(cell) and any(o.get("output_type") != "stream" for o in cell.outputs):
            found.append(f"code cell {i} ({CHECK_MARKER}) has non-text outputs")
    if not code:
        return found + ["no code cells"]
    first = code[0]
    if "parameters" not in first.metadata.get("tags", []):
        found.append("the first code cell is not tagged 'parameters'")
    if first.source.strip() != parameters_cell(name).strip():
        found.append("the parameters cell is not stmedfm.notebook.parameters_cell() (params and download, nothing else)")
    if len(code) < 2 or code[1].source.strip() != colab_cell().strip():
        found.append("the second code cell is not the Colab install cell (stmedfm.notebook.colab_cell())")
    if not nb.cells or nb.cells[0].cell_type != "markdown" or badges(name) not in nb.cells[0].source:
        found.append("the first cell is not a markdown cell with the Colab and Binder badges (stmedfm.notebook.badges)")
    fields = set(StudyConfig.keys())
    for i, cell in enumerate(code[2:], 2):
        source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            found.append(f"code cell {i} does not parse: {exc}")
            continue
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                  for a in n.names}
        if names & fields:
            found.append(f"code cell {i} binds {sorted(names & fields)}, names of StudyConfig fields: "
                         "from_namespace would take them as parameters")
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        found.append("the kernelspec is not python3")
    return found


def refresh(files, timeout: int = 900) -> None:
    """Execute each notebook (cwd ``notebooks/``, kernel python3, its smoke defaults) and keep only the reference
    outputs of its check cells; execution errors stop with the notebook's name."""
    import nbformat
    from nbclient import NotebookClient

    for f in files:
        path = Path(f)
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
        nbformat.write(strip(nb), path)
        print(f"{path}: refreshed")


def relink(files) -> None:
    """Rewrite the badges, the parameters cell and the Colab cell of each notebook from this module (after changing
    the repository in ``pyproject.toml``, or these cells), and the project's links in the README."""
    import re

    import nbformat

    for f in files:
        path = Path(f)
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        code[0].source = parameters_cell(path.stem)
        code[1].source = colab_cell()
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


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(prog="python -m stmedfm.notebook",
                                     description="Maintain the committed notebooks (outputs only in check cells).")
    parser.add_argument("command", choices=["check", "strip", "refresh", "relink"],
                        help="check: list problems; strip: remove outputs; refresh: re-execute the reference outputs; "
                             "relink: rewrite badges, parameters and Colab cells (and the README's links)")
    parser.add_argument("files", nargs="+", help="notebooks, e.g. notebooks/*.ipynb")
    args = parser.parse_args(argv)
    if args.command == "refresh":
        refresh(args.files)
        return 0
    if args.command == "relink":
        relink(args.files)
    status = 0
    for f in args.files:
        if args.command == "strip":
            nbformat.write(strip(nbformat.read(f, as_version=4)), f)
        for p in problems(f):
            print(f"{f}: {p}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
