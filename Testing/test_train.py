"""Training smoke run on real slices: loss goes down, resume continues, export loads safely."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA, require

from FusionLungSegLib.train import TrainConfig, export_weights, train
from FusionLungSegLib.weights import load_weights


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=str(require(DATA / "finding-lungs-2d.tar.gz")),
        out_dir=str(out),
        epochs=4,
        batch_size=3,
        input_size=64,
        limit=8,
        val_fraction=0.25,
        augment=False,
        device="cpu",
    )
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
