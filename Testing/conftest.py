"""Shared fixtures: real data locations, a threshold "network" for geometry tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FUSIONLUNGSEG_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Tests run torch unless they ask for another engine (so labels compare exactly across processes), and
# exported ONNX graphs and backend verdicts go to a throw-away folder, never the user's cache.
os.environ.setdefault("FUSIONLUNGSEG_BACKEND", "torch")
if "FUSIONLUNGSEG_CACHE" not in os.environ:
    os.environ["FUSIONLUNGSEG_CACHE"] = tempfile.mkdtemp(prefix="fusionlungseg-cache-")
    atexit.register(shutil.rmtree, os.environ["FUSIONLUNGSEG_CACHE"], ignore_errors=True)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def engine_cache(tmp_path, monkeypatch):
    """A throw-away cache folder for exported graphs and backend verdicts, and no engine pinned for auto."""
    monkeypatch.setenv("FUSIONLUNGSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND", raising=False)
    return tmp_path / "cache"


def require(path: Path) -> Path:
    """Skip with a clear reason when a real-data file is absent."""
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set FUSIONLUNGSEG_DATA to the shared data folder)")
    return path


def tiny_train_config(out_dir, **options):
    """A TrainConfig for smoke runs on real slices: one epoch on the first four Kaggle slices at 64 px, on the
    CPU, without augmentation, lung-free or HU-labelled slices; ``options`` override any field."""
    from FusionLungSegLib.training.train import TrainConfig

    settings = dict(
        data=str(require(DATA / "finding-lungs-2d.tar.gz")),
        out_dir=str(out_dir),
        epochs=1,
        batch_size=2,
        input_size=64,
        limit=4,
        val_fraction=0.25,
        augment=False,
        device="cpu",
        lung_free_fraction=0.0,
        hu_labelled=False,
    )
    return TrainConfig(**{**settings, **options})


class ThresholdNet(nn.Module):
    """Stand-in network for geometry tests: 'lung' wherever the windowed input is dark.

    With the default HU window [-1000, 400], x < 0.2 means HU below -720.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.2 - x) * 50.0


@pytest.fixture
def threshold_net() -> nn.Module:
    return ThresholdNet()


def make_phantom(direction, spacing=(2.0, 2.5, 3.0), size=(48, 44, 40), rng_shift=(0.0, 0.0, 0.0)):
    """A chest phantom on a grid with the given ITK direction (LPS).

    Soft tissue (40 HU) everywhere, two ellipsoidal 'lungs' at -850 HU: the
    patient's right lung centred at LPS x = -30 mm, the left at x = +30 mm.
    Returns (image, lung_fn) where lung_fn(points_lps) -> 0/1/2 with a margin
    band labelled -1 (ambiguous near the surface).
    """
    import SimpleITK as sitk

    d = np.asarray(direction, float).reshape(3, 3)
    sp = np.asarray(spacing, float)
    sz = np.asarray(size)
    centre = np.asarray(rng_shift, float)
    origin = centre - d @ (sp * (sz - 1) / 2)
    k, j, i = np.meshgrid(*(np.arange(n) for n in sz[::-1]), indexing="ij")
    idx = np.stack([i, j, k], -1).reshape(-1, 3).astype(float)
    pts = origin + (idx * sp) @ d.T
    radii = np.array([22.0, 30.0, 36.0])

    def lung_fn(p):
        p = np.asarray(p, float)
        out = np.zeros(len(p), np.int8)
        for label, cx in ((1, -30.0), (2, 30.0)):
            r = np.sqrt((((p - centre - [cx, 0, 0]) / radii) ** 2).sum(1))
            out[r < 0.8] = label
            out[(r >= 0.8) & (r <= 1.25)] = -1
        return out

    inside = np.zeros(len(pts), bool)
    for cx in (-30.0, 30.0):
        inside |= (((pts - centre - [cx, 0, 0]) / radii) ** 2).sum(1) < 1
    hu = np.where(inside, -850, 40).astype(np.int16).reshape(tuple(sz[::-1]))
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(tuple(sp))
    img.SetOrigin(tuple(origin))
    img.SetDirection(tuple(d.ravel()))
    return img, lung_fn


def rotation(axis, degrees) -> np.ndarray:
    a = np.asarray(axis, float)
    a /= np.linalg.norm(a)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """An untrained FusionLungNet in the exported weights format (for pipeline and CLI tests)."""
    from FusionLungSegLib.nets.fusionlungnet import FusionLungNet

    torch.manual_seed(0)
    state = {k: v.half() if v.is_floating_point() else v for k, v in FusionLungNet().state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "random.pt"
    torch.save({"state_dict": state, "meta": {"input_size": 64, "hu_window": [-1000.0, 400.0]}}, path)
    return path


SAMPLE_DICOM = REPO / "Resources" / "Samples" / "lungmask_testdata"
