"""stmedfm: a reproducible study of STMedFM, a lightweight cross-modal (2D + 3D) multi-task backbone on MedMNIST.

The package is layered, and its folders are the layers: the tree of ``stmedfm/`` is the architecture diagram. A
module imports only from layers below its own (imports inside functions count too), modules separated by ``|``
never import each other, and no two modules import each other by any path. Each block below is one import-linter
contract of ``pyproject.toml`` (``[tool.importlinter]``), top to bottom, and ``tests/test_architecture.py`` checks
both the imports and that these blocks and those contracts agree.

``stmedfm`` (the subpackages)::

    cli | notebook                        the applications: the command line (also ``python -m stmedfm``); notebook helpers
    run                                   running studies (torch): planning, training, the store, studies, benchmarks
    analysis                              reading results (no torch): tables, report, claims, analyses, figures
    data | model                          verified data as tensors; the architecture, its adaptations and metrics
    core                                  the foundation (no torch): errors, files, registry, config, statistics, run records

``stmedfm.run``::

    bench_methods                         seconds and peak memory of one run per adaptation method
    bench | runvariants                   the benchmark; running variant studies
    export | scaling | inputs             a model to share; workers; data and model tables
    bench_baseline | inference            slow reference pipeline; trained models
    launch                                assemble and run one study (the CLI and the notebooks)
    study | studyname                     execute a study; one name and parameter file per store
    store                                 the result store: runs, checkpoints, tidy tables
    planning                              what a study runs, each run's identity, preflight
    executors | hub | train               where tasks run; an exported model's class; training and evaluation

``stmedfm.analysis``::

    findings                              conclusions for the README
    variants | methods | claims | fair    variant studies; adaptation methods; the paper's claims; fair comparisons
    plots | report                        figures; the report
    tables                                the paper's tables from a result store

``stmedfm.core``::

    records | results                     what a run is (spec, result, pretraining mix); a store read
    bootstrap | config | scheduler | selection | stats   resampling; a study's config; Dask; rate selection; inference
    errors : io : measures : options : paths : provenance : registry : seal : strategies : tuners    the foundation (``:`` may import each other)

``stmedfm.data`` is the data (``data/__init__.py``) with ``download`` and ``synthetic`` above it, and
``stmedfm.model`` the architecture (``model/__init__.py``) with ``calibration``, ``metrics``, ``peft`` and
``precision`` above it; neither package's modules import each other.

Why this order: results are a function of parameters and data only, so what a run *is* (``core.records``) sits
below everything that trains; each run's identity (``run.planning``) below where it is kept (``run.store``), which
sits below how it is executed (``run.study``, ``run.executors``); everything that reads results (``analysis``)
needs only ``core``, never the execution machinery, and running a study may read its results (``run.export``
writes tables, ``run.runvariants`` analyses). ``docs/architecture.md`` says where a new module goes.
"""

from stmedfm.core.errors import StmedfmError

__version__ = "0.1.0"
__all__ = ["StmedfmError", "__version__"]
