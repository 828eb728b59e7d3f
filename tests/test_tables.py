"""Table arithmetic: the t-interval, the join with the paper's numbers, the markdown layout."""

import math

import pandas as pd
import pytest

from stmedfm.analysis.tables import ci95, format_markdown, summarise, with_paper


def test_ci95_is_the_t_interval_half_width():
    # mean 2, sample sd 1, n = 3: t(0.975, 2) = 4.302653 -> 4.302653 / sqrt(3) = 2.484138
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(ci95([0.5]))


def test_summarise_groups_over_seeds():
    frame = pd.DataFrame({"task": ["a"] * 3 + ["b"] * 2, "seed": [0, 1, 2, 0, 1], "value": [1, 2, 3, 5, 5]})
    out = summarise(frame, ["task"]).set_index("task")
    assert out.loc["a", "mean"] == 2 and out.loc["a", "n"] == 3
    assert out.loc["b", "ci95"] == 0


def test_paper_value_and_delta_only_where_the_flag_is_the_papers():
    ours = pd.DataFrame({"task": ["bloodmnist", "retinamnist"], "strategy": ["full", "full"],
                         "mean": [0.950, 0.7], "ci95": [0.01, 0.02], "n": [5, 5]})
    out = with_paper(ours, "table7_auroc", "macro_auroc")
    assert out.loc[0, "paper"] == 0.954 and out.loc[0, "delta"] == pytest.approx(-0.004)
    assert pd.isna(out.loc[1, "paper"]) and pd.isna(out.loc[1, "delta"])
    text = format_markdown(out)
    assert "| bloodmnist | full | 0.950 ± 0.010 (0.954) | -0.004 | 5 |" in text
    assert "| retinamnist | full | 0.700 ± 0.020 |  | 5 |" in text
