#!/usr/bin/env python
"""Maintenance of the committed notebooks: a developer tool, kept out of the ``stmedfm`` package (readers of the
study never need it).

The committed notebooks carry no outputs except the reference outputs of cells marked ``# NBVAL_CHECK_OUTPUT``
(the marker alone on its line), which ``pytest --nbval-lax`` compares with a fresh run. nbval only compares cells
that were run, so those cells keep an execution count (their position); every other cell has neither outputs nor
a count.

    python tools/notebooks.py check notebooks/*.ipynb     # what tests/test_notebooks.py would reject
    python tools/notebooks.py strip notebooks/*.ipynb     # remove every other output (e.g. after saving in Jupyter)
    python tools/notebooks.py refresh notebooks/*.ipynb   # re-execute the reference outputs (needs the real files)
    python tools/notebooks.py relink notebooks/*.ipynb    # = python -m stmedfm.notebook relink (after a fork)

``tests/test_notebooks.py`` imports this file by path and runs :func:`problems` on every committed notebook, so the
policy has one definition.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

import nbformat

from stmedfm import notebook as nb
from stmedfm.core.config import StudyConfig

#: Marker of cells whose output nbval compares with the committed reference output.
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
#: The one name each stmedfm module has in every notebook (a module not listed keeps its own name), so a reader
#: who learnt ``nb.show`` in one notebook finds the same spelling in the next.
ALIASES = {"notebook": "nb"}


def is_checked(cell) -> bool:
    """Whether nbval compares the cell's output: a line that is exactly the marker comment (nbval ignores the
    marker followed by other text on its line) or the ``nbval-check-output`` tag."""
    if cell.get("cell_type") != "code":
        return False
    marker = CHECK_MARKER.lstrip("# ")
    comments = [line.strip() for line in "".join(cell.get("source", "")).splitlines() if line.strip().startswith("#")]
    return (any(c.lstrip("#").strip() == marker for c in comments)
            or "nbval-check-output" in cell.get("metadata", {}).get("tags", []))


def strip(book):
    """Remove every output and execution count, except the reference outputs of ``# NBVAL_CHECK_OUTPUT`` cells
    (text streams only). Also drops papermill / execution metadata. Returns ``book``."""
    code = [c for c in book.cells if c.cell_type == "code"]
    for number, cell in enumerate(code, 1):
        cell.outputs = [o for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
                        ] if is_checked(cell) else []
        # nbval compares only cells that were run: a reference output needs an execution count (its position)
        cell.execution_count = number if cell.outputs else None
        for o in cell.outputs:
            o.pop("execution_count", None)
        for key in ("execution", "papermill", "scrolled", "collapsed"):
            cell.metadata.pop(key, None)
    book.metadata.pop("papermill", None)
    book.metadata.pop("widgets", None)
    book.metadata["language_info"] = {"name": "python"}  # no interpreter version: it would change with every run
    return book


# ---------------------------------------------------------------------------------------------------------------
# the policy, one check per concern
# ---------------------------------------------------------------------------------------------------------------
def _output_problems(code) -> list[str]:
    found = []
    for i, cell in enumerate(code):
        if cell.outputs and not is_checked(cell):
            found.append(f"code cell {i} has outputs but no '{CHECK_MARKER}' marker")
        elif cell.execution_count != (i + 1 if cell.outputs else None):
            found.append(f"code cell {i} has execution_count {cell.execution_count} (expected "
                         f"{i + 1 if cell.outputs else None}: only reference outputs carry one, their position)")
        if is_checked(cell) and not cell.outputs:
            found.append(f"code cell {i} is marked '{CHECK_MARKER}' but has no reference output (nbval would not "
                         "check it): run `python tools/notebooks.py refresh`")
        if is_checked(cell) and any(o.get("output_type") != "stream" for o in cell.outputs):
            found.append(f"code cell {i} ({CHECK_MARKER}) has non-text outputs")
    return found


def _header_problems(book, code, name: str) -> list[str]:
    """The first cells every notebook shares: badges, the parameters cell, the Colab cell."""
    found = []
    first = code[0]
    if "parameters" not in first.metadata.get("tags", []):
        found.append("the first code cell is not tagged 'parameters'")
    if first.source.strip() != nb.parameters_cell(name).strip():
        found.append("the parameters cell is not stmedfm.notebook.parameters_cell() (params and download, nothing else)")
    if len(code) < 2 or code[1].source.strip() != nb.colab_cell(name).strip():
        found.append(f"the second code cell is not the Colab install cell (stmedfm.notebook.colab_cell('{name}'))")
    if not book.cells or book.cells[0].cell_type != "markdown" or nb.badges(name) not in book.cells[0].source:
        found.append("the first cell is not a markdown cell with the Colab and Binder badges (stmedfm.notebook.badges)")
    if book.metadata.get("kernelspec", {}).get("name") != "python3":
        found.append("the kernelspec is not python3")
    return found


def _parse(cell) -> ast.AST:
    """A code cell as Python: IPython's %magics and !shell lines are blanked first."""
    return ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line
                               for line in cell.source.splitlines()))


def _alias_problems(i: int, tree: ast.AST) -> list[str]:
    """Every stmedfm module under its one name (:data:`ALIASES`), in every notebook."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "stmedfm":
            pairs = [(a.name, a.asname or a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            pairs = [(a.name.split(".", 1)[1], a.asname) for a in node.names
                     if a.name.startswith("stmedfm.") and a.asname]
        else:
            continue
        for module, alias in pairs:
            if alias != ALIASES.get(module, module):
                found.append(f"code cell {i} imports stmedfm.{module} as '{alias}': every notebook calls it "
                             f"'{ALIASES.get(module, module)}'")
    return found


def _code_problems(code, name: str) -> list[str]:
    """Later cells: they parse, bind no StudyConfig field name (papermill's parameters would be overridden
    silently), use the one alias per module, and one of them prints the notebook's position."""
    found = []
    fields = set(StudyConfig.keys())
    for i, cell in enumerate(code[2:], 2):
        try:
            tree = _parse(cell)
        except SyntaxError as exc:
            found.append(f"code cell {i} does not parse: {exc}")
            continue
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                  for a in n.names}
        if names & fields:
            found.append(f"code cell {i} binds {sorted(names & fields)}, names of StudyConfig fields: "
                         "from_namespace would take them as parameters")
        found += _alias_problems(i, tree)
    call = f'nb.position("{name}")'
    if not any(call in c.source for c in code[2:]):
        found.append(f"no cell calls {call} (prints 'Notebook N of M', counted from the notebooks that exist)")
    return found


def problems(path: str | os.PathLike) -> list[str]:
    """What is wrong with a committed notebook: outputs outside check cells, execution counts, a first code cell
    that is not the ``parameters`` cell, a missing badge or Colab cell, a later code cell that assigns a name of a
    StudyConfig field (which would silently override the parameters), a module imported under another name than
    in the other notebooks, or a notebook that does not print its position."""
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    found = _output_problems(code)
    if not code:
        return found + ["no code cells"]
    name = Path(path).stem
    return found + _header_problems(book, code, name) + _code_problems(code, name)


def refresh(files, timeout: int = 900) -> None:
    """Execute each notebook (cwd ``notebooks/``, kernel python3, its smoke defaults) and keep only the reference
    outputs of its check cells; execution errors stop with the notebook's name."""
    from nbclient import NotebookClient  # only this command executes notebooks

    for f in files:
        path = Path(f)
        book = nbformat.read(path, as_version=4)
        NotebookClient(book, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
        nbformat.write(strip(book), path)
        print(f"{path}: refreshed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/notebooks.py",
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
        nb.relink(args.files)
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
