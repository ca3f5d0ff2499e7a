"""Flip test-time augmentation on the held-out Kaggle slices: does averaging a left-right flip lift IoU?

python flip_tta.py WEIGHTS   (FUSIONLUNGSEG_DATA: the shared data folder)
"""

import os
import sys

import numpy as np
import torch

from FusionLungSegLib.evaluation.evaluate import evaluate_slices
from FusionLungSegLib.options import SegmentOptions
from FusionLungSegLib.training.data import load_finding_lungs

weights = sys.argv[1]
data = load_finding_lungs(os.environ.get("FUSIONLUNGSEG_DATA", "../shared/data"))
for size in (320, 224, 160):
    seg = SegmentOptions(weights=weights, input_size=size, precision="fp32", backend="torch", device="cpu").segmenter()
    names = set(seg.meta["validation"])
    subset = data.subset([i for i, n in enumerate(data.names) if n in names])
    eng = seg.predictor.engine
    plain = eng.probabilities
    rows0 = evaluate_slices(seg, subset)

    def tta(x, plain=plain):
        return (plain(x) + torch.flip(plain(torch.flip(x, dims=[-1])), dims=[-1])) / 2

    eng.probabilities = tta
    rows1 = evaluate_slices(seg, subset)
    eng.probabilities = plain
    i0 = np.array([r["iou"] for r in rows0])
    i1 = np.array([r["iou"] for r in rows1])
    worst = int(np.argmin(i0))  # the slice whose reference covers one lung only (scored apart, as in the notes)
    keep = [i for i in range(len(i0)) if i != worst]
    print(
        f"{size} px: IoU % on {len(i0)} slices {100 * i0.mean():.2f} -> {100 * i1.mean():.2f} with flip TTA; "
        f"on {len(keep)} (without {rows0[worst]['case']}) {100 * i0[keep].mean():.2f} -> {100 * i1[keep].mean():.2f}",
        flush=True,
    )
