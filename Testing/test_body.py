"""The patient-only body mask and the network's crop box, on phantoms with tables, cushions and wide fields."""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import chest

from FusionLungSegLib.core.body import body_mask, crop_box, outer_shell


def _lungs(p):
    return p.parts["lung_right"] | p.parts["lung_left"]


def _beyond(p, name: str, mm: float = 8.0) -> np.ndarray:
    """Voxels of part ``name`` farther than ``mm`` from the phantom's true body (in-plane)."""
    from scipy import ndimage

    far = np.stack([ndimage.distance_transform_edt(~b, sampling=p.spacing_zyx[1:]) > mm for b in p.parts["body"]])
    return p.parts[name] & far


def test_body_on_a_table_holds_the_lungs_and_not_the_table():
    p = chest(table=True)
    body = body_mask(p.hu, p.spacing_zyx)
    assert body[_lungs(p)].all()
    assert not body[_beyond(p, "table")].any()  # the mask is coarse (2 mm blocks) at the skin
    p.parts["foam"] = p.hu == -950
    assert not body[_beyond(p, "foam")].any()


def test_air_cushion_whose_shell_touches_the_skin_stays_outside():
    p = chest(cushion=True)
    assert p.parts["cushion_air"].any()
    body = body_mask(p.hu, p.spacing_zyx)
    assert body[_lungs(p)].all()
    assert not body[_beyond(p, "cushion_air")].any()
    assert body[p.parts["cushion_air"]].mean() < 0.05


def test_circular_field_of_view_padding_is_not_body():
    p = chest(circular_fov=True, table=True)
    body = body_mask(p.hu, p.spacing_zyx)
    assert not body[p.hu == -3024].any()
    assert body[_lungs(p)].all()


def test_small_body_in_a_500_mm_field_gets_a_box_around_the_body_only():
    p = chest(pixels=256, pixel_mm=500 / 256, body_mm=(150.0, 200.0), table=True, circular_fov=True)
    body = body_mask(p.hu, p.spacing_zyx)
    assert abs(body.sum() - p.parts["body"].sum()) < 0.05 * p.parts["body"].sum()
    y0, y1, x0, x1 = crop_box(body[12], p.spacing_zyx[1:], margin_mm=10.0)
    side_mm = (y1 - y0) * p.spacing_zyx[1]
    assert y1 - y0 == x1 - x0  # square pixels: square box
    assert 200 + 2 * 10 - 5 < side_mm < 200 + 2 * 10 + 5  # the body's width plus margins, not the 500 mm field
    rows, cols = np.nonzero(p.parts["body"][12])
    assert y0 <= rows.min() and rows.max() < y1 and x0 <= cols.min() and cols.max() < x1


def test_box_may_reach_beyond_the_image_and_is_none_without_a_body():
    p = chest(pixels=128, pixel_mm=2.0, body_mm=(240.0, 250.0))  # the body fills the 256 mm field
    y0, y1, x0, x1 = crop_box(body_mask(p.hu, p.spacing_zyx), p.spacing_zyx[1:])
    assert y0 < 0 or x0 < 0 or y1 > 128 or x1 > 128
    assert crop_box(np.zeros((3, 10, 10), bool), (1.0, 1.0)) is None


def test_2d_slice_without_spacing_uses_the_assumed_pixel():
    p = chest(slices=1, pixels=200, pixel_mm=0.7, body_mm=(100.0, 120.0))
    body = body_mask(p.hu)  # no spacing: 0.7 mm assumed, as for the Kaggle slices
    assert abs(body.sum() - p.parts["body"].sum()) < 0.05 * p.parts["body"].sum()


def test_outer_shell_is_a_band_inside_the_surface_but_not_at_the_image_border():
    p = chest(pixels=128, pixel_mm=2.0, body_mm=(200.0, 300.0))  # 300 mm wide in a 256 mm field: cut at x
    body = body_mask(p.hu, p.spacing_zyx)
    shell = outer_shell(body, p.spacing_zyx, depth_mm=4.0)
    assert shell.any() and not (shell & ~body).any()
    for edge in (0, -1):  # the cut is no surface: only where the skin meets the image border
        assert shell[:, :, edge].sum() < 0.2 * body[:, :, edge].sum()
    assert not shell[_lungs(p)].any()


@pytest.mark.parametrize("pixel_mm", [0.6, 1.0, 2.0])
def test_body_mask_works_at_any_pixel_size(pixel_mm):
    n = int(400 / pixel_mm)
    p = chest(slices=6, pixels=n, pixel_mm=pixel_mm, cushion=True)
    body = body_mask(p.hu, p.spacing_zyx)
    assert body.shape == p.hu.shape
    assert body[_lungs(p)].all() and not body[_beyond(p, "cushion_air")].any()


@pytest.mark.parametrize("step", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(3, 24, 24), (2, 25, 31)])
def test_block_majority_counts_half_a_block_or_more(step, shape):
    """Against a direct count of each block (the last row and column repeated past the edge)."""
    from FusionLungSegLib.core.masks import block_majority

    rng = np.random.default_rng(step)
    mask = rng.random(shape) < rng.random((shape[0], 1, 1))  # slices from sparse to dense
    z, h, w = shape
    padded = np.pad(mask, ((0, 0), (0, -h % step), (0, -w % step)), mode="edge")
    hb, wb = padded.shape[1] // step, padded.shape[2] // step
    counts = padded.reshape(z, hb, step, wb, step).sum(axis=(2, 4))
    np.testing.assert_array_equal(block_majority(mask, step), counts * 2 >= step * step)
