"""Metrics against hand-computed cases, including empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from FusionLungSegLib.core.metrics import (
    accuracy,
    dice,
    hd95,
    hd95_pooled,
    iou,
    mcc,
    precision,
    recall,
    table2_metrics,
    volume_ml,
)


def test_hand_computed_2d_case():
    ref = np.zeros((4, 5), bool)
    ref[0, :4] = True  # 4 pixels
    pred = np.zeros((4, 5), bool)
    pred[0, 2:5] = True  # 3 pixels, 2 overlap
    # tp=2, fp=1, fn=2, tn=15
    assert iou(pred, ref) == pytest.approx(2 / 5)
    assert dice(pred, ref) == pytest.approx(4 / 7)
    assert precision(pred, ref) == pytest.approx(2 / 3)
    assert recall(pred, ref) == pytest.approx(2 / 4)
    assert accuracy(pred, ref) == pytest.approx(17 / 20)
    assert mcc(pred, ref) == pytest.approx((2 * 15 - 1 * 2) / math.sqrt(3 * 4 * 16 * 17))


def test_identical_masks_score_one():
    m = np.random.default_rng(0).random((16, 16)) > 0.5
    assert all(v == pytest.approx(1.0) for v in table2_metrics(m, m).values())


def test_empty_masks():
    empty = np.zeros((8, 8), bool)
    full = np.ones((8, 8), bool)
    assert table2_metrics(empty, empty) == {k: 1.0 for k in table2_metrics(empty, empty)}
    assert iou(empty, full) == 0.0 and dice(full, empty) == 0.0
    assert precision(empty, full) == 0.0  # nothing predicted, something missed
    assert recall(full, empty) == 0.0
    assert mcc(empty, full) == 0.0
    assert hd95(empty, empty, (1, 1)) == 0.0
    assert math.isinf(hd95(empty, full, (1, 1)))


def test_volume_in_millilitres():
    m = np.zeros((10, 10, 10), bool)
    m[:5, :4, :2] = True  # 40 voxels of 2 x 2.5 x 5 mm = 25 mm^3 each = 1000 mm^3
    assert volume_ml(m, (2.0, 2.5, 5.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        volume_ml(m, (1.0, 1.0))


def test_hd95_is_spacing_aware():
    a = np.zeros((1, 20, 40), bool)
    b = np.zeros((1, 20, 40), bool)
    a[0, 5:15, 5:15] = True
    b[0, 5:15, 8:18] = True  # shifted 3 columns
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(6.0)  # 2 mm columns
    assert hd95(a, a, (1.0, 1.0, 1.0)) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((2, 2)), np.zeros((3, 3)))


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one():
    """MONAI's and surface-distance's definition: max of the two directed 95th percentiles."""
    ref = np.zeros((1, 30), bool)
    pred = np.zeros((1, 30), bool)
    ref[0, 0] = True
    pred[0, 0] = pred[0, 10] = True  # a far island in the prediction only
    # pred -> ref: distances 0 and 10 (95th percentile 9.5); ref -> pred: 0. Pooled (0, 10, 0): 9.0.
    assert hd95(pred, ref, (1.0, 1.0)) == pytest.approx(9.5)
    assert hd95(ref, pred, (1.0, 1.0)) == pytest.approx(9.5)  # symmetric
    assert hd95_pooled(pred, ref, (1.0, 1.0)) == pytest.approx(9.0)
    assert hd95_pooled(np.zeros((2, 2), bool), np.zeros((2, 2), bool), (1, 1)) == 0.0


def test_evaluation_table_keeps_long_headers_apart():
    from FusionLungSegLib.evaluation.evaluate import format_table

    rows = [{"case": "a", "hd95_left_mm": 2.5, "ml_on_ref_free_slices": 0.0}, {"case": "b", "hd95_left_mm": 3.5}]
    lines = format_table(rows, keys=["hd95_left_mm", "ml_on_ref_free_slices"]).splitlines()
    assert lines[0].split() == ["case", "hd95_left_mm", "ml_on_ref_free_slices"]
    assert lines[2].split() == ["a", "2.50", "0.00"] and lines[3].split() == ["b", "3.50", "-"]
    assert lines[-1].split()[:3] == ["mean", "±", "sd"] and "3.00 ± 0.71" in lines[-1]
