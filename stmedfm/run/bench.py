"""``stmedfm bench``: our pipeline side by side with a MedMNIST-style one, on the same machine, in one run.

The **baseline** (:mod:`stmedfm.run.bench_baseline`, imported by nothing else) is how MedMNIST's own examples train:
a per-item ``Dataset`` with PIL / numpy transforms, a ``DataLoader`` in the same process, NCHW, fp32, every run in
one process with torch's default threads and glibc's default allocator. It trains the same model with the same
batch sizes, budgets, batch indices and evaluation splits as ours; it only differs in how batches are made and fed.

**Ours** is the study as shipped: whole batches indexed from in-memory uint8 tensors, converted and flipped as
one tensor op, channels-last stems, evaluation under ``inference_mode`` with the frozen stem's outputs shared
between runs, the tuned allocator, runs fanned out over one single-thread process per core.

Measures (one row each in ``results/bench.csv``: measure, ours, baseline, ratio = ours / baseline, unit, machine):

* train throughput 2D (batch 32) and 3D (batch 8), eval throughput 2D (batch 256) and 3D (batch 32), in
  samples/s, one thread each side (so the pipelines are compared, not the thread counts);
* wall time of ``params/paper.yaml`` (1 seed, and 5 seeds for ours) on synthetic files of the official shapes
  and sizes, since compute does not depend on pixel values; the same protocol through the baseline loop; and
  ``params/offline.yaml`` on the real files when they are present;
* peak memory: the largest sum of RSS over the process tree of a protocol run (sampled with psutil; without
  psutil, the client's peak plus the largest worker's, from ``getrusage``).

``--quick`` (CI) runs the same code on tiny files with tiny budgets in well under a minute: its numbers show the
plumbing works, not how fast anything is (process start-up dominates them).

``--precision`` adds fp32-vs-bf16 rows (:func:`run_precision_bench`: throughput, the 1-seed paper protocol, and
the parity summary of two stores with ``--parity``); ``--sizes`` adds peak RSS and seconds per run of a study at
28, 64, 128 and 224 px (:func:`run_size_bench`). Both merge their rows into ``results/bench.csv``.

``--profile`` instead shows where the time goes (:func:`profile_protocol`): the 1-seed paper protocol in one
process and one thread under ``torch.profiler``, as time per phase (pretraining, training, evaluation, metrics)
and the operators with the most self CPU time, written to ``results/profile.csv``.

Measured, and left out (docs/performance.md): ``torch.compile`` (30 s to compile the 3D training step, which
then ran slower; 1.28x on 3D evaluation after 4 s per graph, and every strategy, batch size and worker needs its
own graphs: it does not pay back in a study of a few minutes); bf16 autocast by default (7x slower on CPUs without
native bf16; faster where it is native: ``precision: bf16 | auto``, :mod:`stmedfm.model.precision`); the first 3D
convolution as a 2D convolution over depth slices (about 5 % on 3D training throughput, within the noise of the
measure, and it would change the 3D numbers); in-place ReLU (no difference).

Imports of optional or heavy packages stay inside the function that needs them: ``psutil`` (optional: without it
the peak comes from ``getrusage``) and ``torch.profiler`` (only ``--profile`` loads it).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stmedfm.run import bench_baseline as baseline
from stmedfm import data as D
from stmedfm.core import measures, paths, registry
from stmedfm.run import scaling
from stmedfm.core.config import PAPER_TASKS, StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.run.executors import prepare_worker, restore_allocator
from stmedfm.core.io import atomic_write_text
from stmedfm.model.peft import prepare
from stmedfm.run.planning import preflight, study_data, unique_runs
from stmedfm.core.records import plan, pretrain_jobs
from stmedfm.model import precision as P  # P.cpu_flags looked up at call time: tests stand in another CPU
from stmedfm.model.precision import NATIVE_CPU_FLAGS, native_cpu_bf16, resolve
from stmedfm.core.provenance import cpu_model, isa_summary
from stmedfm.core.stats import mean_ci
from stmedfm.core.strategies import FULL, LORA, SCRATCH
from stmedfm.run.study import default_workers, run_study
from stmedfm.data.synthetic import split_sizes, write_synthetic, write_synthetic_streaming
from stmedfm.run.train import (PHASE_EVALUATE, PHASE_METRICS, PHASE_PRETRAIN, PHASE_TRAIN, build_model, generator,
                           make_pool, predict_logits, pretrain, run_downstream, train_steps)

COLUMNS = ["measure", "ours", "baseline", "ratio", "unit", "machine"]

#: --quick: a fixed subset of the paper's protocol (one 2D and the 3D task, three strategies, few-shot K=1 on 3D)
#: on tiny files with budgets of a few steps: it exercises every code path of both sides, fast
QUICK_N = {"train": 48, "val": 16, "test": 32}
QUICK_OVERRIDES = dict(seeds=1, pretrain_tasks=["bloodmnist", "organmnist3d"], pretrain_steps=4,
                       downstream_tasks=["bloodmnist", "organmnist3d"], strategies=[SCRATCH, FULL, LORA],
                       scratch_steps_2d=3, scratch_steps_3d=2, finetune_steps_2d=3, finetune_steps_3d=2,
                       fewshot_tasks={"organmnist3d": 2}, fewshot_k=[1], fewshot_splits=1,
                       fewshot_strategies=[FULL, "adapter"], class_weight_ablation_tasks=[], leave_out_tasks=[],
                       extended_tasks=[], calibration_task="bloodmnist")
#: the single-thread throughput measures: their rows in results/bench.csv (also those of --precision)
THROUGHPUT_LABELS = {"train_2d": "train throughput 2D, batch 32, 1 thread", "train_3d": "train throughput 3D, batch 8, 1 thread",
                     "eval_2d": "eval throughput 2D, batch 256, 1 thread", "eval_3d": "eval throughput 3D, batch 32, 1 thread"}
THROUGHPUT = {  # steps / samples per measure: (quick, full)
    "train_2d": (8, 150), "train_3d": (3, 40), "eval_2d": (512, 4096), "eval_3d": (64, 320),
}


# ---------------------------------------------------------------------------------------------------------------
# where the time goes
PROFILE_COLUMNS = ["kind", "item", "seconds", "share", "calls"]


def profile_protocol(cfg: StudyConfig, top: int = 15) -> pd.DataFrame:
    """Where the time of a protocol goes: every pretraining job and unique run of ``cfg``, one after the other in
    this process with one torch thread (as in a pool worker), each under its own ``torch.profiler`` so memory
    stays bounded however long the protocol is (one profiler over a whole study holds millions of events).

    Returns a tidy frame (:data:`PROFILE_COLUMNS`): ``kind`` 'total' (profiled wall time), 'phase' (pretrain,
    train, evaluate, metrics: the annotations of :mod:`stmedfm.run.train`, inclusive; 'other' is building models
    and drawing subsets) and 'op' (the ``top`` operators by self CPU time, summed over runs).
    ``share`` is a fraction of the total. The profiler adds its own overhead to every operator call, so shares
    are what to compare, not seconds.
    """
    from torch.profiler import ProfilerActivity, profile


    phases = (PHASE_PRETRAIN, PHASE_TRAIN, PHASE_EVALUATE, PHASE_METRICS)
    preflight(cfg)
    planned = plan(cfg)
    unique = unique_runs(cfg, planned, study_data(cfg))
    jobs = pretrain_jobs(planned)
    ops: dict[str, list] = {}
    spent = dict.fromkeys(phases, 0.0)
    busy = 0.0  # time inside the profiled calls: the profiler's own bookkeeping between runs is left out

    def profiled(fn, *args):
        nonlocal busy
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            out = fn(*args)
            busy += time.perf_counter() - t
        for e in prof.key_averages():
            if e.key in spent:
                spent[e.key] += e.cpu_time_total / 1e6
            elif not e.key.startswith("phase: "):
                acc = ops.setdefault(e.key, [0.0, 0])
                acc[0] += e.self_cpu_time_total / 1e6
                acc[1] += e.count
        return out

    threads = torch.get_num_threads()
    prepare_worker()
    try:
        states = {job: profiled(pretrain, cfg, list(job.tasks), job.seed)[0] for job in jobs}
        for p in unique.values():
            profiled(run_downstream, cfg, p.spec, states.get(p.pretrain_job))
    finally:
        torch.set_num_threads(threads)
        restore_allocator()
    total = busy
    rows = [("total", "profiled wall time", total, 1.0, len(jobs) + len(unique))]
    rows += [("phase", name.removeprefix("phase: "), secs, secs / total, None) for name, secs in spent.items()]
    other = total - sum(spent.values())
    rows.append(("phase", "other", other, other / total, None))
    for name, (secs, calls) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]:
        rows.append(("op", name, secs, secs / total, calls))
    return pd.DataFrame(rows, columns=PROFILE_COLUMNS)


def format_profile(frame: pd.DataFrame) -> str:
    lines = [f"{'kind':<6} {'item':<44} {'seconds':>9} {'share':>7} {'calls':>9}"]
    for r in frame.itertuples(index=False):
        calls = "" if pd.isna(r.calls) else f"{int(r.calls):9d}"
        lines.append(f"{r.kind:<6} {r.item[:44]:<44} {r.seconds:9.2f} {100 * r.share:6.1f}% {calls:>9}")
    return "\n".join(lines)


def run_profile(quick: bool = False, out: str | os.PathLike | None = None, top: int = 15,
                synthetic_dir: str | os.PathLike | None = None, log=print) -> pd.DataFrame:
    """``stmedfm bench --profile``: :func:`profile_protocol` of ``params/paper.yaml`` with 1 seed on synthetic
    files of the official sizes (``--quick``: the tiny subset CI runs), in a fresh process; writes ``out``
    (default ``results/profile.csv``) atomically and prints the table."""
    paper = paths.params_dir() / "paper.yaml"
    with tempfile.TemporaryDirectory(prefix="stmedfm-bench-") as tmp:
        if quick:
            data = _synthetic(Path(tmp) / "quick", n=QUICK_N)
            over = {**QUICK_OVERRIDES, "data_dir": str(data)}
        else:
            data = _synthetic(Path(synthetic_dir) if synthetic_dir else paths.cache_dir() / "bench" / "official-size",
                              scale=1.0)
            over = {"data_dir": str(data), "seeds": 1}
        log(f"profiling {'the quick subset of ' if quick else ''}paper.yaml, 1 seed, one process, one thread, "
            f"on {machine()} ...")
        got = _measure({"what": "profile", "kind": "ours", "params": str(paper), "overrides": over, "top": top})
    frame = pd.DataFrame(got["profile"], columns=PROFILE_COLUMNS)
    out = Path(out) if out else paths.project_root() / "results" / "profile.csv"
    atomic_write_text(out, frame.to_csv(index=False))
    log(format_profile(frame))
    log(f"written: {out}")
    return frame


# ---------------------------------------------------------------------------------------------------------------
# measures, each in a fresh process (so one side's allocator, caches or threads cannot help the other)
def _throughput(data_dir: str, quick: bool) -> dict[str, dict[str, float]]:
    """Both sides in one fresh process: the baseline first, with glibc's default allocator, then ours."""
    torch.set_num_threads(1)
    base = _throughput_of("baseline", data_dir, quick)
    prepare_worker()
    return {"baseline": base, "ours": _throughput_of("ours", data_dir, quick)}


def _throughput_of(kind: str, data_dir: str, quick: bool, precision: str = "fp32") -> dict[str, float]:
    i = 0 if quick else 1
    cfg = StudyConfig.from_dict({"data_dir": data_dir, "pretrain_tasks": ["bloodmnist", "organmnist3d"],
                                 "downstream_tasks": ["bloodmnist", "organmnist3d"], "calibration_task": None,
                                 "precision": precision})
    prec = resolve(precision, "cpu")
    out = {}
    for task, dim in (("bloodmnist", "2d"), ("organmnist3d", "3d")):
        model = prepare(build_model(cfg, [task], 0), "full", task)
        if kind == "baseline":
            model = baseline.nchw(model)
        bs, ebs = cfg.batch_size(task), cfg.eval_batch_size(task)
        train, test = D.load_task(task, data_dir=data_dir)["train"], D.load_task(task, data_dir=data_dir)["test"]
        pool = make_pool(cfg, task)

        def fit(n: int) -> None:
            if kind == "ours":
                train_steps(model, pool, n, 1e-3, cfg, generator(1))
            else:
                loader = baseline.per_item_loader(task, train, None, bs, n, generator(1), True, 0)
                baseline.baseline_train(model, task, loader, pool.weights, 1e-3, cfg)

        def evaluate(n: int) -> None:
            if kind == "ours":
                predict_logits(model, task, test.images[:n], ebs, precision=prec)
            else:
                baseline.baseline_logits(model, task, D.Split(test.images[:n], test.labels[:n]), ebs)

        steps = THROUGHPUT[f"train_{dim}"][i]
        fit(2)  # warm-up: first-call allocations and kernel selection
        out[f"train_{dim}"] = steps * bs / _timed(fit, steps)
        n = min(len(test), THROUGHPUT[f"eval_{dim}"][i])
        evaluate(ebs)
        out[f"eval_{dim}"] = n / _timed(evaluate, n)
    return out


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _protocol(kind: str, params: str | None, overrides: dict, workers: int | None) -> dict[str, float]:
    cfg = StudyConfig.load(params, overrides)
    t0 = time.perf_counter()
    run_seconds = float("nan")
    if kind == "ours":
        with tempfile.TemporaryDirectory(prefix="stmedfm-bench-") as out:
            store = run_study(cfg, out=out, progress=False, workers=workers)
            run_seconds = float(store.table("runs")["seconds"].mean())
        runs = len(unique_runs(cfg, plan(cfg), study_data(cfg)))
    else:
        runs = baseline.baseline_study(cfg)
    return {"seconds": time.perf_counter() - t0, "runs": runs, "run_seconds": run_seconds}


def _throughput_precisions(data_dir: str, quick: bool, rounds: int) -> dict[str, dict[str, float]]:
    """fp32 and bf16 throughput of ours in one fresh single-thread process, interleaved (fp32, bf16, then bf16,
    fp32, ...) so drifting load hits both sides alike; the best of ``rounds`` per side and measure."""
    prepare_worker()
    best: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}}
    for r in range(rounds):
        for prec in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            for m, v in _throughput_of("ours", data_dir, quick, prec).items():
                best[prec][m] = max(best[prec].get(m, 0.0), v)
    return best


def _child_main(payload: dict) -> dict:
    if payload["what"] == "throughput":
        result = _throughput(payload["data_dir"], payload["quick"])
    elif payload["what"] == "throughput_precision":
        result = _throughput_precisions(payload["data_dir"], payload["quick"], payload["rounds"])
    elif payload["what"] == "profile":
        cfg = StudyConfig.load(payload["params"], payload["overrides"])
        result = {"profile": profile_protocol(cfg, payload["top"]).to_dict(orient="records")}
    else:
        result = _protocol(payload["kind"], payload["params"], payload["overrides"], payload.get("workers"))
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["rusage_peak_bytes"] = kib * 1024
    return result


def _measure(payload: dict) -> dict:
    """Run one measure in a fresh Python process; add ``peak_rss`` (bytes) of its whole process tree."""
    try:
        import psutil
    except ImportError:
        psutil = None
    with tempfile.TemporaryDirectory(prefix="stmedfm-bench-") as tmp:
        out_path, err_path = Path(tmp) / "out.json", Path(tmp) / "err.txt"
        cmd = [sys.executable, "-m", "stmedfm.run.bench", json.dumps(payload), str(out_path)]
        env = {**os.environ, "KINETO_LOG_LEVEL": os.environ.get("KINETO_LOG_LEVEL", "6")}  # no profiler chatter
        with open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=os.getcwd(), env=env)
            peak = 0
            if psutil is not None:
                try:
                    ps = psutil.Process(proc.pid)
                    while proc.poll() is None:
                        total = 0
                        for p in [ps, *ps.children(recursive=True)]:
                            try:
                                total += p.memory_info().rss
                            except psutil.Error:
                                pass
                        peak = max(peak, total)
                        time.sleep(0.25)
                except psutil.Error:
                    pass
            proc.wait()
        if proc.returncode != 0 or not out_path.is_file():
            tail = err_path.read_text()[-2000:]
            raise StmedfmError(f"bench measure {payload['what']} ({payload['kind']}) failed "
                               f"(exit {proc.returncode}):\n{tail}")
        result = json.loads(out_path.read_text())
    result["peak_rss"] = peak if peak else result["rusage_peak_bytes"]
    result["rss_method"] = "psutil" if peak else "getrusage"
    return result


# ---------------------------------------------------------------------------------------------------------------
def machine() -> str:
    """CPU model with its relevant ISA flags (AVX2, AVX-512, bf16, AMX), cores, memory, torch and Python."""
    cpu = f"{cpu_model()} ({isa_summary()})"
    mem = ""
    try:
        kib = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def _begin(what: str, quick: bool, workers: int | None, out, log) -> tuple[int, str, Path, float | None]:
    """(workers, machine, output path, load average) of a bench run, after saying what runs where and warning on a
    busy machine."""
    workers = workers or default_workers()
    mach = machine()
    out = Path(out) if out else paths.project_root() / "results" / "bench.csv"
    log(f"stmedfm bench{what}{' --quick' if quick else ''} on {mach}; {workers} workers")
    load = _load()
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        log(f"warning: the machine is busy (load average {load:.1f} on {os.cpu_count()} cores): timings are contended")
    return workers, mach, out, load


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _synthetic(directory: Path, n=None, scale=None, flags=PAPER_TASKS) -> Path:
    """Synthetic files of ``flags`` in ``directory`` (kept when already there: writing official sizes takes ~40 s)."""
    if not all((directory / registry.get(f).filename(28)).is_file() for f in flags):
        directory.mkdir(parents=True, exist_ok=True)
        write_synthetic(directory, flags, n=n, scale=scale, seed=0)
    return directory


def _row(measure: str, ours: float, baseline: float | None, unit: str, mach: str) -> dict:
    base = np.nan if baseline is None else float(baseline)
    ratio = float(ours) / base if base and not np.isnan(base) else np.nan
    return {"measure": measure, "ours": float(ours), "baseline": base, "ratio": ratio, "unit": unit, "machine": mach}


def run_bench(quick: bool = False, out: str | os.PathLike | None = None, workers: int | None = None,
              synthetic_dir: str | os.PathLike | None = None, real_data_dir: str | os.PathLike | None = None,
              log=print) -> pd.DataFrame:
    """Run every measure, write ``out`` (default ``results/bench.csv``) atomically, return the table."""
    workers, mach, out, load = _begin("", quick, workers, out, log)
    rows: list[dict] = []
    log("Synthetic files of the official shapes stand in for the missing paper files: compute does not depend "
        "on pixel values, only on shapes and sizes.")
    with tempfile.TemporaryDirectory(prefix="stmedfm-bench-") as tmp:
        tmp = Path(tmp)
        # --- throughput: small files are enough (batches are drawn from memory)
        small = tmp / "small"
        for flag, m in (("bloodmnist", "eval_2d"), ("organmnist3d", "eval_3d")):
            _synthetic(small, n={"train": 512, "val": 64, "test": THROUGHPUT[m][0 if quick else 1]}, flags=(flag,))
        log("throughput, baseline then ours ...")
        got = _measure({"what": "throughput", "kind": "both", "data_dir": str(small), "quick": quick})
        for m, label in THROUGHPUT_LABELS.items():
            rows.append(_row(label, got["ours"][m], got["baseline"][m], "samples/s", mach))

        # --- the paper's protocol
        paper = str(paths.params_dir() / "paper.yaml")
        if quick:
            data = _synthetic(tmp / "quick", n=QUICK_N)
            over = {**QUICK_OVERRIDES, "data_dir": str(data)}
            name = "paper.yaml quick subset (tiny), 1 seed"
            protocols = [(name, over, True)]
        else:
            data = _synthetic(Path(synthetic_dir) if synthetic_dir else paths.cache_dir() / "bench" / "official-size",
                              scale=1.0)
            protocols = [("paper.yaml, 1 seed", {"data_dir": str(data), "seeds": 1}, True),
                         ("paper.yaml, 5 seeds", {"data_dir": str(data), "seeds": 5}, False)]
        for name, over, with_baseline in protocols:
            res = {}
            for kind in ("ours", "baseline") if with_baseline else ("ours",):
                log(f"{name}, {kind} ...")
                res[kind] = _measure({"what": "protocol", "kind": kind, "params": paper, "overrides": over,
                                      "workers": workers})
                log(f"  {res[kind]['seconds']:.1f} s for {res[kind]['runs']} runs")
            b = res.get("baseline")
            rows.append(_row(f"wall time, {name}", res["ours"]["seconds"], b and b["seconds"], "s", mach))
            rows.append(_row(f"peak RSS, {name}", res["ours"]["peak_rss"] / 2**20, b and b["peak_rss"] / 2**20,
                             "MiB", mach))
        if not quick:
            offline = str(paths.params_dir() / "offline.yaml")
            cfg = StudyConfig.load(offline, {"data_dir": str(real_data_dir)} if real_data_dir else None)
            try:
                for t in cfg.all_tasks():
                    D.locate(t, data_dir=cfg.data_dir)
            except StmedfmError:
                log("offline.yaml: its real files are not here ($STMEDFM_DATA); skipped")
            else:
                log(f"offline.yaml ({len(cfg.seeds)} seeds, real files), ours ...")
                over = {"data_dir": str(real_data_dir)} if real_data_dir else {}
                res = _measure({"what": "protocol", "kind": "ours", "params": offline, "overrides": over,
                                "workers": workers})
                rows.append(_row(f"wall time, offline.yaml, {len(cfg.seeds)} seeds (real files)", res["seconds"],
                                 None, "s", mach))
                rows.append(_row(f"peak RSS, offline.yaml, {len(cfg.seeds)} seeds (real files)",
                                 res["peak_rss"] / 2**20, None, "MiB", mach))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(out, frame.to_csv(index=False))
    if load is not None:
        log(f"load average at start / end: {load:.2f} / {_load():.2f}")
    log(format_table(frame))
    log(f"written: {out}")
    return frame


# ---------------------------------------------------------------------------------------------------------------
# fp32 vs bf16 (stmedfm bench --precision), and how cost grows with image size (stmedfm bench --sizes)
PRECISION_LABELS = {m: THROUGHPUT_LABELS[m] for m in ("train_2d", "eval_2d", "train_3d", "eval_3d")}  # rows' order
PARITY_METRICS = {m: measures.label(m) for m in ("macro_auroc", "accuracy", "ece")}
SIZES = (28, 64, 128, 224)
#: --sizes: pathmnist (the largest 2D flag) at every size, full official split sizes, reduced budgets, 2 workers;
#: evaluation covers the whole val and test splits (17,184 images), streamed batch by batch
SIZE_STUDY = dict(seeds=1, pretrain_tasks=["pathmnist"], downstream_tasks=["pathmnist"],
                  strategies=[SCRATCH, "linear_probe"], pretrain_steps=10, scratch_steps_2d=10, finetune_steps_2d=10,
                  fewshot_tasks={}, class_weight_ablation_tasks=[], leave_out_tasks=[], extended_tasks=[],
                  calibration_task=None)


def merge_rows(out: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """``out`` with the rows of ``frame`` replacing those of the same measure (others kept, in order)."""
    if out.is_file():
        old = pd.read_csv(out)
        old = old[~old["measure"].isin(frame["measure"])]
        frame = pd.concat([old, frame], ignore_index=True)
    atomic_write_text(out, frame.to_csv(index=False))
    return frame


def parity_table(fp32_dir: str | os.PathLike, bf16_dir: str | os.PathLike) -> pd.DataFrame:
    """bf16 - fp32, paired per run (same task, strategy, seed, budget: the transfer runs of both stores): mean
    difference and its 95 % t-interval per task x strategy x metric (AUROC, accuracy, ECE)."""
    keys = ["task", "strategy", "seed"]
    frames = {}
    for name, d in (("fp32", fp32_dir), ("bf16", bf16_dir)):
        m = pd.read_csv(Path(d) / "metrics.csv")
        m = m[(m["experiment"] == "transfer") & m["metric"].isin(list(PARITY_METRICS))]
        frames[name] = m.drop_duplicates(keys + ["metric"]).set_index(keys + ["metric"])["value"]
    both = pd.concat(frames, axis=1, join="inner").dropna().reset_index()
    both["delta"] = both["bf16"] - both["fp32"]
    rows = []
    for (task, strategy, metric), g in both.groupby(["task", "strategy", "metric"], sort=False):
        mean, lo, hi = mean_ci(g["delta"].to_numpy())
        rows.append({"task": task, "strategy": strategy, "metric": metric, "n_pairs": len(g),
                     "fp32_mean": g["fp32"].mean(), "bf16_mean": g["bf16"].mean(), "mean_delta": mean,
                     "ci_low": lo, "ci_high": hi, "ci_contains_0": bool(lo <= 0 <= hi),
                     "max_abs_delta": float(g["delta"].abs().max())})
    return pd.DataFrame(rows)


def parity_rows(table: pd.DataFrame, mach: str, what: str) -> list[dict]:
    """bench.csv summary of a parity table: per metric, the largest |mean difference| over task x strategy
    (ours = bf16 - fp32) and how many cells' 95 % CI contain 0 (ours = cells, baseline = all cells)."""
    rows = []
    for metric, label in PARITY_METRICS.items():
        t = table[table["metric"] == metric]
        if not len(t):
            continue
        worst = t.loc[t["mean_delta"].abs().idxmax()]
        rows.append(_row(f"parity bf16 - fp32, {what}: largest |mean delta {label}| ({worst.task} {worst.strategy})",
                         worst.mean_delta, None, label, mach))
        rows.append(_row(f"parity bf16 - fp32, {what}: cells whose 95 % CI of delta {label} contains 0",
                         int(t["ci_contains_0"].sum()), len(t), "cells", mach))
    return rows


def run_precision_bench(quick: bool = False, out: str | os.PathLike | None = None, workers: int | None = None,
                        synthetic_dir: str | os.PathLike | None = None, rounds: int = 2,
                        parity: tuple[str, str] | None = None, log=print) -> pd.DataFrame:
    """``stmedfm bench --precision``: fp32 vs bf16 side by side on this machine (rows: ours = bf16, baseline =
    fp32, ratio = bf16 / fp32), merged into ``out`` (default ``results/bench.csv``): single-thread throughput, and
    the paper protocol at 1 seed, run interleaved fp32, bf16, bf16, fp32 ... (``rounds`` each; the fastest kept).
    On a CPU without native bf16 the rows say so instead of timing an emulation. ``parity`` (the fp32 and bf16
    stores of the same study) adds the parity summary rows (:func:`parity_rows`)."""
    workers, mach, out, load = _begin(" --precision", quick, workers, out, log)
    rows: list[dict] = []
    paper = str(paths.params_dir() / "paper.yaml")
    name = "paper.yaml quick subset (tiny), 1 seed" if quick else "paper.yaml, 1 seed"
    flags = P.cpu_flags()
    native = native_cpu_bf16(flags)
    if not native:
        note = f"not timed: this CPU has no native bf16 ({isa_summary(flags)}; none of {', '.join(NATIVE_CPU_FLAGS)})"
        log(note)
        for label in PRECISION_LABELS.values():
            rows.append(_row(f"{label}: bf16 vs fp32, {note}", np.nan, None, "samples/s", mach))
        rows.append(_row(f"wall time, {name}: bf16 vs fp32, {note}", np.nan, None, "s", mach))
    else:
        with tempfile.TemporaryDirectory(prefix="stmedfm-bench-") as tmp:
            tmp = Path(tmp)
            small = tmp / "small"
            for flag, m in (("bloodmnist", "eval_2d"), ("organmnist3d", "eval_3d")):
                _synthetic(small, n={"train": 512, "val": 64, "test": THROUGHPUT[m][0 if quick else 1]}, flags=(flag,))
            log(f"throughput, fp32 and bf16 interleaved, {rounds} rounds ...")
            got = _measure({"what": "throughput_precision", "kind": "both", "data_dir": str(small), "quick": quick,
                            "rounds": rounds})
            for m, label in PRECISION_LABELS.items():
                rows.append(_row(f"{label}: bf16 vs fp32", got["bf16"][m], got["fp32"][m], "samples/s", mach))
            if quick:
                data = _synthetic(tmp / "quick", n=QUICK_N)
                over = {**QUICK_OVERRIDES, "data_dir": str(data)}
            else:
                data = _synthetic(Path(synthetic_dir) if synthetic_dir else paths.cache_dir() / "bench" / "official-size",
                                  scale=1.0)
                over = {"data_dir": str(data), "seeds": 1}
            res: dict[str, list] = {"fp32": [], "bf16": []}
            for r in range(rounds):
                for prec in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                    log(f"{name}, {prec} (round {r + 1}) ...")
                    res[prec].append(_measure({"what": "protocol", "kind": "ours", "params": paper,
                                               "overrides": {**over, "precision": prec}, "workers": workers}))
                    log(f"  {res[prec][-1]['seconds']:.1f} s for {res[prec][-1]['runs']} runs")
            best = {p: min(v, key=lambda x: x["seconds"]) for p, v in res.items()}
            rows.append(_row(f"wall time, {name}: bf16 vs fp32", best["bf16"]["seconds"], best["fp32"]["seconds"],
                             "s", mach))
            rows.append(_row(f"peak RSS, {name}: bf16 vs fp32", best["bf16"]["peak_rss"] / 2**20,
                             best["fp32"]["peak_rss"] / 2**20, "MiB", mach))
    if parity:
        table = parity_table(*parity)
        seeds = int(table["n_pairs"].min()) if len(table) else 0
        rows += parity_rows(table, mach, f"{Path(parity[0]).name} vs {Path(parity[1]).name}, {seeds} seeds")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    merge_rows(out, frame)
    if load is not None:
        log(f"load average at start / end: {load:.2f} / {_load():.2f}")
    log(format_table(frame))
    log(f"merged into: {out}")
    return frame


def _sized_file(directory: Path, size: int, scale: float) -> Path:
    """The synthetic pathmnist file of ``size`` px at ``scale`` in ``directory`` (written once, streamed)."""
    info = registry.get("pathmnist")
    target = directory / info.filename(size)
    entry = D.manifest_entry(target) if target.is_file() else None
    if not (entry and entry.get("synthetic") and entry.get("n_samples") == split_sizes(info, scale=scale)):
        write_synthetic_streaming(directory, "pathmnist", size=size, scale=scale)
    return target


def run_size_bench(sizes=SIZES, scale: float = 1.0, out: str | os.PathLike | None = None, workers: int = 2,
                   synthetic_dir: str | os.PathLike | None = None, precision: str = "fp32", log=print) -> pd.DataFrame:
    """``stmedfm bench --sizes``: peak RSS (summed over the client and its workers) and seconds per run of a
    reduced-budget study (:data:`SIZE_STUDY`) on synthetic ``pathmnist`` files of the official shapes at each
    size (``scale`` x the official split sizes: 1.0 = the full files, ~16 GB at 224 px), merged into ``out``.
    Files are written once into ``synthetic_dir`` (default: the cache) and verified and extracted into the
    array cache before the measure, so the numbers are those of a study, not of a first download."""
    mach = machine()
    out = Path(out) if out else paths.project_root() / "results" / "bench.csv"
    directory = Path(synthetic_dir) if synthetic_dir else paths.cache_dir() / "bench" / "sizes"
    rows = []
    log(f"stmedfm bench --sizes {', '.join(map(str, sizes))} (scale {scale:g}) on {mach}; {workers} workers")
    for size in sizes:
        path = _sized_file(directory, size, scale)
        gib = path.stat().st_size / 2**30
        t0 = time.perf_counter()
        D.load_task("pathmnist", size=size, data_dir=directory)  # verify and extract once, outside the measure
        D.release_cache()
        log(f"{path.name}: {gib:.2f} GiB, verified and extracted in {time.perf_counter() - t0:.1f} s; study ...")
        over = {**SIZE_STUDY, "data_dir": str(directory), "image_size": size, "precision": precision}
        res = _measure({"what": "protocol", "kind": "ours", "params": None, "overrides": over, "workers": workers})
        log(f"  {res['seconds']:.1f} s for {res['runs']} runs, {res['run_seconds']:.1f} s per run, "
            f"peak RSS {res['peak_rss'] / 2**30:.2f} GiB ({res['rss_method']})")
        what = f"pathmnist_{size} ({'full size' if scale == 1.0 else f'scale {scale:g}'}, {gib:.1f} GiB file)"
        tail = f"reduced-budget study, {workers} workers{'' if precision == 'fp32' else ', ' + precision}"
        rows.append(_row(f"peak RSS, {what}, {tail}", res["peak_rss"] / 2**20, None, "MiB", mach))
        rows.append(_row(f"seconds per run, {what}, {tail}", res["run_seconds"], None, "s", mach))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    merge_rows(out, frame)
    log(format_table(frame))
    log(f"merged into: {out}")
    return frame


def run_scaling_bench(vstudy, params: str | None = None, seeds: int = 2, data_dir: str | os.PathLike | None = None,
                      rounds: int = 2, out: str | os.PathLike | None = None, log=print) -> pd.DataFrame:
    """``stmedfm bench --scaling``: a study (default params/smoke.yaml, ``seeds`` seeds) on a Dask LocalCluster of 1
    and 2 workers, interleaved, the fastest of ``rounds`` kept; then the model of :mod:`stmedfm.run.scaling`, its
    serial seconds fitted at 1 worker, checked against the 2-worker measure and projected to many workers; and
    the variants of ``vstudy`` (the command line: params/beyond_smoke.yaml, 2 workers; loaded there, so the
    benchmark's measure processes never import the plotting of :mod:`stmedfm.analysis.variants`) on one warm local pool
    vs a pool per variant."""
    _, mach, out, load = _begin(" --scaling", False, 2, out, log)
    params = params or str(paths.params_dir() / "smoke.yaml")
    cfg = StudyConfig.load(params, {"seeds": seeds, **({"data_dir": str(data_dir)} if data_dir else {})})
    preflight(cfg)
    name = f"{Path(params).name}, {seeds} seeds"
    with tempfile.TemporaryDirectory(prefix="stmedfm-bench-") as tmp:
        got = scaling.measure(cfg, (1, 2), rounds, tmp, log)
        (one, store), (two, _) = min(got[1], key=lambda x: x[0]), min(got[2], key=lambda x: x[0])
        serial = scaling.serial_seconds(store, one)
        table = scaling.projection(store, serial)
        knee = scaling.saturation(store, serial)
    two_model = float(table.loc[table["workers"] == 2, "projected_s"].iloc[0])
    rows = [_row(f"wall time, {name}, Dask 2 workers vs 1", two, one, "s", mach),
            _row(f"wall time, {name}, Dask 2 workers: model vs measured", two_model, two, "s", mach)]
    rows += [_row(f"wall time, {name}, projected at {r.workers} workers vs 1", r.projected_s,
                  table["projected_s"].iloc[0], "s", mach) for r in table.itertuples() if r.workers > 2]
    rows.append(_row(f"workers past which {name} stops scaling (within 5 % of its critical path)", knee, None,
                     "workers", mach))
    try:
        preflight(next(iter(vstudy.configs.values())))
    except StmedfmError:
        log(f"{vstudy.name}: its real files are not here ($STMEDFM_DATA); warm pool not measured")
    else:
        got = scaling.warm_vs_cold(vstudy, 2, rounds, log)
        rows.append(_row(f"wall time, {vstudy.name} ({len(vstudy.configs)} variants), 2 workers: one warm pool "
                         f"vs a pool per variant", min(got["warm"]), min(got["cold"]), "s", mach))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    merge_rows(out, frame)
    if load is not None:
        log(f"load average at start / end: {load:.2f} / {_load():.2f}")
    log(format_table(frame))
    log(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    log(f"merged into: {out}")
    return frame


def format_table(frame: pd.DataFrame) -> str:
    """The table as printed: ratio = ours / baseline, and which side is faster (or leaner) by how much."""
    lines = [f"machine: {frame['machine'].iloc[0]}" if len(frame) else ""]
    head = f"{'measure':<62} {'ours':>10} {'baseline':>10} {'ratio':>7}  unit        "
    lines += [head, "-" * len(head)]
    for r in frame.itertuples(index=False):
        base = "" if np.isnan(r.baseline) else f"{r.baseline:10.1f}"
        ratio = "" if np.isnan(r.ratio) else f"{r.ratio:7.2f}"
        better = ""
        if not np.isnan(r.ratio) and r.ratio > 0 and r.unit in ("samples/s", "s", "MiB"):
            gain = r.ratio if r.unit == "samples/s" else 1 / r.ratio
            better = f"{gain:.2f}x {'faster' if r.unit != 'MiB' else 'less'}" if gain >= 1 else \
                f"{1 / gain:.2f}x {'slower' if r.unit != 'MiB' else 'more'}"
        lines.append(f"{r.measure:<62} {r.ours:10.1f} {base:>10} {ratio:>7}  {r.unit:<10}  {better}")
    return "\n".join(lines)


if __name__ == "__main__":  # one measure in a fresh process: python -m stmedfm.run.bench PAYLOAD_JSON OUT_JSON
    result = _child_main(json.loads(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(result))
