"""Where a study's tasks run: one interface over the process itself, a local process pool and a Dask cluster.

A study is a small graph of tasks: pretraining jobs, and downstream runs of which most need one pretrained
checkpoint. :func:`run_tasks` submits a task as soon as its dependencies are done, highest priority first, and
keeps each executor exactly as busy as it can be (``Executor.slots`` tasks in flight), so scratch runs train
while pretraining goes and the runs of a checkpoint start the moment it exists. Results come back to the
calling (client) process, which hands each one to a callback; that process is the only writer of the result
store.

Executors (pick one with :func:`make_executor`):

* :class:`InlineExecutor` runs every task in this process, one at a time, with one torch thread (``workers=1``);
* :class:`PoolExecutor` is a local ``spawn`` process pool, one torch thread per worker (the default:
  ``workers`` = CPU cores);
* :class:`DaskExecutor` submits to a ``dask.distributed`` cluster, given its scheduler address (``--scheduler``,
  ``$DASK_SCHEDULER_ADDRESS``) or a ``distributed.Client``. Dask is an optional extra (``pip install
  'stmedfm[dask]'``) and is imported only here, only when asked for.

Every task is a pure function of its arguments (see :mod:`stmedfm.run.train`), so the executor changes the wall
time and never a number: the same seed gives bit-identical metrics inline, on a pool of any size or on a cluster.
Workers never touch the result store. Large values shared by many tasks (a pretrained checkpoint, as bytes) go
through :meth:`Executor.share`, which a cluster turns into one scattered object instead of one copy per task (and
scatters again from the client when a worker that held it is lost).

:func:`connect` opens a cluster before the command line claims a result folder (a bad address is one line and
leaves nothing); :func:`reusable` keeps one executor (a warm local pool, or a cluster connection) for several
studies run from one process; a study given an :class:`Executor` as its scheduler uses it and leaves it open.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import heapq
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from stmedfm import __version__
from stmedfm.core.errors import StmedfmError
from stmedfm.core.scheduler import (CLIENT_TIMEOUT, CONNECT_TIMEOUT, ENV_SCHEDULER, LOCAL, check_scheduler,
                               import_distributed, resolve_scheduler)


__all__ = ["Task", "Executor", "InlineExecutor", "PoolExecutor", "DaskExecutor", "make_executor",
           "resolve_scheduler", "run_tasks", "executor_for", "prepare_worker", "tune_allocator",
           "restore_allocator", "trim_allocator", "single_thread", "check_scheduler", "connect", "reusable",
           "ClusterWarning", "ENV_SCHEDULER", "LOCAL"]


# --- worker processes -------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
# glibc adapts its thresholds to the blocks a program frees, up to 32 MiB (mmap) and 64 MiB (trim); once set by
# mallopt they stay fixed, so "restoring" sets them to where that adaptation ends up for a numerical program
_RESTORED_MMAP, _RESTORED_TRIM = 32 << 20, 64 << 20
_lock = threading.Lock()
_tuned = 0  # tasks currently running with the tuned allocator in this process (Dask workers run several)


def _mallopt(mmap_threshold: int, trim_threshold: int, trim: bool = False) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        if trim:
            libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the defaults
        pass


def tune_allocator() -> None:
    """Keep freed large blocks in the heap for reuse (glibc; a no-op elsewhere). Numbers do not change.

    By default glibc hands every block above 32 MiB back to the kernel on ``free`` and maps it again on the next
    ``malloc``, so each 3D evaluation batch (32 x 16 x 28^3 float activations = 45 MiB per layer) costs thousands
    of fresh page faults: evaluation ran about 2x slower for it (see docs/performance.md). Raising the mmap and
    trim thresholds lets the heap reuse those blocks; peak memory stays what the largest batch needs.
    """
    _mallopt(1 << 30, 1 << 30)


def restore_allocator() -> None:
    """Thresholds back to where glibc's own adaptation settles (32 / 64 MiB), and kept memory returned."""
    _mallopt(_RESTORED_MMAP, _RESTORED_TRIM, trim=True)


def trim_allocator() -> None:
    """Return the free pages the tuned heap keeps to the system (between tasks: a task reuses its own blocks,
    the next one faults them in once; this keeps a worker's memory at what its current task needs)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def prepare_worker() -> None:
    """For a process that only runs study tasks: one torch thread (what makes results independent of the worker
    count) and the tuned allocator, for its whole life."""
    torch.set_num_threads(1)
    tune_allocator()


_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


@contextlib.contextmanager
def single_thread():
    """Run the block with one torch thread, as every worker runs its tasks: reductions then add in the same order,
    so a run recomputed here (e.g. by :func:`stmedfm.run.inference.load_model`) gives the worker's very floats."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pool_worker_init(client_pid: int) -> None:
    """A pool worker dies with its client: the kernel sends it SIGKILL when the client process ends, however it
    ends (SIGKILL included), so no worker (about 0.7 GB each) outlives a killed study. Linux only; elsewhere the
    pool's own shutdown is what stops workers."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != client_pid:  # the client died before the signal was armed
            os._exit(1)
    prepare_worker()


def _pool_call(fn: Callable, *args):
    """A task in a pool worker (or in this process): the task, then the kept free memory back to the system."""
    try:
        return fn(*args)
    finally:
        trim_allocator()


def _dask_call(fn: Callable, *args):
    """A task on a Dask worker, which may serve other work too: one torch thread, and the tuned allocator only
    while study tasks run on it."""
    global _tuned
    torch.set_num_threads(1)
    with _lock:
        _tuned += 1
        if _tuned == 1:
            tune_allocator()
    try:
        return fn(*args)
    finally:
        with _lock:
            _tuned -= 1
            if _tuned == 0:
                restore_allocator()  # and trims


# --- the interface --------------------------------------------------------------------------------------------------
class Executor:
    """Runs ``fn(*args)`` somewhere and gives back futures with ``result()``; used as a context manager."""

    name = "executor"

    @property
    def slots(self) -> int:
        """How many tasks to keep in flight: enough that no worker waits for the client."""
        raise NotImplementedError

    def submit(self, fn: Callable, *args, priority: float = 0.0):
        raise NotImplementedError

    def wait_any(self, futures: Iterable) -> set:
        """Block until at least one of ``futures`` is done; return the done ones."""
        raise NotImplementedError

    def share(self, obj: Any) -> Any:
        """A handle to pass as a task argument in place of ``obj`` when many tasks need the same large value."""
        return obj

    def release(self, handle: Any) -> None:
        """The handle from :meth:`share` is no longer needed."""

    def cancel(self, futures: Iterable) -> None:
        for fut in futures:
            fut.cancel()

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass

    def abort(self) -> None:
        """Stop without waiting for running tasks (after an interruption or error); by default :meth:`close`."""
        self.close()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """Closed after the block; aborted when the block raised (an error, Ctrl-C), so no running task is awaited."""
        if exc_type is None:
            self.close()
        else:
            self.abort()


class InlineExecutor(Executor):
    """Every task in this process, at submission, one at a time, with one torch thread (restored afterwards)."""

    name = "in-process"

    def __init__(self) -> None:
        self._threads = torch.get_num_threads()
        prepare_worker()

    @property
    def slots(self) -> int:
        return 1

    def submit(self, fn: Callable, *args, priority: float = 0.0) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(_pool_call(fn, *args))
        except Exception as exc:  # KeyboardInterrupt and SystemExit propagate at once
            fut.set_exception(exc)
        return fut

    def wait_any(self, futures: Iterable) -> set:
        return {f for f in futures if f.done()}

    def close(self) -> None:
        torch.set_num_threads(self._threads)
        restore_allocator()


class PoolExecutor(Executor):
    """A local process pool (``spawn``: no state inherited from the client), one torch thread per worker."""

    def __init__(self, workers: int) -> None:
        self.workers = int(workers)
        self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                            initializer=_pool_worker_init, initargs=(os.getpid(),))
        self.name = f"local pool of {self.workers} processes"

    @property
    def slots(self) -> int:
        return self.workers + 1  # one queued behind the running ones hides the client's round trip

    def submit(self, fn: Callable, *args, priority: float = 0.0) -> cf.Future:
        return self._pool.submit(_pool_call, fn, *args)

    def wait_any(self, futures: Iterable) -> set:
        done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
        return done

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop at once (Ctrl-C, an error): running tasks are killed, not awaited; their work is lost, the store
        keeps every finished run, and a rerun resumes."""
        processes = list((getattr(self._pool, "_processes", None) or {}).values())  # no public accessor (< 3.14)
        for proc in processes:
            with contextlib.suppress(OSError):
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _worker_versions() -> dict:
    return {"stmedfm": __version__, "torch": torch.__version__}


#: Further attempts of a task that raised on a worker (a worker that dies while running a task is not counted
#: here: the scheduler moves that task to another worker by itself).
RETRIES = 2
#: Times a task is resubmitted after it was cancelled by a lost input (a checkpoint on a worker that died).
RESUBMITS = 5


class ClusterWarning(UserWarning):
    """The cluster lost a worker and with it an input; the study goes on (the numbers do not change)."""


class _DaskTask:
    """What :func:`run_tasks` holds for a task on a cluster: the call, and its current Dask future, which
    :class:`DaskExecutor` replaces when the task was cancelled because an input it needed was lost."""

    __slots__ = ("fn", "args", "priority", "future", "resubmits")

    def __init__(self, fn: Callable, args: tuple, priority: float) -> None:
        self.fn, self.args, self.priority, self.future, self.resubmits = fn, args, priority, None, 0

    def result(self):
        return self.future.result()

    def cancel(self) -> None:
        self.future.cancel()


class DaskExecutor(Executor):
    """Tasks on a ``dask.distributed`` cluster, from a scheduler address or an existing ``Client``.

    Workers need the same ``stmedfm`` and torch versions as the client (checked when connecting: another torch
    could give other floats) and the data files, found on each worker as on the client (``data_dir``, else
    ``$STMEDFM_DATA``, else ``~/.medmnist``). Nothing is written on the workers' disks except the verification
    cache.

    A lost worker costs only its tasks: the scheduler reruns the task that was running there on another worker,
    a task that raised is retried (:data:`RETRIES`), and a checkpoint scattered to a worker that died is scattered
    again from the client, which keeps every shared value until it is released, and the tasks cancelled with it
    are resubmitted (:data:`RESUBMITS`). Since every task is a pure function of its arguments, a rerun task gives
    the same numbers.
    """

    def __init__(self, scheduler: Any, timeout: float = CONNECT_TIMEOUT) -> None:
        distributed = import_distributed()
        self._distributed = distributed
        if isinstance(scheduler, distributed.Client):
            self.client, self._own = scheduler, False
        else:
            check_scheduler(scheduler, timeout)
            try:
                self.client = distributed.Client(str(scheduler).strip(), timeout=CLIENT_TIMEOUT, set_as_default=False)
            except Exception as exc:  # it answered a moment ago: a failure now is the network or the scheduler
                raise StmedfmError(f"Cannot connect to the Dask scheduler at '{scheduler}' "
                                   f"({type(exc).__name__}: {exc}).") from None
            self._own = True
        self.name = f"Dask cluster at {self.client.scheduler.address}"
        self._slots, self._slots_at = 2, -1e9
        self._shared: dict[str, Any] = {}  # key of a scattered future -> the value, kept to scatter it again
        self._current: dict[str, Any] = {}  # key of a scattered future -> its live replacement (itself at first)
        self._check_workers()

    def _check_workers(self) -> None:
        mine = _worker_versions()
        try:
            theirs = self.client.run(_worker_versions)
        except Exception as exc:  # a worker without stmedfm fails to unpickle the function
            self.close()
            raise StmedfmError(f"The Dask workers cannot import stmedfm ({type(exc).__name__}: {exc}). Install the "
                               f"same stmedfm (and torch) on every worker, e.g. `pip install 'stmedfm[dask]'`.") from exc
        bad = {w: v for w, v in theirs.items() if v != mine}
        if bad:
            self.close()
            raise StmedfmError(f"Dask workers run other versions than this client ({mine}): {bad}. Install the same "
                               f"stmedfm and torch everywhere; another torch can give other numbers.")

    @property
    def slots(self) -> int:
        now = time.monotonic()
        if now - self._slots_at > 2.0:  # asked again every few seconds: a cluster may scale while we run
            self._slots = max(2, 2 * sum(self.client.nthreads().values()))
            self._slots_at = now
        return self._slots

    def _fresh(self, arg: Any) -> Any:
        """A shared handle as it is now: scattered again from the client if the workers lost it."""
        key = getattr(arg, "key", None)
        if not isinstance(arg, self._distributed.Future) or key not in self._current:
            return arg
        live = self._current[key]
        if live.status in ("lost", "cancelled", "error"):
            warnings.warn(f"The Dask workers lost a shared input ({live.status}, with a worker that left); it was "
                          f"scattered again from the client and its tasks resubmitted.", ClusterWarning, stacklevel=2)
            live = self.client.scatter(self._shared[key], hash=False)
            self._current[key] = live
        return live

    def _send(self, task: _DaskTask) -> None:
        args = tuple(self._fresh(a) for a in task.args)
        task.future = self.client.submit(_dask_call, task.fn, *args, pure=False, priority=int(task.priority),
                                         retries=RETRIES)

    def submit(self, fn: Callable, *args, priority: float = 0.0) -> _DaskTask:
        task = _DaskTask(fn, args, priority)
        self._send(task)
        return task

    def wait_any(self, futures: Iterable) -> set:
        tasks = {t.future: t for t in futures}
        while True:
            with self.client.as_current():  # distributed.wait finds its client here, not as the process default
                try:
                    done, _ = self._distributed.wait(list(tasks), return_when="FIRST_COMPLETED")
                except self._distributed.client.FuturesCancelledError:
                    done = {f for f in tasks if f.status != "pending"}
            lost = [tasks[f] for f in done if f.status == "cancelled"]
            if len(lost) < len(done):
                return {tasks[f] for f in done if f.status != "cancelled"}
            for task in lost:  # an input it needed was lost with a worker: send it again
                if task.resubmits >= RESUBMITS:
                    raise StmedfmError(f"A task was cancelled {RESUBMITS + 1} times because the Dask workers lost "
                                       f"its inputs; is the cluster losing workers? Rerun to resume.")
                task.resubmits += 1
                del tasks[task.future]
                self._send(task)
                tasks[task.future] = task

    def share(self, obj: Any) -> Any:
        handle = self.client.scatter(obj, hash=False)
        self._shared[handle.key], self._current[handle.key] = obj, handle
        return handle

    def release(self, handle: Any) -> None:
        live = self._current.pop(handle.key, None)
        self._shared.pop(handle.key, None)
        handle.release()
        if live is not None and live is not handle:
            live.release()

    def cancel(self, futures: Iterable) -> None:
        for task in futures:
            task.cancel()

    def describe(self) -> str:
        n = len(self.client.nthreads())
        return f"{self.name} ({n} workers, {sum(self.client.nthreads().values())} threads)"

    def close(self) -> None:
        if self._own:
            self.client.close()


def make_executor(workers: int, scheduler: Any = None, n_tasks: int | None = None) -> Executor:
    """A Dask executor when a scheduler is given (address, Client, or $DASK_SCHEDULER_ADDRESS), else a local
    pool of ``workers`` processes, else (one worker or one task) this process."""
    scheduler = resolve_scheduler(scheduler)
    if isinstance(scheduler, Executor):
        return scheduler
    if scheduler is not None:
        return DaskExecutor(scheduler)
    workers = max(1, int(workers))
    if n_tasks is not None:
        workers = min(workers, max(1, n_tasks))
    return InlineExecutor() if workers == 1 else PoolExecutor(workers)


# --- scheduling ---------------------------------------------------------------------------------------------------
@dataclass
class Task:
    """One unit of work. ``args`` may be a callable, evaluated on the client once ``after`` are all done (so a
    run can take the checkpoint its pretraining job just produced). Higher ``priority`` starts first."""

    key: str
    fn: Callable
    args: tuple | Callable[[], tuple]
    priority: float = 0.0
    after: tuple[str, ...] = ()
    payload: Any = field(default=None, compare=False)  #: anything the caller wants back with the result


def run_tasks(executor: Executor, tasks: list[Task], on_result: Callable[[Task, Any], None]) -> None:
    """Run every task on ``executor`` respecting ``after``; call ``on_result(task, result)`` on the client as each
    finishes (completion order). A dependent task is submitted only after ``on_result`` of its dependencies
    returned. The first failure cancels what has not started and is raised."""
    by_key = {t.key: t for t in tasks}
    unknown = {d for t in tasks for d in t.after if d not in by_key}
    if unknown:
        raise ValueError(f"tasks depend on unknown keys {sorted(unknown)}")
    waiting_on = {t.key: set(t.after) for t in tasks}
    dependents: dict[str, list[str]] = {}
    for t in tasks:
        for d in t.after:
            dependents.setdefault(d, []).append(t.key)
    order = itertools.count()  # ties: the given order
    ready: list[tuple[float, int, str]] = []

    def make_ready(key: str) -> None:
        heapq.heappush(ready, (-by_key[key].priority, next(order), key))

    for t in tasks:
        if not t.after:
            make_ready(t.key)
    running: dict[Any, Task] = {}
    try:
        while ready or running:
            while ready and len(running) < executor.slots:
                _, _, key = heapq.heappop(ready)
                task = by_key[key]
                args = task.args() if callable(task.args) else task.args
                running[executor.submit(task.fn, *args, priority=task.priority)] = task
            if not running:
                break
            for fut in executor.wait_any(running):
                task = running.pop(fut)
                on_result(task, fut.result())
                for key in dependents.get(task.key, ()):
                    waiting_on[key].discard(task.key)
                    if not waiting_on[key]:
                        make_ready(key)
    except BaseException:
        executor.cancel(list(running))
        raise
    stuck = [k for k, deps in waiting_on.items() if deps]
    if stuck:  # only possible with a dependency cycle
        raise ValueError(f"tasks never became ready (dependency cycle?): {stuck[:5]}")


@contextlib.contextmanager
def executor_for(workers: int, scheduler: Any = None, n_tasks: int | None = None):
    """``with executor_for(...) as ex:`` -- :func:`make_executor` that is closed afterwards (an :class:`Executor`
    passed as ``scheduler`` is the caller's: used, and left open)."""
    if isinstance(scheduler, Executor):
        yield scheduler
        return
    with make_executor(workers, scheduler, n_tasks) as ex:
        yield ex


@contextlib.contextmanager
def connect(scheduler: Any = None):
    """``with connect(address) as ex:`` -- the :class:`DaskExecutor` of a scheduler address (the argument, else
    ``$DASK_SCHEDULER_ADDRESS``), connected and checked now, or None when the study runs locally. The command line
    connects before it claims a result folder, so a bad address costs one line and leaves nothing behind."""
    scheduler = resolve_scheduler(scheduler)
    if scheduler is None or isinstance(scheduler, Executor):
        yield scheduler
        return
    with DaskExecutor(scheduler) as ex:
        yield ex


@contextlib.contextmanager
def reusable(workers: int, scheduler: Any = None):
    """``with reusable(workers, scheduler) as ex:`` -- one executor for several studies run from one process (the
    variants of a variant study), passed to each as its ``scheduler``: a cluster connected once, or one local pool
    whose workers stay warm (torch imported, data files loaded) from one study to the next instead of a pool
    spawned per study. None (each study decides) for one worker, which runs in-process anyway."""
    scheduler = resolve_scheduler(scheduler)
    if scheduler is not None:
        with connect(scheduler) as ex:
            yield ex
        return
    if int(workers) <= 1:
        yield None
        return
    with PoolExecutor(int(workers)) as ex:
        yield ex
