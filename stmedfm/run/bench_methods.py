"""``stmedfm bench --methods``: what one training run of each adaptation method costs, in seconds and peak memory.

peft's ``method_comparison`` reports each method's training time and peak memory beside its accuracy and
trainable count; this is that measure for our strategies (issue 28), written to ``results/<study>/bench_methods.csv`` and
joined onto the methods tables by :func:`stmedfm.analysis.methods.summary`.

**How peak memory is measured, and why so.** Each strategy's run happens in a fresh Python process (nothing of
another method's allocations is left in the heap). The process loads the task and builds the starting model first,
and warms up with a 2-step run of the same method (torch initialises its kernels and autograd engine once per
process, ~100 MiB that no method owns), then resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``, value 5, Linux ≥ 4.0) and runs
the training half of a run (:func:`stmedfm.run.train.adapt`: building the single-head model, inserting the method,
``steps`` optimiser steps). ``peak_train_mib`` is the high-water mark after training minus the resident set just
before it: the memory the method's training adds, which is what differs between methods. On CPU, torch has no
``max_memory_allocated`` (peft reads it on GPUs), and Python's ``tracemalloc`` does not see torch's buffers, so the
kernel's count of resident pages is the measure that includes everything. Where ``clear_refs`` is unavailable
(not Linux), the process's ``ru_maxrss`` is used and ``memory_method`` says so (an upper bound then: loading
counts too). The starting checkpoint is a freshly initialised backbone: memory and time do not depend on the
weights' values, and the bench needs no pretraining.

The runs are the study's own (same budgets, batch sizes, learning rates and options as the parameter file, one
torch thread as in a pool worker); ``rounds`` repeats the measure in interleaved order and keeps the median.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from stmedfm.core import paths
from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_write_text
from stmedfm.analysis.methods import BENCH_CSV

COLUMNS = ["strategy", "task", "steps", "train_seconds", "peak_train_mib", "rss_before_mib", "trainable_params",
           "rounds", "memory_method", "machine"]


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current resident set (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def measure_one(params: str | None, overrides: dict, strategy: str, task: str) -> dict:
    """In this process: one training run of ``strategy`` on ``task`` as the study plans it; seconds and memory."""
    import torch

    from stmedfm import data as D
    from stmedfm.core import strategies
    from stmedfm.core.config import StudyConfig
    from stmedfm.core.records import RunSpec
    from stmedfm.run.train import adapt, build_model

    torch.set_num_threads(1)  # as in a pool worker (stmedfm.run.executors)
    cfg = StudyConfig.load(params, overrides)
    pretrained = strategies.get(strategy).pretrained
    pretrain = tuple(cfg.pretrain_tasks) if pretrained else ()
    spec = RunSpec(task, strategy, seed=0, steps=cfg.steps(task, strategy), lr=cfg.lr(strategy),
                   class_weights=cfg.class_weights, pretrain=pretrain)
    state = build_model(cfg, list(pretrain), 0).state_dict() if pretrained else None
    D.load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)  # loading is not the method's cost
    adapt(cfg, dataclasses.replace(spec, steps=2), state)  # nor are torch's one-time kernel and thread set-ups
    reset = _reset_high_water_mark()
    before = _status_kib("VmRSS") or 0
    t0 = time.perf_counter()
    _, _, (_total, trainable) = adapt(cfg, spec, state)
    seconds = time.perf_counter() - t0
    if reset:
        peak, method = _status_kib("VmHWM") - before, "VmHWM after clear_refs"
    else:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "ru_maxrss (upper bound)"
    return {"strategy": strategy, "task": task, "steps": spec.steps, "train_seconds": seconds,
            "peak_train_mib": max(peak, 0) / 1024, "rss_before_mib": before / 1024, "trainable_params": trainable,
            "memory_method": method}


def _measure_in_child(params: str | None, overrides: dict, strategy: str, task: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="stmedfm-bench-methods-") as tmp:
        out = Path(tmp) / "out.json"
        payload = json.dumps({"params": params, "overrides": overrides, "strategy": strategy, "task": task})
        proc = subprocess.run([sys.executable, "-m", "stmedfm.run.bench_methods", payload, str(out)],
                              capture_output=True, text=True, cwd=os.getcwd())
        if proc.returncode != 0 or not out.is_file():
            raise StmedfmError(f"bench --methods: the run of {strategy} on {task} failed (exit {proc.returncode}): "
                               f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
        return json.loads(out.read_text())


def run_methods_bench(params: str, task: str | None = None, strategies_: list[str] | None = None, rounds: int = 1,
                      out: str | os.PathLike | None = None, data_dir: str | None = None, log=print) -> pd.DataFrame:
    """Every strategy of ``params`` (or ``strategies_``) on ``task`` (default: the parameter file's first
    few-shot task, else its last downstream task), each in its own process, ``rounds`` interleaved rounds
    (median kept); written to ``out`` (default ``results/<study>/bench_methods.csv``, beside the study's tables,
    where :func:`stmedfm.analysis.methods.summary` finds it)."""
    from stmedfm.run.bench import machine
    from stmedfm.core.config import StudyConfig

    overrides = {"data_dir": data_dir} if data_dir else {}
    cfg = StudyConfig.load(params, overrides)
    task = task or next(iter(cfg.fewshot_tasks), cfg.downstream_tasks[-1])
    names = list(strategies_ or cfg.strategies)
    mach = machine()
    log(f"stmedfm bench --methods: {len(names)} strategies on {task}, {rounds} round(s), on {mach}")
    rows = []
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):  # interleaved, so drift does not favour an order
            rows.append(_measure_in_child(params, overrides, name, task))
            log(f"  {name}: {rows[-1]['train_seconds']:.2f} s, +{rows[-1]['peak_train_mib']:.1f} MiB")
    frame = pd.DataFrame(rows)
    keep = ["strategy", "task", "steps", "trainable_params", "memory_method"]
    table = frame.groupby(keep, sort=False)[["train_seconds", "peak_train_mib", "rss_before_mib"]].median()
    table = table.reset_index().assign(rounds=rounds, machine=mach)[COLUMNS]
    table = table.set_index("strategy").loc[names].reset_index()
    path = Path(out) if out else paths.project_root() / "results" / cfg.study / BENCH_CSV
    atomic_write_text(path, table.round(4).to_csv(index=False))
    log(f"wrote {path}")
    return table


if __name__ == "__main__":  # the child process of _measure_in_child
    job = json.loads(sys.argv[1])
    result = measure_one(job["params"], job["overrides"], job["strategy"], job["task"])
    Path(sys.argv[2]).write_text(json.dumps(result))
