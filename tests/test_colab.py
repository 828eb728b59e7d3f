"""The test that plays Colab (Colab itself cannot be reached from here; this is its honest stand-in).

Colab starts a kernel with ``google.colab`` imported, its own torch and nothing else of ours: no clone, no data.
Here: the project's files as they are on disk, committed into a repository served from a local bare clone
(``file://``, as ``$STMEDFM_REPO``); a fresh virtual environment that sees the packages of this one but not
``stmedfm`` (as Colab has torch and friends preinstalled); a kernel of that environment with ``google.colab`` in
``sys.modules``; an empty data directory; and a loopback HTTP mirror (127.0.0.1, ``$STMEDFM_MIRROR``) serving the
three official files. papermill runs ``01_data`` and ``04_transfer`` as Colab would, with ``-p download True`` and
the smoke parameters: the Colab cell clones and installs the project without replacing torch, the data helper
downloads and verifies the files into the data directory, and both notebooks execute.

Needs the real files (``$STMEDFM_DATA``) and git; takes a few minutes (two editable installs, one smoke study).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import nbformat
import pytest

from stmedfm import data
from stmedfm.core import registry

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("organamnist", "bloodmnist", "retinamnist")  # the files of params/smoke.yaml

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def mirror(directory: Path):
    """An HTTP server on 127.0.0.1 (a free port) serving ``directory``; yields (base URL, list of request paths)."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet; record what was fetched instead
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def served_repository(tmp_path: Path) -> Path:
    """The project's files as on disk (tracked and new, not ignored) committed into a repository, then cloned
    bare: what GitHub would serve."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    src = tmp_path / "src"
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]
    run([*git, "init", "-q"], cwd=src)
    run([*git, "add", "-A"], cwd=src)
    run([*git, "commit", "-q", "-m", "snapshot"], cwd=src)
    bare = tmp_path / "stmedfm.git"
    run(["git", "clone", "-q", "--bare", str(src), str(bare)])
    return bare


def colab_environment(tmp_path: Path) -> Path:
    """A virtual environment whose interpreter sees this environment's packages (a plain path: their .pth files,
    such as this checkout's editable stmedfm, are not run), like Colab's preinstalled torch, numpy, ...; returns
    its python."""
    venv = tmp_path / "colab-venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(purelib) / "colab_preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = run([str(python), "-c", "import importlib.util as u, torch; "
                                    "print(torch.__version__, u.find_spec('stmedfm') is None)"], cwd=tmp_path).stdout.split()
    assert probe[1] == "True", "the Colab stand-in must not see this checkout's stmedfm"
    return python


def test_colab_from_a_clean_start(real_data_dir, tmp_path):
    pytest.importorskip("papermill")
    for flag in FLAGS:
        if not (real_data_dir / registry.get(flag).filename(28)).is_file():
            pytest.skip(f"{flag}.npz is not in $STMEDFM_DATA")
    served = tmp_path / "mirror"
    served.mkdir()
    for flag in FLAGS:
        name = registry.get(flag).filename(28)
        os.symlink(real_data_dir / name, served / name)

    bare = served_repository(tmp_path)
    python = colab_environment(tmp_path)
    torch_before = run([str(python), "-c", "import torch; print(torch.__file__, torch.__version__)"],
                       cwd=tmp_path).stdout

    # The kernel: Colab's interpreter with google.colab imported at start-up, an empty home and data directory.
    home, data_dir, content = tmp_path / "home", tmp_path / "data", tmp_path / "content"
    for d in (home, data_dir, content):
        d.mkdir()
    ipython_dir = tmp_path / "ipython"
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n")
    clone = content / "stmedfm"
    with mirror(served) as (url, requests):
        kernel_env = {"IPYTHONDIR": str(ipython_dir), "HOME": str(home), "STMEDFM_DATA": str(data_dir),
                      "STMEDFM_MIRROR": url, "STMEDFM_REPO": f"file://{bare}", "STMEDFM_COLAB_DIR": str(clone),
                      "STMEDFM_CACHE": str(tmp_path / "cache"), "PATH": os.environ.get("PATH", "")}
        kernels = tmp_path / "jupyter" / "kernels" / "colab"
        kernels.mkdir(parents=True)
        (kernels / "kernel.json").write_text(json.dumps({
            "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Colab stand-in", "language": "python", "env": kernel_env}))
        env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter"), "HOME": str(home)}
        env.pop("STMEDFM_ROOT", None)
        for name in ("01_data", "04_transfer"):
            out = tmp_path / f"{name}.out.ipynb"
            run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{name}.ipynb"), str(out),
                 "-k", "colab", "--cwd", str(content), "--no-progress-bar", "--execution-timeout", "1200",
                 "-p", "download", "True", "-p", "params", "params/smoke.yaml"], env=env, timeout=1800)
            executed = nbformat.read(out, as_version=4)
            errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "error"]
            assert not errors, errors
            code = [c for c in executed.cells if c.cell_type == "code"]
            assert "parameters" in code[0].metadata.get("tags", [])
            assert "injected-parameters" in code[1].metadata.get("tags", [])  # papermill's, then the Colab cell
            if name == "01_data":
                text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
                assert "downloading 3 official MedMNIST file(s)" in text
                assert "34561" in text  # the checked split sizes: the downloaded organamnist is the official one

    # the files were fetched once each from the mirror, verified, into the (empty) data directory
    assert sorted(r for r in requests if r.endswith(".npz")) == sorted(f"/{f}.npz" for f in FLAGS)
    for flag in FLAGS:
        path = data_dir / registry.get(flag).filename(28)
        assert path.is_file() and not path.is_symlink()
        assert data.verify(path, flag) == "md5"
    assert not list(data_dir.glob(".*.part"))
    # the project was cloned from the served repository and installed, keeping the preinstalled torch
    assert (clone / ".git").is_dir() and (clone / "notebooks" / "04_transfer.ipynb").is_file()
    assert run([str(python), "-c", "import torch; print(torch.__file__, torch.__version__)"],
               cwd=tmp_path).stdout == torch_before
    shown = run([str(python), "-m", "pip", "show", "stmedfm"], cwd=tmp_path).stdout
    assert "Editable project location: " + str(clone) in shown
    # 04_transfer ran the smoke study into the clone's store, named by its study key
    store = clone / "results" / "smoke"
    assert (store / "metrics.csv").is_file() and (store / "tables" / "table7_auroc.md").is_file()
    assert "params: params/smoke.yaml" in (store / "source.yaml").read_text()
    assert (clone / "figures" / "smoke" / "fig3_train_size_auroc.png").is_file()
