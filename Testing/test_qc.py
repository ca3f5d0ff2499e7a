"""The QC verdict: each flag from a phantom built to raise it, and no flag on a whole, normal chest."""

from __future__ import annotations

import numpy as np
from phantoms import chest

from FusionLungSegLib.core.body import body_mask
from FusionLungSegLib.core.postprocess import LEFT_LUNG, RIGHT_LUNG, postprocess_with_report
from FusionLungSegLib.core.qc import quality_check


def _labels(p) -> np.ndarray:
    out = np.zeros(p.hu.shape, np.uint8)
    out[p.parts["lung_right"]] = RIGHT_LUNG
    out[p.parts["lung_left"]] = LEFT_LUNG
    return out


def _verdict(p, labels=None, report=None):
    return quality_check(
        _labels(p) if labels is None else labels, p.spacing_zyx, body_mask(p.hu, p.spacing_zyx), report
    )


def test_a_whole_normal_chest_is_ok():
    p = chest(table=True)
    qc = _verdict(p)
    assert qc["ok"] and qc["flags"] == [], qc
    assert qc["measures"]["right_lung_ml"] > 0 and qc["measures"]["left_lung_ml"] > 0
    assert 0.08 < qc["measures"]["lung_to_body"] < 0.75


def test_a_scan_cut_through_the_middle_of_the_lungs_is_flagged_at_both_ends():
    p = chest(slices=40)
    lungs = np.flatnonzero(_labels(p).any(axis=(1, 2)))
    mid = (lungs[0] + lungs[-1]) // 2
    cut = slice(mid - 8, mid + 8)  # 16 slices through the middle
    body = body_mask(p.hu[cut], p.spacing_zyx)
    qc = quality_check(_labels(p)[cut], p.spacing_zyx, body)
    assert not qc["ok"]
    assert any("last (most superior) slice" in f for f in qc["flags"])
    assert any("first (most inferior) slice" in f for f in qc["flags"])


def test_lung_bases_on_the_last_slice_of_an_abdominal_scan_are_flagged_as_cut_off():
    p = chest(slices=30)
    labels = _labels(p)
    first_lung = int(np.flatnonzero(labels.any(axis=(1, 2)))[0])
    qc = quality_check(labels[: first_lung + 3], p.spacing_zyx, body_mask(p.hu[: first_lung + 3], p.spacing_zyx))
    assert any("cut off at the scan's upper end" in f for f in qc["flags"])
    assert not any("lower end" in f for f in qc["flags"])


def test_a_missing_lung_is_flagged():
    p = chest()
    labels = _labels(p)
    labels[labels == LEFT_LUNG] = 0
    qc = _verdict(p, labels)
    assert not qc["ok"] and any("left lung is missing" in f for f in qc["flags"])


def test_a_lung_under_a_tenth_of_the_other_is_flagged():
    p = chest()
    labels = _labels(p)
    left = np.argwhere(labels == LEFT_LUNG)
    labels[tuple(left[len(left) // 20 :].T)] = 0  # keep 5 % of the left lung
    qc = _verdict(p, labels)
    assert any("less than 10% of the right lung" in f for f in qc["flags"])


def test_implausible_volume_for_the_body_is_flagged():
    p = chest()
    labels = _labels(p)
    body = p.parts["body"].copy()
    body[[0, -1]] = False  # the whole body called lung, but not on the end slices (that would be "cut off")
    labels[body & ~(labels > 0)] = RIGHT_LUNG
    qc = _verdict(p, labels)
    assert any("implausible for this body size" in f for f in qc["flags"])
    tiny = np.zeros_like(labels)
    tiny[10:14, 90:94, 80:84] = RIGHT_LUNG
    tiny[10:14, 90:94, 170:174] = LEFT_LUNG
    assert any("implausible" in f for f in _verdict(p, tiny)["flags"])


def test_lung_at_the_body_surface_is_flagged():
    p = chest()
    labels = _labels(p)
    surface = p.parts["body"] & ~np.stack([np.pad(b, 3)[6:, 3:-3] for b in p.parts["body"]])  # anterior skin band
    labels[surface & (np.arange(labels.shape[2]) > labels.shape[2] // 2)] = LEFT_LUNG
    qc = _verdict(p, labels)
    assert any("outer surface" in f for f in qc["flags"])


def test_removed_lung_like_regions_are_reported_with_their_volume():
    p = chest(abdomen_gas=True, cushion=True)
    prob = (p.parts["lung_right"] | p.parts["lung_left"] | p.parts["gas"] | p.parts["cushion_air"]).astype(np.float32)
    labels, report = postprocess_with_report(prob, p.spacing_zyx, hu=p.hu)
    qc = quality_check(labels, p.spacing_zyx, body_mask(p.hu, p.spacing_zyx), report)
    removed = qc["measures"]["removed_ml"]
    assert removed["outside the body"] > 100 and removed["below the diaphragm"] > 5
    text = " ".join(qc["flags"] + qc["notes"])
    assert "below the diaphragm" in text and "outside the patient" in text
    big_gas = qc["measures"]["removed_ml"]["below the diaphragm"] >= 50
    assert qc["ok"] == (not big_gas)  # gas inside the body is flagged only when it is large


def test_no_lung_at_all_is_flagged():
    p = chest()
    qc = _verdict(p, np.zeros(p.hu.shape, np.uint8))
    assert not qc["ok"] and "No lung was found" in qc["flags"][0]


def test_lungs_cut_off_are_not_also_called_implausible():
    p = chest(slices=30)
    labels = _labels(p)
    first_lung = int(np.flatnonzero(labels.any(axis=(1, 2)))[0])
    part = slice(0, first_lung + 2)  # the scan ends just above the lung bases: small, and not implausible
    qc = quality_check(labels[part], p.spacing_zyx, body_mask(p.hu[part], p.spacing_zyx))
    assert any("cut off" in f for f in qc["flags"]) and not any("implausible" in f for f in qc["flags"])
