"""stmedfm: a reproducible study of STMedFM, a lightweight cross-modal (2D + 3D) multi-task backbone on MedMNIST.

The package is layered. A module imports only from layers below its own (imports inside functions count too),
modules separated by ``|`` never import each other, and no two modules import each other by any path. The order,
top to bottom (``pyproject.toml`` ``[tool.importlinter]`` holds the same list, and ``tests/test_architecture.py``
checks both the imports and that this list and that one agree)::

    cli                                   the command line (also ``python -m stmedfm``)
    bench_methods                         seconds and peak memory of one run per adaptation method
    bench | findings | notebook | runvariants  benchmark; conclusions for the README; notebook helpers; running variants
    export | variants | methods | claims | scaling | fair | inputs  a model to share; variants; strategies; claims; workers; fair; data and model tables
    bench_baseline | inference | plots | report   slow reference pipeline; trained models; figures; report
    tables                                the paper's tables from a result store
    launch                                assemble and run one study (the CLI and the notebooks)
    study | studyname                     execute a study; one name and parameter file per store
    store                                 the result store: runs, checkpoints, tidy tables
    planning                              what a study runs, each run's identity, preflight
    executors | hub | train               where tasks run; an exported model's class; training and evaluation
    records | results                     what a run is (spec, result, pretraining mix); a store read (no torch)
    bootstrap | calibration | config | download | metrics | peft | precision | scheduler | selection | stats | synthetic
    data | model                          verified data as tensors; the architecture
    errors : io : measures : options : paths : provenance : registry : seal : strategies : tuners    the foundation (``:`` may import each other)

Why this order: results are a function of parameters and data only, so what a run *is* (``planning``) sits
below where it is kept (``store``), which sits below how it is executed (``study``, ``executors``); everything
that reads results (tables, figures, the report) sits above the store and never needs the execution machinery.
``docs/architecture.md`` says where a new module goes.
"""

from stmedfm.errors import StmedfmError

__version__ = "0.1.0"
__all__ = ["StmedfmError", "__version__"]
