"""Running studies: planning, training, where tasks run, the result store, a study, the benchmarks, exported
models. Needs torch; stands on ``core``, ``data``, ``model`` and reads results through ``analysis``."""
