"""Training smoke run on real slices: loss goes down, resume continues, export loads safely."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA, require, tiny_train_config

from FusionLungSegLib.nets.weights import load_weights
from FusionLungSegLib.training.train import TrainConfig, export_weights, train

pytestmark = pytest.mark.slow  # every test here trains (a few minutes in all)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # without lung-free slices: the real volumes have their own test below
    cfg = tiny_train_config(out, epochs=4, batch_size=3, limit=8)
    return cfg, train(cfg, progress=False)


def test_loss_goes_down_on_real_slices(run):
    _, result = run
    losses = [r["train_loss"] for r in result["history"]]
    assert len(losses) == 4
    assert losses[-1] < losses[0], losses
    assert result["train_slices"] == 6 and result["val_slices"] == 2
    assert {"val_iou", "val_f1", "val_mcc"} <= set(result["history"][-1])


def test_logs_split_and_checkpoints_are_written(run):
    cfg, _ = run
    from pathlib import Path

    out = Path(cfg.out_dir)
    for name in ("last.pt", "best.pt", "log.jsonl", "log.csv", "split.json"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert len(split["validation"]) == 2 and not set(split["train"]) & set(split["validation"])
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert {"optimizer", "generator", "torch_rng"} <= set(last)  # what --resume needs
    assert not {"optimizer", "generator", "torch_rng"} & set(best)  # best.pt: weights and settings only
    assert {"model", "config", "history", "machine"} <= set(best)


def test_resume_continues_from_the_last_epoch(run):
    cfg, _ = run
    cfg2 = TrainConfig(**{**cfg.__dict__, "epochs": 5, "resume": True})
    result = train(cfg2, progress=False)
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3, 4, 5]


def test_export_is_fp16_with_metadata_and_loads_weights_only(run, tmp_path):
    cfg, result = run
    info = export_weights(result["best"], tmp_path / "w.pt")
    state, meta = load_weights(info["path"], sha256=info["sha256"])
    assert (tmp_path / "w.pt.sha256").read_text().split()[0] == info["sha256"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert meta["input_size"] == 64 and meta["hu_window"] == [-1000.0, 400.0]
    assert len(meta["validation"]) == 2 and "val_iou" in meta["validation_metrics"]


def test_curves_picture_is_written_each_epoch(run):
    cfg, _ = run
    from pathlib import Path

    import cv2

    img = cv2.imread(str(Path(cfg.out_dir) / "curves.png"))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 600


def test_resume_gives_bit_for_bit_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = str(require(DATA / "finding-lungs-2d.tar.gz"))
    base = dict(
        data=data,
        epochs=2,
        batch_size=2,
        input_size=64,
        limit=5,
        val_fraction=0.2,
        device="cpu",
        lung_free_fraction=0.0,
        hu_labelled=False,
        ema=0.9,
        min_input_size=32,
        decay_from=1,
    )
    straight = train(TrainConfig(out_dir=str(tmp_path / "a"), **base), progress=False)
    train(TrainConfig(out_dir=str(tmp_path / "b"), **{**base, "epochs": 1}), progress=False)
    resumed = train(TrainConfig(out_dir=str(tmp_path / "b"), resume=True, **base), progress=False)
    a = torch.load(straight["last"], weights_only=True)
    b = torch.load(resumed["last"], weights_only=True)
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert [r["lr"] for r in a["history"]] == [r["lr"] for r in b["history"]]
    assert "val_iou_32" in a["history"][-1] and "val_iou_64" in a["history"][-1]


def test_default_run_folder_is_outside_the_work_tree(monkeypatch, tmp_path):
    from FusionLungSegLib.training.train import default_run_dir

    monkeypatch.delenv("FUSIONLUNGSEG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_run_dir() == tmp_path / "fusionlungseg" / "runs" / "fusionlungnet"


def test_lung_free_slices_join_every_batch_with_an_empty_target(tmp_path):
    from FusionLungSegLib.training.data import load_lung_free_slices

    require(DATA / "dev" / "C3N-00247_chest_ct.nii.gz")
    free = load_lung_free_slices(DATA, "train")
    assert len(free) == 21 and not free.masks.any()
    assert all(box is not None and box[1] - box[0] == box[3] - box[2] for box in free.boxes)
    assert {c for c in free.cases} == {
        "totalsegmentator_abdomen_dicom",
        "LungPETCTDx_A0001_CT_5mm_kernelB",
        "C3N-00247_chest_ct",
    }
    from FusionLungSegLib.training.data import load_hu_labelled_slices

    bases = load_hu_labelled_slices(DATA)  # lung bases with HU-derived masks: thin crescents beside the liver
    holds_lung = bases.masks.any(axis=(1, 2))
    # every listed slice holds lung except the PET/CT's slice 1, recorded as holding none (an empty target)
    empty = [name for name, lung in zip(bases.names, holds_lung) if not lung]
    assert len(bases) == 32 and empty == ["LungPETCTDx_A0001_CT_5mm_kernelB_z0001"]
    assert not set(bases.cases) & {"NSCLCRadiomics_LUNG1-001_CT"}  # the held-out volume stays out
    held_out = load_lung_free_slices(DATA, "held-out")
    assert set(held_out.cases) == {"NSCLCRadiomics_LUNG1-001_CT"} and len(held_out) == 41
    cfg = tiny_train_config(tmp_path, batch_size=4, augment=True, lung_free_fraction=0.25, hu_labelled=True)
    result = train(cfg, progress=False)
    assert result["lung_free_slices"] == 21 and result["hu_labelled_slices"] == 32
    assert 0.0 <= result["history"][0]["val_lung_free_fraction"] <= 1.0
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["lung_free_train"]) == 21 and len(split["lung_free_held_out"]) == 41


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_step_lowers_the_loss_on_a_tiny_batch(precision):
    """bf16 autocast with fp32 master weights and fp32 loss trains like fp32 (on any CPU; slow without AMX)."""
    from FusionLungSegLib.nets.fusionlungnet import FusionLungNet
    from FusionLungSegLib.training.losses import DeepSupervisionLoss, HybridLoss

    torch.manual_seed(0)
    model = FusionLungNet()
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    y = (((yy - 32) ** 2 + (xx - 24) ** 2) < 200).float()[None, None].repeat(2, 1, 1, 1)
    y[1] = torch.flip(y[1], [-1])
    x = 0.2 + 0.6 * y + 0.05 * torch.rand(2, 1, 64, 64)  # a bright disc to find
    criterion = DeepSupervisionLoss(HybridLoss())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = model(x)
        loss = criterion([o.float() for o in outputs], y)
        assert loss.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_precision_and_cpu_are_logged_and_recorded(run):
    cfg, result = run
    from FusionLungSegLib.engines.hardware import resolve_precision

    used = resolve_precision("auto", torch.device("cpu"), warn=False)  # bf16 on CPUs with bf16 units, else fp32
    state = torch.load(result["last"], weights_only=True)
    assert state["machine"]["precision"] == used and state["machine"]["cpu"]
    from FusionLungSegLib.nets.encoders import use_torchvision

    assert state["machine"]["resnet_trunk"].startswith("torchvision" if use_torchvision() else "built-in")
    assert result["history"][-1]["precision"] == used


def test_fine_tuning_refuses_a_split_whose_validation_the_weights_trained_on(run, tmp_path):
    cfg, result = run
    weights = tmp_path / "w.pt"
    export_weights(result["best"], weights)
    other = {**cfg.__dict__, "out_dir": str(tmp_path / "ft"), "init_weights": str(weights), "epochs": 1}
    with pytest.raises(ValueError, match="validation would not be held out"):
        train(TrainConfig(**{**other, "seed": 3}), progress=False)


def test_cut_fields_of_view_join_the_batches_and_are_recorded(tmp_path):
    cfg = tiny_train_config(tmp_path, batch_size=4, fov_fraction=0.3, fov_variants=2)
    result = train(cfg, progress=False)
    assert 0.0 <= result["history"][0]["val_iou_fov"] <= 1.0  # cut copies of the validation slices, scored apart
    info = export_weights(tmp_path / "last.pt", tmp_path / "w.pt")
    assert info["meta"]["fov_cuts"] == {"fraction": 0.3, "variants": 2, "kinds": "zoom,half,depth,lung_roi,rectangle"}
    _, meta = load_weights(tmp_path / "w.pt", info["sha256"])
    assert meta["fov_cuts"]["fraction"] == 0.3
