"""HU windowing, aspect-preserving resize and the optional enhancement stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from FusionLungSegLib.nets.preprocess import SliceFrame, enhance_slice, from_network, to_network, window_hu


def test_window_maps_hu_to_unit_range_and_cleans_nan():
    hu = torch.tensor([-3000.0, -1000.0, -300.0, 400.0, 3000.0, float("nan"), float("inf")])
    x = window_hu(hu)
    assert torch.allclose(x, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        window_hu(hu, (100.0, 100.0))


@pytest.mark.parametrize("size", [160, 320])
def test_square_slice_fills_the_frame(size):
    hu = np.full((2, 512, 512), -1000, np.int16)
    x, frame = to_network(hu, size)
    assert x.shape == (2, 1, size, size) and x.dtype == torch.float32
    assert (frame.inner_h, frame.inner_w, frame.top, frame.left) == (size, size, 0, 0)


def test_physical_aspect_is_kept_and_mapping_back_is_exact_for_constant_maps():
    # 100 rows of 2 mm (200 mm) by 400 columns of 1 mm (400 mm): wide slice.
    frame = SliceFrame.make(100, 400, 64, spacing_yx=(2.0, 1.0))
    assert (frame.inner_h, frame.inner_w) == (32, 64)
    assert frame.top == 16 and frame.left == 0
    prob = torch.zeros(1, 1, 64, 64)
    prob[:, :, 16:48, :] = 1.0  # exactly the image area
    back = from_network(prob, frame)
    assert back.shape == (1, 100, 400)
    assert torch.allclose(back, torch.ones_like(back))


def test_a_structure_keeps_its_position_through_the_round_trip():
    hu = np.full((1, 200, 300), 40, np.int16)
    hu[0, 50:90, 200:260] = -850
    x, frame = to_network(hu, 96, spacing_yx=(1.0, 1.0))
    back = from_network((x < 0.2).float(), frame)[0].numpy() > 0.5
    truth = hu[0] < -500
    assert np.mean(back == truth) > 0.99


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        SliceFrame.make(10, 10, 100)
    with pytest.raises(ValueError, match="spacing"):
        SliceFrame.make(10, 10, 64, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        to_network(np.zeros((5, 5)), 64)


def test_enhancement_removes_table_and_keeps_lungs():
    hu = np.full((128, 128), -1000, np.float32)
    yy, xx = np.mgrid[:128, :128]
    body = ((yy - 60) / 45) ** 2 + ((xx - 64) / 55) ** 2 < 1
    hu[body] = 40
    lungs = (((yy - 60) / 25) ** 2 + ((xx - 40) / 14) ** 2 < 1) | (((yy - 60) / 25) ** 2 + ((xx - 88) / 14) ** 2 < 1)
    hu[lungs] = -850
    hu[115:120, 10:118] = 300  # the scanner table, separate from the body
    out = enhance_slice(hu)
    assert out.shape == hu.shape and out.dtype == np.float32
    assert np.all(out[115:120, 10:118] == -1000)  # table removed
    assert np.all(out[lungs] < -700)  # lungs kept
    assert np.allclose(out[body & ~lungs], 40, atol=1)  # body kept
    assert not np.shares_memory(out, hu)
