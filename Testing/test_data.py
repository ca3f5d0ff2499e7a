"""Real Kaggle slices: loading, seeded split by case, augmentation, volume slice reading."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, require

from FusionLungSegLib.training.data import Augment, load_finding_lungs, load_volume_slices, split_by_case


@pytest.fixture(scope="module")
def slices():
    return load_finding_lungs(require(DATA / "finding-lungs-2d.tar.gz"), limit=6)


def test_kaggle_slices_load_as_hu_with_binary_masks(slices):
    assert slices.images.shape == (6, 512, 512) and slices.images.dtype == np.int16
    assert slices.masks.dtype == bool
    assert slices.names[0] == "ID_0000_Z_0142.tif" and slices.cases[0] == "ID_0000"
    fraction = slices.masks.mean(axis=(1, 2))
    assert np.all((fraction > 0.05) & (fraction < 0.6))
    # Lungs are dark: the median HU under the mask is far below soft tissue.
    assert np.median(slices.images[slices.masks]) < -500


def test_split_is_seeded_disjoint_and_covers_all():
    cases = [f"ID_{i:04d}" for i in range(50) for _ in range(2)]
    a = split_by_case(cases, 0.2, seed=3)
    b = split_by_case(cases, 0.2, seed=3)
    c = split_by_case(cases, 0.2, seed=4)
    assert a == b and a != c
    train, val = a
    assert sorted(train + val) == list(range(100))
    assert not {cases[i] for i in train} & {cases[i] for i in val}
    assert len({cases[i] for i in val}) == 10


def test_augmentation_moves_image_and_mask_together(slices):
    from FusionLungSegLib.nets.preprocess import mask_to_network, to_network

    x, frame = to_network(slices.images[:4], 96)
    m = mask_to_network(slices.masks[:4], frame)
    aug = Augment(hu_offset=0, contrast=(1, 1), noise=0, gamma=(1, 1), generator=torch.Generator().manual_seed(0))
    xa, ma = aug(x, m)
    assert xa.shape == x.shape and set(torch.unique(ma).tolist()) <= {0.0, 1.0}
    # Lungs stay dark after the geometric transform: mean intensity under the mask stays low.
    assert float(xa[ma > 0].mean()) < 0.35
    assert not torch.equal(xa, x)


def test_volume_and_mask_read_as_canonical_slices(tmp_path):
    hu = np.full((5, 20, 30), 40, np.int16)
    hu[:, 5:10, 3:12] = -850
    img = sitk.GetImageFromArray(hu)
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # stored superior-to-inferior
    img.SetSpacing((0.7, 0.8, 2.5))
    msk = sitk.GetImageFromArray((hu < -500).astype(np.uint8))
    msk.CopyInformation(img)
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(msk, str(tmp_path / "lungs.nii.gz"))
    s = load_volume_slices(tmp_path / "ct.nii.gz", tmp_path / "lungs.nii.gz")
    assert s.images.shape == (5, 20, 30)
    assert s.spacing_yx[0] == pytest.approx((0.8, 0.7))
    np.testing.assert_array_equal(s.masks, s.images < -500)
    np.testing.assert_array_equal(s.images, hu[::-1])  # z flipped into inferior-to-superior order


def test_default_data_folder_is_shared_data_beside_the_checkout(monkeypatch):
    from conftest import REPO

    from FusionLungSegLib.training.data import default_data_dir

    monkeypatch.delenv("FUSIONLUNGSEG_DATA", raising=False)
    assert default_data_dir() == REPO.parent / "shared" / "data"


def test_recorded_slice_catalogues_ship_with_the_training_package():
    """lung_free_slices.json and hu_labelled_slices.json sit beside training/data.py (and in the wheel)."""
    from FusionLungSegLib.training.data import lung_free_catalogue

    assert len(lung_free_catalogue()["volumes"]) >= 3
    from pathlib import Path

    import FusionLungSegLib.training.data as data_module

    assert (Path(data_module.__file__).with_name("hu_labelled_slices.json")).is_file()
