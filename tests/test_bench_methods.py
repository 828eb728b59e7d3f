"""stmedfm bench --methods (stmedfm.run.bench_methods): each strategy's training run in its own process, its seconds
and the peak memory it adds, measured with the kernel's resident-set high-water mark."""

from __future__ import annotations

import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stmedfm.run import bench_methods

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_the_high_water_mark_resets_and_sees_a_new_allocation():
    big = np.ones(64 * 2**20 // 8)  # 64 MiB, touched: a high-water mark from before the reset
    del big
    assert bench_methods._reset_high_water_mark()
    before = bench_methods._status_kib("VmRSS")
    hwm0 = bench_methods._status_kib("VmHWM")
    assert hwm0 - before < 8 * 1024  # the old 64 MiB peak is forgotten
    # 32 MiB of fresh pages (an anonymous mapping: malloc could hand back pages this process already holds, which
    # would not raise the resident set; that is why the test maps its own)
    block = mmap.mmap(-1, 32 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    peak = bench_methods._status_kib("VmHWM") - before
    assert 30 * 1024 <= peak <= 40 * 1024, peak
    block.close()


@pytest.mark.slow
def test_the_cli_measures_every_strategy_in_its_own_process(synthetic_dir, tmp_path):
    out = tmp_path / "bench_methods.csv"
    params = ROOT / "params" / "smoke.yaml"
    proc = subprocess.run([sys.executable, "-m", "stmedfm", "bench", "--methods", str(params), "--task", "bloodmnist",
                           "--rounds", "1", "--out", str(out), "--data-dir", str(synthetic_dir)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == bench_methods.COLUMNS
    from stmedfm.core.config import StudyConfig

    cfg = StudyConfig.load(params)
    assert table["strategy"].tolist() == list(cfg.strategies)
    assert (table["task"] == "bloodmnist").all() and (table["train_seconds"] > 0).all()
    assert (table["peak_train_mib"] >= 0).all() and table["memory_method"].str.startswith("VmHWM").all()
    # the counts are those of the built model, the same the study records for these runs
    counts = dict(zip(table["strategy"], table["trainable_params"]))
    assert counts["full"] > counts["lora"] > counts["linear_probe"] > 0
    assert "wrote" in proc.stdout and "Traceback" not in proc.stderr
