"""Paired statistics on hand-made numbers: Holm, Wilcoxon floors, rank-biserial, t-interval, compare()."""

import math

import numpy as np
import pandas as pd
import pytest

from stmedfm.core import stats


def test_holm_by_hand():
    # m = 4 sorted: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06 (monotone), 0.5*1 = 0.5; back in input order
    adjusted = stats.holm([0.03, 0.01, 0.5, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.04, 0.5, 0.06])
    # step-down monotonicity and the cap at 1; NaN is neither counted in m nor adjusted
    np.testing.assert_allclose(stats.holm([0.4, 0.3, np.nan]), [0.6, 0.6, np.nan])
    assert stats.holm([0.9, 0.8])[0] == 1.0
    assert np.isnan(stats.holm([np.nan])).all()


def test_wilcoxon_floor_with_five_pairs():
    a = [0.80, 0.82, 0.79, 0.85, 0.81]
    b = [0.70, 0.75, 0.74, 0.71, 0.80]  # every pair favours a, distinct |d|
    res = stats.paired_test(a, b)
    assert res["n"] == 5 and (res["n_pos"], res["n_neg"], res["n_zero"]) == (5, 0, 0)
    assert res["p_two_sided"] == pytest.approx(0.0625)  # 2 / 2**5: the smallest two-sided p with 5 pairs
    assert res["p_greater"] == pytest.approx(0.03125)  # 1 / 2**5
    assert stats.min_two_sided_p(5) == 0.0625 and stats.min_two_sided_p(9) == pytest.approx(2 / 512)
    assert res["rank_biserial"] == 1.0


def test_rank_biserial_by_hand():
    # d = [+1, -2, +3, +4]: ranks of |d| 1, 2, 3, 4; R+ = 1 + 3 + 4 = 8, R- = 2; r = (8 - 2) / 10 = 0.6
    assert stats.rank_biserial([1, -2, 3, 4]) == pytest.approx(0.6)
    # zeros are dropped; ties get average ranks: d = [0, 1, -1, 2] -> ranks 1.5, 1.5, 3; r = (4.5 - 1.5) / 6
    assert stats.rank_biserial([0, 1, -1, 2]) == pytest.approx(0.5)
    assert math.isnan(stats.rank_biserial([0, 0]))


def test_mean_ci_and_mean_difference_by_hand():
    # d = [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653
    mean, lo, hi = stats.mean_ci([1, 2, 3])
    assert mean == 2 and hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and lo == pytest.approx(4 - hi)
    res = stats.paired_test([2, 4, 6], [1, 2, 3])
    assert (res["mean_diff"], res["ci_high"]) == (2, pytest.approx(hi))
    same = stats.paired_test([1, 2], [1, 2])
    assert same["p_two_sided"] == 1.0 and same["n_zero"] == 2 and math.isnan(same["rank_biserial"])


def test_compare_pairs_on_keys_and_holm_adjusts_the_family():
    rows = []
    for seed in range(5):
        rows += [{"strategy": "scratch", "seed": seed, "value": 0.70 + 0.01 * seed},
                 {"strategy": "full", "seed": seed, "value": 0.80 + 0.02 * seed},  # d = 0.10 + 0.01 seed > 0
                 {"strategy": "lora", "seed": seed, "value": 0.70 + 0.01 * seed + (0.01 if seed % 2 else -0.02)}]
    rows.append({"strategy": "full", "seed": 9, "value": 0.0})  # no scratch partner: not counted
    frame = pd.DataFrame(rows)
    out = stats.compare(frame, [({"strategy": "full"}, {"strategy": "scratch"}),
                                ({"strategy": "lora"}, {"strategy": "scratch"})], pair_on=["seed"], family="demo")
    full, lora = out.iloc[0], out.iloc[1]
    assert full["label"] == "full vs scratch" and full["n"] == 5 and full["n_pos"] == 5
    assert full["mean_diff"] == pytest.approx(0.12)
    assert (lora["n_pos"], lora["n_neg"]) == (2, 3) and lora["mean_diff"] == pytest.approx(-0.008)
    np.testing.assert_allclose(out["p_holm"], stats.holm(out["p_two_sided"]))
    assert full["p_holm"] == pytest.approx(0.125)  # 2 tests: 2 * 0.0625
    assert (out["p_floor"] == 0.0625).all() and (out["family"] == "demo").all()


# TOST (issue 28): paired differences d = a - b = [0.005, 0, -0.01, 0.01, 0.005]: mean 0.002, squared deviations
# 9 + 4 + 144 + 64 + 9 = 230 (x 1e-6), sd = sqrt(230e-6 / 4) = 0.0075829, se = sd / sqrt(5) = 0.0033912.
# Margin 0.01: t_low = (0.002 + 0.01) / se = 3.5386, t_up = (0.002 - 0.01) / se = -2.3591, 4 df;
# p = max(P(T > 3.5386), P(T < -2.3591)) = the upper test's.
TOST_A = [0.710, 0.720, 0.700, 0.730, 0.715]
TOST_B = [0.705, 0.720, 0.710, 0.720, 0.710]


def test_tost_by_hand():
    from scipy import stats as st

    se = math.sqrt(230e-6 / 4) / math.sqrt(5)
    p_low, p_up = st.t.sf((0.002 + 0.01) / se, 4), st.t.cdf((0.002 - 0.01) / se, 4)
    assert p_up > p_low
    assert stats.tost(TOST_A, TOST_B, 0.01) == pytest.approx(p_up, rel=1e-9)
    assert stats.tost(TOST_A, TOST_B, 0.01) == pytest.approx(0.038871, abs=1e-6)
    # a wider margin makes equivalence easier to show; the 90 % CI [mean ± t(0.95, 4) se] decides it
    half = st.t.ppf(0.95, 4) * se
    assert (stats.tost(TOST_A, TOST_B, 0.002 + half + 1e-6) < 0.05) and (stats.tost(TOST_A, TOST_B, 0.002 + half - 1e-6) > 0.05)
    # constant differences: inside the margin or not; fewer than two pairs: undefined
    assert stats.tost([0.5, 0.6], [0.495, 0.595], 0.01) == 0.0
    assert stats.tost([0.5, 0.6], [0.48, 0.58], 0.01) == 1.0
    assert math.isnan(stats.tost([0.5], [0.5], 0.01))


def test_compare_adds_tost_with_holm_within_the_family():
    rows = [{"strategy": s, "seed": i, "value": v} for s, values in
            (("a", TOST_A), ("b", TOST_B), ("c", [v + 0.05 for v in TOST_B])) for i, v in enumerate(values)]
    out = stats.compare(pd.DataFrame(rows), [({"strategy": "a"}, {"strategy": "b"}),
                                             ({"strategy": "c"}, {"strategy": "b"})], pair_on=["seed"], margin=0.01)
    p_ab = stats.tost(TOST_A, TOST_B, 0.01)
    assert out["p_tost"].tolist() == [pytest.approx(p_ab), 1.0]  # c - b = +0.05 on every seed: outside the margin
    # Holm over m = 2: the smaller p doubled, the larger kept (and never below the smaller's adjusted value)
    assert out["p_tost_holm"].tolist() == [pytest.approx(2 * p_ab), 1.0]
    assert out["equivalent"].tolist() == [False, False] and (out["margin"] == 0.01).all()
    alone = stats.compare(pd.DataFrame(rows), [({"strategy": "a"}, {"strategy": "b"})], pair_on=["seed"], margin=0.01)
    assert alone["equivalent"].tolist() == [True]  # one comparison: p 0.039 < 0.05
    assert "p_tost" not in stats.compare(pd.DataFrame(rows), [({"strategy": "a"}, {"strategy": "b"})], ["seed"])


def test_a_claim_of_no_difference_needs_tost_to_hold_and_a_clear_difference_to_fail():
    from stmedfm.core.stats import equivalence_verdict

    assert equivalence_verdict(0.01, 0.9, -0.004, 0.005, 0.01) == "supported"
    # significant and wholly outside the margin: contradicted
    assert equivalence_verdict(1.0, 0.01, -0.063, -0.029, 0.01) == "contradicted"
    # significant but the interval reaches into the margin: a small difference, not shown to matter
    assert equivalence_verdict(1.0, 0.01, -0.02, -0.004, 0.01) == "inconclusive"
    # not significant, not equivalent: nothing is shown either way
    assert equivalence_verdict(0.3, 0.5, -0.03, 0.02, 0.01) == "inconclusive"
    assert equivalence_verdict(float("nan"), float("nan"), float("nan"), float("nan"), 0.01) == "inconclusive"
