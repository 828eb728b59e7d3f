"""Where things live: the one module that owns paths (cookiecutter-data-science style).

Data is never inside the project. A MedMNIST file ``{flag}.npz`` (or ``{flag}_{size}.npz`` for MedMNIST+) is
looked up in an explicit ``data_dir`` argument (``--data-dir``, ``-p data_dir=…``) and only there; without one, in
``$STMEDFM_DATA``, then ``~/.medmnist`` (MedMNIST's own default root). Decision (issue 29): an explicit folder is a
statement of which files to use, so a file missing there is an error, never a silent fallback to other bytes.
Downloads go to the explicit folder, else ``$STMEDFM_DATA``, else ``~/.medmnist``. Project outputs (results, figures, runs) live under the project root, which is the current
directory unless ``$STMEDFM_ROOT`` says otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from stmedfm.core.errors import StmedfmError

ENV_DATA = "STMEDFM_DATA"
ENV_MIRROR = "STMEDFM_MIRROR"
ENV_ROOT = "STMEDFM_ROOT"
ENV_CACHE = "STMEDFM_CACHE"
MEDMNIST_DEFAULT_ROOT = Path("~/.medmnist")
MANIFEST_NAME = "MANIFEST.json"


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for data files, in order of precedence (duplicates removed): an explicit ``data_dir``
    alone, else ``$STMEDFM_DATA`` and ``~/.medmnist``."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    candidates: list[Path] = []
    if os.environ.get(ENV_DATA):
        candidates.append(Path(os.environ[ENV_DATA]))
    candidates.append(MEDMNIST_DEFAULT_ROOT)
    out: list[Path] = []
    for c in candidates:
        c = c.expanduser()
        if c not in out:
            out.append(c)
    return out


def explicit_data_file(folder: Path, name: str, flag: str, size: int) -> Path:
    """The file ``name`` in the explicit data folder, the only place looked (see the module docstring): a missing
    folder, a missing file or anything but a regular file (a FIFO, a folder, a link to a device) is one line naming
    the folder. Public: :func:`stmedfm.data.locate` looks up an explicit folder through it."""
    size_opt = "" if size == 28 else f" --size {size}"
    if not folder.is_dir():
        raise StmedfmError(f"The data folder '{folder}' (--data-dir / data_dir) {'is not a folder' if folder.exists() else 'does not exist'}; "
                           f"it is the only place looked for {name}. Pass the folder holding the MedMNIST files, or "
                           f"leave it out to use ${ENV_DATA} or ~/.medmnist.")
    candidate = folder / name
    if not candidate.exists() and not candidate.is_symlink():
        raise StmedfmError(f"MedMNIST file '{name}' is not in the data folder '{folder}' (--data-dir / data_dir), the "
                           f"only place looked. Copy the official file there, or run `stmedfm download {flag}{size_opt} "
                           f"--data-dir {folder}`.")
    try:
        regular = stat.S_ISREG(candidate.stat().st_mode)
    except OSError:
        regular = False
    if not regular:
        raise StmedfmError(f"'{candidate}' in the data folder '{folder}' is not a regular file (a folder, a pipe, a "
                           f"device or a broken link); replace it with the official {name}.")
    return candidate


def download_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where a download lands: the explicit directory, else ``$STMEDFM_DATA``, else ``~/.medmnist``."""
    return data_dirs(data_dir)[0]


def project_root() -> Path:
    """Root of the project outputs: ``$STMEDFM_ROOT``, else the nearest directory at or above the current one
    holding ``params/`` and ``pyproject.toml`` (so notebooks running in ``notebooks/`` write to the same
    ``results/``), else the current directory."""
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).expanduser().resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "params").is_dir() and (d / "pyproject.toml").is_file():
            return d
    return here


def results_dir(study: str) -> Path:
    """Tidy result tables of one study: ``results/<study>/``."""
    return project_root() / "results" / study


def figures_dir(study: str) -> Path:
    """Figures of one study: ``figures/<study>/``."""
    return project_root() / "figures" / study


def runs_dir(study: str) -> Path:
    """Executed notebooks and HTML of one study run: ``runs/<study>/``."""
    return project_root() / "runs" / study


def cache_dir() -> Path:
    """Per-user cache (checksum verification records): ``$STMEDFM_CACHE`` or ``~/.cache/stmedfm``."""
    return Path(os.environ.get(ENV_CACHE, "~/.cache/stmedfm")).expanduser()


def params_dir() -> Path:
    """The project's parameter files (``params/``)."""
    return project_root() / "params"
