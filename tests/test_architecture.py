"""The package's shape stays what ``stmedfm/__init__.py`` says: layers without cycles (import-linter) and no private
name used across modules (sizes: tests/test_sizes.py)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import stmedfm

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(stmedfm.__file__).parent


def _contract_layers() -> dict[str, list[str]]:
    """Container -> its layers, for every ``layers`` contract of ``pyproject.toml``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["containers"][0]: c["layers"] for c in config["contracts"] if c["type"] == "layers"}


def test_import_contracts_are_kept():
    """import-linter over the installed package: layers, no cycle, the baseline imported by bench only."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_docstring_states_the_checked_layers():
    """The layer order is written for readers in the package docstring and checked from pyproject.toml: the two
    lists must be the same, so neither can drift."""
    blocks = re.findall(r"^``([\w.]+)``[^\n]*::\n\n((?:    .*\n)+)", stmedfm.__doc__, re.M)
    written = {container: [re.split(r"\s{2,}", line.strip())[0] for line in block.splitlines()]
               for container, block in blocks}
    assert written == _contract_layers()


def test_the_folders_are_the_layers():
    """Every subpackage of ``stmedfm/`` is a layer of the first contract, and every layered subpackage's modules are
    its folder's: the tree is the diagram."""
    layers = _contract_layers()
    top = {name for layer in layers["stmedfm"] for name in re.split(r"[|:]", layer.replace(" ", ""))}
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} <= top
    for container, its_layers in layers.items():
        folder = PACKAGE.parent.joinpath(*container.split("."))
        modules = {name for layer in its_layers for name in re.split(r"[|:]", layer.replace(" ", ""))}
        present = {p.stem for p in folder.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
        assert modules == present - {"__init__", "__main__"}, container


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The module an ``import from`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[:-node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _module_names(tree: ast.Module, module: str, package: Path) -> dict[str, str]:
    """Local name -> package module it is bound to, for every import of a module of ``package`` in ``tree``."""
    top, names = package.name, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == top:
                    names[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom) and _absolute(node, module).split(".")[0] == top:
            source = _absolute(node, module)
            folder = package.parent.joinpath(*source.split("."))
            for a in node.names:
                if (folder / f"{a.name}.py").is_file() or (folder / a.name).is_dir():
                    names[a.asname or a.name] = f"{source}.{a.name}"
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_names_across_modules(package: Path = PACKAGE) -> list[str]:
    """Every ``from pkg.x import _y`` and every ``x._y`` (or ``pkg.x._y``) on a name bound to *another* module of
    ``package``: its private names used across modules."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        tree = ast.parse(path.read_text(), str(path))
        modules = _module_names(tree, module, package)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _absolute(node, module).split(".")[0] == package.name:
                source = _absolute(node, module)
                found += [f"{rel}:{node.lineno} from {source} import {a.name}" for a in node.names
                          if _private(a.name) and source != module]
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                chain, base = [node.attr], node.value
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                owner = ".".join([modules.get(getattr(base, "id", ""), ""), *reversed(chain[1:])])
                if isinstance(base, ast.Name) and base.id in modules and owner != module:
                    found.append(f"{rel}:{node.lineno} {base.id}.{'.'.join(reversed(chain))}")
    return sorted(found)


def test_no_private_name_is_used_across_modules():
    """A leading underscore means "only this module relies on it": what another module needs is public, with a
    docstring saying why."""
    assert private_names_across_modules() == []


def test_the_private_name_scan_finds_each_form(tmp_path):
    package = tmp_path / "stmedfm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.py").write_text("def _load_cached(): ...\n_load_cached.cache_clear()\n")
    (package / "train.py").write_text("def _optimizer(): ...\n")
    (package / "bench.py").write_text(
        "import stmedfm.train\nfrom stmedfm import data as D\nfrom stmedfm.train import _optimizer\n"
        "from .data import _load_cached\nD._load_cached.cache_clear()\nstmedfm.train._optimizer()\n"
        "D.__name__\nD.Split\n")
    assert private_names_across_modules(package) == sorted([
        "stmedfm/bench:3 from stmedfm.train import _optimizer", "stmedfm/bench:4 from stmedfm.data import _load_cached",
        "stmedfm/bench:5 D._load_cached", "stmedfm/bench:6 stmedfm.train._optimizer"])



def test_the_private_name_scan_follows_subpackages(tmp_path):
    """The folders are the layers, so most imports name a subpackage: ``from stmedfm.core import paths as P`` binds
    ``P`` to ``stmedfm.core.paths`` and ``P._root`` is found."""
    package = tmp_path / "stmedfm"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "paths.py").write_text("def _root(): ...\n")
    (package / "cli.py").write_text("from stmedfm.core import paths as P\nP._root()\n")
    assert private_names_across_modules(package) == ["stmedfm/cli:2 P._root"]

#: Makes torch unimportable, as on a machine without it (``sys.modules['torch'] = None`` would not do: scipy then
#: finds a 'torch' entry and asks it for ``Tensor``).
NO_TORCH = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n")


def _readers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c["source_modules"] for c in config["contracts"] if c.get("id") == "readers")


def _import_in_fresh_python(prelude: str, modules: list[str]) -> subprocess.CompletedProcess:
    code = prelude + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    return subprocess.run([sys.executable, "-c", code + "print(sorted(m for m in sys.modules if m == 'torch' "
                           "or m.startswith('torch.')))"], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_readers_import_without_torch():
    """Issue 32: every reader of results (the ``readers`` contract, plus ``stmedfm.analysis.plots`` and the command line)
    imports in a Python where torch cannot be imported, and importing them normally loads no torch."""
    modules = [*_readers(), "stmedfm.analysis.plots", "stmedfm.cli"]
    blocked = _import_in_fresh_python(NO_TORCH, modules)
    assert blocked.returncode == 0, blocked.stderr
    normal = _import_in_fresh_python("import sys\n", modules)
    assert normal.returncode == 0 and normal.stdout.strip() == "[]", normal.stdout + normal.stderr


@pytest.mark.slow
def test_tables_and_figures_of_a_store_need_no_torch(tmp_path):
    """`stmedfm tables` and `stmedfm figures` of a committed store run with torch unimportable; the tables are the
    committed ones, byte for byte (Figure 1, drawn from the model, is skipped with one line)."""
    import shutil

    store = shutil.copytree(ROOT / "results" / "offline_label_safe", tmp_path / "s")
    code = NO_TORCH + (f"from stmedfm.cli import main\nsys.exit(main(['tables', {str(store)!r}]) or "
                       f"main(['figures', {str(store)!r}, '--out', {str(tmp_path / 'fig')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Figure 1 (drawn from the model) needs torch" in done.stderr and "Traceback" not in done.stderr
    for path in sorted((ROOT / "results" / "offline_label_safe" / "tables").iterdir()):
        assert (store / "tables" / path.name).read_bytes() == path.read_bytes(), path.name
    assert any(p.suffix == ".png" for p in (tmp_path / "fig").iterdir())
