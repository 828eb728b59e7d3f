"""Metrics are checked against hand arithmetic and against independent implementations (sklearn, torchmetrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from stmedfm.core.errors import StmedfmError
from stmedfm.model.metrics import (
    brier,
    classification_metrics,
    confusion,
    ece,
    per_class_report,
    reliability_bins,
)

# Hand case: 4 samples, 3 classes. Top-class confidences 0.6, 0.7, 0.5, 0.55.
# 15 bins of width 1/15 = 0.0667, right-closed (b/15, (b+1)/15]:
#   0.6  = 9/15 exactly -> bin 8  = (8/15, 9/15]  = (0.533, 0.600]
#   0.7  -> 0.7*15 = 10.5 -> bin 10 = (0.667, 0.733]
#   0.5  -> 7.5           -> bin 7  = (0.467, 0.533]
#   0.55 -> 8.25          -> bin 8
Y_HAND = np.array([0, 1, 2, 0])
P_HAND = np.array(
    [
        [0.6, 0.3, 0.1],  # true 0, pred 0, correct, conf 0.6
        [0.2, 0.7, 0.1],  # true 1, pred 1, correct, conf 0.7
        [0.5, 0.2, 0.3],  # true 2, pred 0, wrong,   conf 0.5
        [0.1, 0.55, 0.35],  # true 0, pred 1, wrong,   conf 0.55
    ]
)


def _random_case(seed: int, n: int = 1000, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.7), size=n)
    y = rng.integers(0, c, size=n)
    return y, probs


def test_hand_accuracy_f1_brier_nll():
    m = classification_metrics(Y_HAND, P_HAND)
    # correct: samples 1 and 2 -> 2/4
    assert m["accuracy"] == pytest.approx(0.5)
    # preds [0,1,0,1] vs true [0,1,2,0]
    # class 0: TP=1 FP=1 FN=1 -> P=.5 R=.5 F1=.5 ; class 1: TP=1 FP=1 FN=0 -> P=.5 R=1 F1=2/3
    # class 2: TP=0 -> F1=0 ; macro = (0.5 + 2/3 + 0)/3 = 7/18
    assert m["macro_f1"] == pytest.approx(7 / 18)
    # brier per sample: (.4^2+.3^2+.1^2)=.26 ; (.2^2+.3^2+.1^2)=.14 ; (.5^2+.2^2+.7^2)=.78 ;
    # (.9^2+.55^2+.35^2)=.81+.3025+.1225=1.235 ; mean = 2.415/4 = 0.60375
    assert m["brier"] == pytest.approx(0.60375)
    # nll = -(ln .6 + ln .7 + ln .3 + ln .1)/4
    assert m["nll"] == pytest.approx(-(math.log(0.6) + math.log(0.7) + math.log(0.3) + math.log(0.1)) / 4)
    # macro AUROC from pairs: class 0 pos {.6,.1} neg {.2,.5}: 2/4 ; class 1 pos {.7} neg {.3,.2,.55}: 3/3 ;
    # class 2 pos {.3} neg {.1,.1,.35}: 2/3 ; mean = (1/2 + 1 + 2/3)/3 = 13/18
    assert m["macro_auroc"] == pytest.approx(13 / 18)
    assert set(m) == {"accuracy", "macro_f1", "macro_auroc", "ece", "brier", "nll"}
    assert all(isinstance(v, float) for v in m.values())


def test_hand_ece_right_closed_bins():
    # bin 8: {0.6 correct, 0.55 wrong}: acc .5, conf .575, |gap| .075, weight 2/4 -> 0.0375
    # bin 10: {0.7 correct}: |1 - .7| = .3, weight 1/4 -> 0.075
    # bin 7: {0.5 wrong}: |0 - .5| = .5, weight 1/4 -> 0.125
    # ECE = 0.0375 + 0.075 + 0.125 = 0.2375
    # (left-closed bins would put 0.6 alone in bin 9 and give 0.1 + 0.1375 + 0.075 + 0.125 = 0.4375)
    assert ece(Y_HAND, P_HAND) == pytest.approx(0.2375)
    assert classification_metrics(Y_HAND, P_HAND)["ece"] == pytest.approx(0.2375)


def test_hand_reliability_bins():
    bins = reliability_bins(Y_HAND, P_HAND)
    assert list(bins.columns) == ["bin", "lower", "upper", "count", "confidence", "accuracy", "gap"]
    assert len(bins) == 15
    assert bins["count"].tolist() == [0] * 7 + [1, 2, 0, 1] + [0] * 4
    b8 = bins.loc[8]
    assert b8["lower"] == pytest.approx(8 / 15) and b8["upper"] == pytest.approx(9 / 15)
    assert b8["confidence"] == pytest.approx(0.575)
    assert b8["accuracy"] == pytest.approx(0.5)
    assert b8["gap"] == pytest.approx(-0.075)  # accuracy - confidence: over-confident
    assert bins.loc[9, ["confidence", "accuracy", "gap"]].isna().all()


def test_confidence_zero_and_one_edges():
    # two classes can't have top confidence 0, but a confidence of exactly 1 must go in the last bin
    y = np.array([0, 1])
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    bins = reliability_bins(y, p)
    assert bins["count"].tolist() == [0] * 14 + [2]


def test_reliability_bins_reproduce_ece_random():
    for seed in range(3):
        y, p = _random_case(seed)
        bins = reliability_bins(y, p)
        assert bins["count"].sum() == len(y)
        filled = bins[bins["count"] > 0]
        assert (filled["count"] / len(y) * filled["gap"].abs()).sum() == pytest.approx(ece(y, p), rel=1e-12)


def test_perfect_predictions_have_zero_ece_and_brier():
    y = np.array([0, 1, 2, 2, 1])
    p = np.eye(3)[y]
    assert ece(y, p) == 0.0
    assert brier(y, p) == 0.0
    m = classification_metrics(y, p)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["macro_auroc"] == 1.0
    assert m["nll"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("c", [2, 3, 9])
def test_uniform_probs_brier(c):
    # each sample: (1 - 1/C)^2 + (C-1)(1/C)^2 = (C-1)/C * ((C-1)/C + 1/C) = 1 - 1/C
    y = np.arange(20) % c
    p = np.full((20, c), 1.0 / c)
    assert brier(y, p) == pytest.approx(1 - 1 / c)


def test_brier_matches_numpy_and_sklearn_binary():
    for seed in range(3):
        y, p = _random_case(seed, c=4)
        direct = np.mean([np.sum((p[i] - np.eye(4)[y[i]]) ** 2) for i in range(len(y))])
        assert brier(y, p) == pytest.approx(direct, rel=1e-12)
    y, p = _random_case(7, c=2)
    # binary: sum over both classes double-counts the single squared error -> ours = 2 x sklearn's
    assert brier(y, p) == pytest.approx(2 * brier_score_loss(y, p[:, 1]), rel=1e-12)


def test_ece_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    # torchmetrics bins left-closed [b/n, (b+1)/n) and works in float32; continuous random confidences avoid
    # edges, and we feed both implementations the same float32-representable probabilities.
    for seed in range(5):
        for c in (2, 5, 9):
            y, p = _random_case(seed, n=2000, c=c)
            p = p.astype(np.float32).astype(np.float64)  # identical confidences on both sides
            metric = tm.MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1")
            expected = float(metric(torch.from_numpy(p).float(), torch.from_numpy(y)))
            assert ece(y, p) == pytest.approx(expected, rel=1e-6)


def test_binary_auroc_is_positive_class_auroc():
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    p = np.stack([1 - p1, p1], axis=1)
    # pos {.35,.8,.9} vs neg {.1,.4}: .35>.1 yes, .35>.4 no, .8 beats both, .9 beats both -> 5/6
    assert classification_metrics(y, p)["macro_auroc"] == pytest.approx(5 / 6)


def test_multiclass_auroc_matches_sklearn_ovr_macro():
    for seed in range(4):
        y, p = _random_case(seed, n=500, c=6)
        per_class = [roc_auc_score(y == k, p[:, k]) for k in range(6)]
        ours = classification_metrics(y, p)["macro_auroc"]
        assert ours == pytest.approx(np.mean(per_class), rel=1e-12)
        assert ours == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), rel=1e-12)


def test_auroc_skips_absent_class():
    y = np.array([0, 0, 1, 1])  # class 2 has no positives -> skipped
    p = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.3, 0.5, 0.2],
            [0.4, 0.4, 0.2],
            [0.2, 0.6, 0.2],
        ]
    )
    # class 0: pos {.7,.3} neg {.4,.2}: .7 wins twice, .3 beats .2 only -> 3/4
    # class 1: pos {.4,.6} neg {.2,.5}: .4 beats .2 only, .6 wins twice -> 3/4 ; mean over classes 0,1 = 0.75
    assert classification_metrics(y, p)["macro_auroc"] == pytest.approx(0.75)


def test_auroc_nan_when_no_class_usable():
    assert math.isnan(classification_metrics(np.zeros(3, int), np.full((3, 3), 1 / 3))["macro_auroc"])
    assert math.isnan(classification_metrics(np.ones(3, int), np.full((3, 2), 0.5))["macro_auroc"])


def test_per_class_report_hand():
    rep = per_class_report(Y_HAND, P_HAND, labels=["a", "b", "c"])
    assert list(rep.columns) == ["class", "name", "support", "precision", "recall", "f1"]
    assert rep["class"].tolist() == [0, 1, 2]
    assert rep["name"].tolist() == ["a", "b", "c"]
    assert rep["support"].tolist() == [2, 1, 1]
    np.testing.assert_allclose(rep["precision"], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(rep["recall"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(rep["f1"], [0.5, 2 / 3, 0.0])
    assert per_class_report(Y_HAND, P_HAND)["name"].tolist() == ["0", "1", "2"]
    with pytest.raises(StmedfmError, match="names"):
        per_class_report(Y_HAND, P_HAND, labels=["a", "b"])


def test_confusion_hand():
    # (true, pred): (0,0), (1,1), (2,0), (0,1)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(confusion(Y_HAND, P_HAND), expected)
    # a class never predicted nor present still gets a row and a column
    np.testing.assert_array_equal(confusion([0, 0], [[0.9, 0.1, 0.0, 0.0]] * 2), np.diag([2, 0, 0, 0]))


def test_labels_shaped_n_by_1_accepted():
    assert classification_metrics(Y_HAND[:, None], P_HAND) == classification_metrics(Y_HAND, P_HAND)


@pytest.mark.parametrize(
    "y, p, match",
    [
        (np.array([0, 1, 2]), P_HAND, "samples"),
        (Y_HAND, P_HAND[:, :, None], "shape"),
        (np.array([0, 1, 3, 0]), P_HAND, "labels must lie"),
        (Y_HAND, P_HAND * 5 - 1, "logits"),
        (np.array([0.5, 1, 2, 0]), P_HAND, "integer"),
        (np.array([], dtype=int), np.zeros((0, 3)), "zero samples"),
    ],
)
def test_bad_inputs_raise_clear_errors(y, p, match):
    for fn in (classification_metrics, ece, brier, reliability_bins, per_class_report, confusion):
        with pytest.raises(StmedfmError, match=match):
            fn(y, p)


def test_bad_n_bins():
    with pytest.raises(StmedfmError, match="n_bins"):
        ece(Y_HAND, P_HAND, n_bins=0)
