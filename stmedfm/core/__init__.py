"""The foundation: what every other layer stands on, torch-free (errors, files, the registry of tasks and methods,
a study's config, the statistics, what a run is and how a store is read). Its modules' order is the ``core``
contract of ``pyproject.toml`` (``stmedfm/__init__.py`` draws it)."""
