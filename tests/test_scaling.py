"""Issue 30: wall time vs workers, projected from a store's measured seconds by replaying the scheduler."""

import pandas as pd
import pytest
import torch

from stmedfm.run import scaling
from stmedfm.cli import main
from stmedfm.core.errors import StmedfmError

#: A pretraining job P (2 s) unblocking runs a (3 s) and b (1 s); a scratch run s (4 s).
GRAPH = [("P", 2.0, 100.0, ()), ("a", 3.0, 3.0, ("P",)), ("b", 1.0, 1.0, ("P",)), ("s", 4.0, 4.0, ())]


def test_simulate_follows_the_schedulers_policy():
    assert scaling.simulate(GRAPH, 1) == 10.0  # all the work, one after another
    # two workers: P and s start; at 2 s P is done and a (the longer) starts, then b when s frees its worker at 4 s
    assert scaling.simulate(GRAPH, 2) == 5.0
    assert scaling.simulate(GRAPH, 100) == 5.0  # the critical path, P then a


def _store(root, pretrain_seconds=2.0, record=True):
    (root / "checkpoints").mkdir(parents=True)
    rows = [("run-a", 0, "x+y", 3.0), ("run-b", 0, "x+y", 1.0), ("run-s", 0, "", 4.0), ("run-s", 0, "", 4.0)]
    pd.DataFrame(rows, columns=["run_id", "seed", "pretrain", "seconds"]).to_csv(root / "runs.csv", index=False)
    made = {"machine": "m", "seed": 0, "pretrain": "x+y", "seconds": pretrain_seconds} if record else {"machine": "m"}
    torch.save({"job_id": "pretrain-1", "state_dict": {}, "provenance": made}, root / "checkpoints" / "pretrain-1.pt")
    return root


def test_projection_and_saturation_from_a_store(tmp_path):
    store = _store(tmp_path / "s")
    table = scaling.projection(store, serial=1.0, workers=(1, 2, 4))
    assert table["projected_s"].tolist() == [11.0, 6.0, 6.0]  # serial + the schedules above (run-s counted once)
    assert table["speedup"].tolist() == pytest.approx([1.0, 11 / 6, 11 / 6])
    assert table["critical_path_s"].tolist() == [6.0] * 3
    assert scaling.saturation(store, serial=1.0) == 2
    assert scaling.serial_seconds(store, wall_one_worker=12.5) == 2.5


def test_a_store_without_pretraining_seconds_needs_an_estimate(tmp_path, capsys):
    store = _store(tmp_path / "old", record=False)
    with pytest.raises(StmedfmError, match="no pretraining seconds for 1 job"):
        scaling.projection(store)
    assert scaling.projection(store, pretrain_seconds=2.0, workers=(2,))["projected_s"].tolist() == [5.0]
    assert main(["bench", "--project", str(store)]) == 2
    assert "--pretrain-seconds" in capsys.readouterr().err
    assert main(["bench", "--project", str(store), "--pretrain-seconds", "2"]) == 0
    assert "stops scaling past 2 workers" in capsys.readouterr().out


@pytest.mark.slow
def test_a_study_records_what_the_projection_needs(tiny_store):
    """A real store: every checkpoint records its pretraining seconds, so its projection needs no estimate."""
    table = scaling.projection(tiny_store.root, workers=(1, 2))
    runs = pd.read_csv(tiny_store.root / "runs.csv").drop_duplicates("run_id")
    assert table["projected_s"].iloc[0] > runs["seconds"].sum() > 0
    assert table["projected_s"].iloc[1] <= table["projected_s"].iloc[0]
