"""Bad and unusual input: a correct result or a specific error, never a modified input or partial file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_phantom

from FusionLungSegLib.cli import main
from FusionLungSegLib.engines.torch_engine import TorchEngine
from FusionLungSegLib.io import read_image
from FusionLungSegLib.segmenter import InvalidInputError, LungSegmenter


@pytest.fixture(scope="module")
def seg():
    from conftest import ThresholdNet

    return LungSegmenter(model=ThresholdNet(), device="cpu", input_size=64, progress=False)


def _img(arr, spacing=(1.0, 1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr, isVector=False)
    img.SetSpacing(spacing[: img.GetDimension()])
    return img


def _shifted_unsigned():
    img, _ = make_phantom(np.eye(3))
    arr = sitk.GetArrayFromImage(img).astype(np.int32) + 1024
    return _img(arr.astype(np.uint16))


BAD = {
    "2D image": (lambda: _img(np.full((32, 32), -1000, np.int16)), "3D CT volume, got a 2D image"),
    "4D image": (lambda: _img(np.zeros((2, 3, 8, 8), np.int16)), "got a 4D image"),
    "zero-size": (lambda: sitk.Image([0, 0, 0], sitk.sitkInt16), "empty"),
    "colour": (lambda: sitk.Image([8, 8, 2], sitk.sitkVectorUInt8, 3), "components per voxel"),
    "constant soft tissue": (lambda: _img(np.full((3, 16, 16), 40, np.int16)), "constant"),
    "MR-like 0..4000": (
        lambda: _img(np.random.default_rng(0).integers(0, 4000, (4, 32, 32)).astype(np.int16)),
        "MR image",
    ),
    "unsigned +1024": (_shifted_unsigned, "rescale slope/intercept"),
    "label map": (lambda: _img((np.arange(4 * 16 * 16).reshape(4, 16, 16) % 3).astype(np.uint8)), "label map"),
    "all NaN": (lambda: _img(np.full((2, 8, 8), np.nan, np.float32)), "no finite values"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_volumes_raise_a_specific_error_and_are_not_modified(seg, name):
    make, message = BAD[name]
    image = make()
    before = sitk.GetArrayFromImage(image).copy() if 0 not in image.GetSize() else None
    with pytest.raises(InvalidInputError, match=message):
        seg.segment(image)
    if before is not None:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)


def test_nan_and_inf_voxels_in_a_real_ct_are_tolerated(seg):
    img, lung_fn = make_phantom(np.eye(3))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr[0, :4, :4] = np.nan
    arr[1, :4, :4] = np.inf
    noisy = _img(arr, img.GetSpacing())
    noisy.CopyInformation(img)
    labels = sitk.GetArrayFromImage(seg.segment(noisy))
    assert set(np.unique(labels)) == {0, 1, 2}


def test_all_air_gives_an_empty_result(seg):
    out = seg.segment(_img(np.full((3, 16, 16), -1000, np.int16)))
    assert not sitk.GetArrayFromImage(out).any()


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 0.1), (0.7, 0.7, 20.0), (4.0, 4.0, 1.0)])
def test_extreme_spacing_still_lands_on_the_lungs(seg, spacing):
    size = (160, 120, 5) if spacing[0] < 1 else (30, 30, 5)  # field of view covers both lungs
    img, lung_fn = make_phantom(np.eye(3), spacing=spacing, size=size)
    labels = sitk.GetArrayFromImage(seg.segment(img))
    assert labels.shape == sitk.GetArrayFromImage(img).shape
    from FusionLungSegLib.core.geometry import voxel_centres_lps

    truth = lung_fn(voxel_centres_lps(img, np.argwhere(np.ones(labels.shape, bool)))).reshape(labels.shape)
    sure = truth >= 0  # away from the surface, where partial voxels decide
    assert np.mean(labels[sure] == truth[sure]) > 0.99


@pytest.mark.parametrize("slices", [1, 2, 3])
def test_very_thin_volumes(seg, slices):
    img, _ = make_phantom(np.eye(3), spacing=(3.0, 3.0, 2.0), size=(40, 40, slices))
    labels = sitk.GetArrayFromImage(seg.segment(img))
    assert {1, 2} <= set(np.unique(labels))


def test_dicom_folder_with_two_series_is_refused_with_the_series_named(tmp_path):
    for n, uid in enumerate(("1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2")):
        img = sitk.GetImageFromArray(np.full((8, 8), -1000, np.int16))
        for tag, value in (("0020|000e", uid), ("0008|0060", "CT"), ("0020|0013", "1")):
            img.SetMetaData(tag, value)
        sitk.WriteImage(img, str(tmp_path / f"s{n}.dcm"))
    with pytest.raises(ValueError, match="2 DICOM series"):
        read_image(tmp_path)
    assert main(["segment", str(tmp_path), str(tmp_path / "out.nii.gz")]) == 2
    assert not (tmp_path / "out.nii.gz").exists()


def test_folder_without_dicom_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no DICOM series"):
        read_image(tmp_path)


def test_output_suffix_is_checked_before_any_work(tmp_path, random_weights, capsys):
    img, _ = make_phantom(np.eye(3), size=(8, 8, 2))
    sitk.WriteImage(img, str(tmp_path / "ct.nrrd"))
    assert (
        main(["segment", str(tmp_path / "ct.nrrd"), str(tmp_path / "out.png"), "--weights", str(random_weights)]) == 2
    )
    assert "output must end in" in capsys.readouterr().err


class _OOMOnBigBatches(torch.nn.Module):
    """Raises the real CUDA out-of-memory exception type for batches above ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.sizes = limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.zeros_like(x)


def _pretend_cuda(model):
    """A torch engine that believes it runs on CUDA; its network stays on the CPU (no transfer)."""
    engine = TorchEngine(model, torch.device("cpu"), "fp32", "fp32")
    engine.device = torch.device("cuda")
    real_logits = engine.logits
    engine.logits = lambda x: real_logits(x) if engine.device.type == "cpu" else model(x)
    return engine


def test_out_of_memory_halves_the_batch_and_completes():
    model = _OOMOnBigBatches(limit=2)
    engine = _pretend_cuda(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = engine.probabilities(torch.zeros(8, 1, 64, 64))
    assert out.shape == (8, 1, 64, 64)
    assert model.sizes[:3] == [8, 4, 2] and engine.max_batch == 2
    assert any("retrying with batch size" in str(w.message) for w in caught)


def test_the_predictor_sends_no_batch_larger_than_the_engine_found_to_fit():
    from FusionLungSegLib.core.pipeline import CanonicalSlices
    from FusionLungSegLib.engines.network import NetworkPredictor

    class Engine:  # as a torch engine after an out-of-memory retry halved 8 to 2
        runtime, precision, device, notify, max_batch = "torch", "fp32", torch.device("cpu"), None, 2

        def __init__(self):
            self.sizes = []

        def probabilities(self, x):
            self.sizes.append(x.shape[0])
            return torch.zeros_like(x)

    engine = Engine()
    predictor = NetworkPredictor(engine, input_size=64, hu_window=(-1000, 400), body_crop=None, batch_size=8)
    predictor.progress = False
    mask = predictor.predict(CanonicalSlices(np.full((7, 64, 64), -1000, np.int16), (1.0, 1.0)))
    assert mask.shape == (7, 64, 64) and not mask.any() and engine.sizes == [2, 2, 2, 1]


def test_out_of_memory_at_batch_one_falls_back_to_cpu():
    model = _OOMOnBigBatches(limit=0)
    engine = _pretend_cuda(model)
    real_logits = engine.logits

    def fallback_aware(x):
        if engine.device.type == "cpu":
            model.limit = 99  # on the CPU there is memory enough
        return real_logits(x)

    engine.logits = fallback_aware
    with pytest.warns(UserWarning) as caught:
        out = engine.probabilities(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, 1, 64, 64) and engine.device.type == "cpu"
    said = [str(w.message) for w in caught]
    assert any("retrying with batch size 1" in m for m in said) and any("continuing on the CPU" in m for m in said)
