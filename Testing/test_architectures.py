"""Baseline architectures and FusionLungNet ablations: built, trained a step, exported, segmented with."""

from __future__ import annotations

import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE_DICOM, tiny_train_config

from FusionLungSegLib.nets.fusionlungnet import FusionLungNet
from FusionLungSegLib.nets.registry import ARCHITECTURES, build_model, count_parameters
from FusionLungSegLib.nets.weights import WeightsError
from FusionLungSegLib.training.losses import BCELoss, DeepSupervisionLoss, HybridLoss


@pytest.mark.parametrize(
    "arch, options, millions",
    [
        ("fusionlungnet", {}, 45.9),
        ("unet", {}, 31.0),
        ("resunet18", {}, 14.4),
        ("fusionlungnet", {"refinement": False}, 45.4),
    ],
)
def test_each_architecture_maps_a_slice_to_logits_of_its_size(arch, options, millions):
    model = build_model(arch, **options).eval()
    assert round(count_parameters(model) / 1e6, 1) == millions
    with torch.inference_mode():
        out = model(torch.zeros(2, 1, 96, 64))
    assert out[0].shape == (2, 1, 96, 64)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'vnet'"):
        build_model("vnet")


def test_bundled_model_still_loads_with_its_key_names():
    from FusionLungSegLib.nets.weights import load_weights

    state, meta = load_weights(None)
    assert meta["architecture"] == "FusionLungNet"
    model = build_model(meta["architecture"])
    model.load_state_dict(state)  # strict: every key name and shape as bundled
    assert isinstance(model, FusionLungNet)


def test_ablation_losses():
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    good, bad = target * 20 - 10, -(target * 20 - 10)
    outputs = (good, bad, bad, bad, bad)
    assert DeepSupervisionLoss(HybridLoss(), deep_supervision=False)(outputs, target) < 0.1
    assert DeepSupervisionLoss(HybridLoss())(outputs, target) > 1.0  # the side outputs count
    assert BCELoss()(good, target) < 0.01 < BCELoss()(bad, target)


@pytest.mark.parametrize(
    "arch, flags",
    [
        ("unet", {}),
        ("resunet18", {}),
        ("fusionlungnet", {"refinement": False, "deep_supervision": False, "loss": "bce"}),
    ],
)
@pytest.mark.slow
def test_train_a_step_export_and_segment_without_naming_the_architecture_again(arch, flags, tmp_path):
    from FusionLungSegLib.io import read_image
    from FusionLungSegLib.segmenter import LungSegmenter
    from FusionLungSegLib.training.train import export_weights, train

    cfg = tiny_train_config(tmp_path / "run", arch=arch, **flags)
    result = train(cfg, progress=False)
    assert len(result["history"]) == 1 and result["history"][0]["train_loss"] > 0
    exported = export_weights(tmp_path / "run" / "best.pt", tmp_path / f"{arch}.pt")
    assert exported["meta"]["architecture"] == ARCHITECTURES[arch]
    seg = LungSegmenter(exported["path"], device="cpu", progress=False, sha256=exported["sha256"])
    assert isinstance(seg.model, type(build_model(arch)))
    labels = seg.segment(read_image(SAMPLE_DICOM))
    assert labels.GetSize() == (512, 512, 2) and sitk.GetArrayFromImage(labels).max() <= 2


def test_weights_of_one_architecture_do_not_load_as_another(tmp_path):
    from FusionLungSegLib.segmenter import LungSegmenter

    state = {k: v.half() for k, v in build_model("resunet18").state_dict().items()}
    path = tmp_path / "w.pt"
    torch.save({"state_dict": state, "meta": {"architecture": "U-Net", "input_size": 64}}, path)
    with pytest.raises(WeightsError, match="does not fit U-Net"):
        LungSegmenter(str(path), device="cpu", progress=False)


def test_refinement_ablation_is_for_fusionlungnet_only(tmp_path):
    from FusionLungSegLib.training.train import TrainConfig, train

    cfg = TrainConfig(out_dir=str(tmp_path), arch="unet", refinement=False, device="cpu")
    with pytest.raises(ValueError, match="ablation of FusionLungNet"):
        train(cfg, progress=False)


@pytest.mark.slow
def test_enhancement_stage_is_stored_in_the_weights_and_applied_at_inference(tmp_path):
    import numpy as np

    from FusionLungSegLib.segmenter import LungSegmenter
    from FusionLungSegLib.training.train import export_weights, train

    cfg = tiny_train_config(tmp_path / "run", arch="resunet18", enhance=True)
    train(cfg, progress=False)
    exported = export_weights(tmp_path / "run" / "best.pt", tmp_path / "enhanced.pt")
    assert exported["meta"]["enhancement"] is True
    seg = LungSegmenter(exported["path"], device="cpu", progress=False, body_crop=False, backend="torch")
    assert seg.enhance
    seen = []
    forward = seg.engine.probabilities
    seg.engine.probabilities = lambda x: (seen.append(x.clone()), forward(x))[1]
    hu = np.full((1, 128, 128), -1000, np.int16)
    yy, xx = np.mgrid[:128, :128]
    hu[0][((yy - 60) / 45) ** 2 + ((xx - 64) / 55) ** 2 < 1] = 40
    hu[0, 114:122, 10:118] = 300  # the scanner table, apart from the body
    seg.predict_canonical(hu, (1.0, 1.0))
    seg.predictor.enhance = False
    seg.predict_canonical(hu, (1.0, 1.0))
    table = (slice(None), 0, 58, slice(8, 56))  # the table's rows at 64 px
    assert float(seen[0][table].max()) < 0.01  # removed before the network: air
    assert float(seen[1][table].min()) > 0.5  # without the stage the network sees it
