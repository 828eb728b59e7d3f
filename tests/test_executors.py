"""Executors: the task graph scheduler, the executor choice, and a study on a Dask LocalCluster giving the same
rows as the local process pool."""

import sys

import pandas as pd
import pytest

from stmedfm.run import executors as E
from stmedfm.core.errors import StmedfmError
from stmedfm.run.store import ResultStore
from stmedfm.run.study import run_study


#: Every experiment of the protocol (2D and 3D, pretrained and scratch) with budgets of a few steps, two seeds
#: (changes to the tiny config).
EVERY_EXPERIMENT = dict(
    seeds=[0, 1], pretrain_tasks=["bloodmnist", "organmnist3d"], pretrain_steps=3,
    downstream_tasks=["bloodmnist", "organmnist3d"], strategies=["scratch", "full", "lora"], scratch_steps_2d=2,
    scratch_steps_3d=2, finetune_steps_2d=2, finetune_steps_3d=2, fewshot_tasks={"organmnist3d": 2}, fewshot_k=[1],
    fewshot_splits=1, fewshot_strategies=["full", "adapter"], leave_out_tasks=["organmnist3d"],
    leave_out_strategies=["lora"], calibration_task="bloodmnist")


def sorted_metrics(store) -> pd.DataFrame:
    m = store.table("metrics")
    return m.sort_values(["run_id", "experiment", "variant", "metric"]).reset_index(drop=True)


# --- the scheduler -------------------------------------------------------------------------------------------------
def _echo(x):
    return x


def _fail(x):
    raise ValueError(f"task {x} failed")


def test_run_tasks_respects_dependencies_and_priorities():
    done = []
    tasks = [
        E.Task("run-a", _echo, lambda: ("a",), priority=5, after=("pre",)),
        E.Task("scratch-small", _echo, ("s1",), priority=1),
        E.Task("scratch-big", _echo, ("s2",), priority=9),
        E.Task("pre", _echo, ("p",), priority=100),
        E.Task("run-b", _echo, lambda: ("b",), priority=7, after=("pre",)),
    ]
    with E.InlineExecutor() as ex:
        E.run_tasks(ex, tasks, lambda task, result: done.append(result))
    # pretraining first (it unblocks runs); then whatever is ready, by priority: its runs outrank the small one
    assert done == ["p", "s2", "b", "a", "s1"]


def test_run_tasks_raises_the_first_failure_and_stops():
    done = []
    tasks = [E.Task("ok", _echo, (1,), priority=2), E.Task("bad", _fail, (2,), priority=1),
             E.Task("after", _echo, (3,), priority=0, after=("bad",))]
    with E.InlineExecutor() as ex, pytest.raises(ValueError, match="task 2 failed"):
        E.run_tasks(ex, tasks, lambda task, result: done.append(result))
    assert done == [1]


def test_unknown_dependency_is_an_error():
    with E.InlineExecutor() as ex, pytest.raises(ValueError, match="unknown keys"):
        E.run_tasks(ex, [E.Task("a", _echo, (1,), after=("nope",))], lambda t, r: None)


def test_scheduler_choice(monkeypatch):
    monkeypatch.delenv(E.ENV_SCHEDULER, raising=False)
    assert E.resolve_scheduler(None) is None
    assert E.resolve_scheduler("local") is None
    monkeypatch.setenv(E.ENV_SCHEDULER, "tcp://10.1.2.3:8786")
    assert E.resolve_scheduler(None) == "tcp://10.1.2.3:8786"
    assert E.resolve_scheduler("local") is None  # 'local' wins over the environment
    assert E.resolve_scheduler("tcp://other:1") == "tcp://other:1"
    monkeypatch.delenv(E.ENV_SCHEDULER)
    with E.make_executor(4, n_tasks=1) as ex:
        assert isinstance(ex, E.InlineExecutor)  # one task: no pool to start


def test_missing_distributed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(StmedfmError, match=r"stmedfm\[dask\]"):
        E.make_executor(2, scheduler="tcp://127.0.0.1:8786")


# --- a study on a Dask cluster ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dask_cluster_gives_the_same_rows_as_the_local_pool(make_config, tmp_path):
    distributed = pytest.importorskip("distributed")
    cfg = make_config(EVERY_EXPERIMENT)
    pool = run_study(cfg, out=tmp_path / "pool", progress=False, workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        dask = run_study(cfg, out=tmp_path / "dask", progress=False, scheduler=client)
        assert client.status == "running"  # a Client passed in is the caller's: left open
    pd.testing.assert_frame_equal(sorted_metrics(pool), sorted_metrics(dask), check_exact=True)
    pd.testing.assert_frame_equal(pool.table("pretrain_loss"), dask.table("pretrain_loss"), check_exact=True)
    assert len(pool.table("runs")) == len(dask.table("runs")) > 0
    # the client wrote every checkpoint and run; a rerun on the cluster's absence resumes from them
    ckpts = sorted(p.name for p in (tmp_path / "dask" / "checkpoints").glob("*.pt"))
    assert ckpts == sorted(p.name for p in (tmp_path / "pool" / "checkpoints").glob("*.pt")) and len(ckpts) == 4
    again = run_study(cfg, out=tmp_path / "dask", progress=False, workers=1)
    pd.testing.assert_frame_equal(sorted_metrics(again), sorted_metrics(dask))


@pytest.mark.slow
def test_resumed_runs_take_checkpoints_from_the_store(make_config, tmp_path):
    """Runs of a checkpoint written by an earlier study read it from the store (no pretraining again)."""
    cfg = make_config(EVERY_EXPERIMENT, seeds=[0], strategies=["full"], fewshot_tasks={}, leave_out_tasks=[],
                      calibration_task=None)
    first = run_study(cfg.replace(strategies=["scratch"]), out=tmp_path / "s", progress=False, workers=1)
    assert not list((first.root / "checkpoints").glob("*.pt"))
    run_study(cfg, out=tmp_path / "s", progress=False, workers=1)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "checkpoints").glob("*.pt")}
    assert len(mtimes) == 1
    store = run_study(cfg.replace(strategies=["full", "lora"]), out=tmp_path / "s", progress=False, workers=1)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # reused, not rewritten
    assert set(store.table("runs")["strategy"]) == {"full", "lora"}
    assert isinstance(store, ResultStore)


# --- issue 30: addresses checked before connecting; one executor for several studies --------------------------
@pytest.mark.parametrize("address, message", [
    ("notaurl", "'notaurl' is not a Dask scheduler address (missing port number"),
    ("http://127.0.0.1:8786", "'http://127.0.0.1:8786' is not a Dask scheduler address"),
    ("tcp://127.0.0.1:0", "is not a Dask scheduler address"),
    ("tcp://127.0.0.1:1", "Cannot reach the Dask scheduler at 'tcp://127.0.0.1:1' (Connection refused)"),
])
def test_a_bad_address_is_refused_at_once(address, message):
    pytest.importorskip("distributed")
    with pytest.raises(StmedfmError) as err:
        E.check_scheduler(address)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reusable_is_a_pool_only_when_one_is_wanted(monkeypatch):
    monkeypatch.delenv(E.ENV_SCHEDULER, raising=False)
    with E.reusable(1) as none:
        assert none is None  # one worker: each study runs in-process anyway
    with E.reusable(2, "local") as pool:
        assert isinstance(pool, E.PoolExecutor) and pool.workers == 2
        assert E.make_executor(8, pool) is pool  # a study given an executor uses it


@pytest.mark.slow
def test_one_warm_pool_serves_several_studies_and_stays_open(make_config, tmp_path, monkeypatch):
    started = []
    original = E.PoolExecutor.__init__

    def counted(self, workers):
        started.append(workers)
        original(self, workers)

    monkeypatch.setattr(E.PoolExecutor, "__init__", counted)
    cfg = make_config(workers=2)
    with E.reusable(2) as pool:
        first = run_study(cfg, out=tmp_path / "a", progress=False, scheduler=pool)
        second = run_study(cfg.replace(strategies=["scratch"]), out=tmp_path / "b", progress=False, scheduler=pool)
        assert pool.submit(_echo, 3).result() == 3  # still open after both studies
    assert started == [2]
    alone = run_study(cfg, out=tmp_path / "c", progress=False, workers=1)
    pd.testing.assert_frame_equal(sorted_metrics(first), sorted_metrics(alone), check_exact=True)
    assert set(second.table("runs")["strategy"]) == {"scratch"}
