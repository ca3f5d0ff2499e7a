"""A training run's slices and batches: the sets read and split once, prepared as network tensors, and
the batches drawn from them (lung slices, cut fields of view, lung-free slices, augmentation, sizes)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..nets.preprocess import enhance_slices, mask_to_network, to_network
from .config import TrainConfig
from .data import (
    Augment,
    SliceSet,
    attach_crop_boxes,
    load_finding_lungs,
    load_hu_labelled_slices,
    load_lung_free_slices,
    split_by_case,
)
from .fov import fov_cut_variants, fov_kinds

__all__ = ["RunData", "load_run_data", "Batches", "to_network_set"]


def to_network_set(slices: SliceSet, size: int, window) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input and target of every slice, each cropped to its own ``boxes`` entry."""
    xs, ms = [], []
    for i in range(len(slices)):
        x, frame = to_network(slices.images[i : i + 1], size, slices.spacing_yx[i], window, slices.boxes[i])
        xs.append(x)
        ms.append(mask_to_network(slices.masks[i : i + 1], frame))
    if not xs:
        return torch.zeros(0, 1, size, size), torch.zeros(0, 1, size, size)
    return torch.cat(xs), (torch.cat(ms) > 0.5).float()


@dataclass
class RunData:
    """A run's slices: the sets (for names and validation) and the training tensors at the largest size."""

    train_set: SliceSet
    val_set: SliceSet
    free_set: SliceSet
    free_val: SliceSet
    base_set: SliceSet
    fov_val: SliceSet
    images: torch.Tensor  # lung slices (Kaggle and HU-labelled lung bases), (N, 1, S, S) in [0, 1]
    masks: torch.Tensor
    free_images: torch.Tensor  # lung-free slices of real volumes
    fov_images: torch.Tensor  # cut fields of view of the lung slices
    fov_masks: torch.Tensor
    all_names: list[str]

    def names_recorded(self) -> dict[str, list[str]]:
        """The slices each checkpoint names: validation, lung-free and HU-labelled training slices."""
        return {
            "validation": self.val_set.names,
            "lung_free_train": self.free_set.names,
            "hu_labelled_train": self.base_set.names,
        }


def load_run_data(cfg: TrainConfig, out: Path) -> RunData:
    """Read, split and prepare every set of slices the run uses; writes ``out/split.json``."""
    data = load_finding_lungs(cfg.data, limit=cfg.limit)
    if cfg.body_crop:
        attach_crop_boxes(data)
    train_idx, val_idx = split_by_case(data.cases, cfg.val_fraction, cfg.seed)
    train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    empty = SliceSet(np.zeros((0, 1, 1), np.int16), np.zeros((0, 1, 1), bool), [], [])
    free_set = load_lung_free_slices(cfg.lung_free_data, "train") if cfg.lung_free_fraction > 0 else empty
    free_val = load_lung_free_slices(cfg.lung_free_data, "held-out") if cfg.lung_free_fraction > 0 else empty
    base_set = load_hu_labelled_slices(cfg.lung_free_data) if cfg.hu_labelled else empty
    if not cfg.body_crop:  # the volumes' boxes come with them; without the crop the whole slice is used
        for s in (free_set, free_val, base_set):
            s.boxes = [None] * len(s)
    if cfg.enhance:  # boxes stay those of the raw slices, as at inference
        for s in (train_set, val_set, free_set, free_val, base_set):
            s.images = np.round(enhance_slices(s.images)).astype(np.int16) if len(s) else s.images
    split = {
        "seed": cfg.seed,
        "train": train_set.names,
        "validation": val_set.names,
        "lung_free_train": free_set.names,
        "lung_free_held_out": free_val.names,
        "hu_labelled_train": base_set.names,
    }
    (out / "split.json").write_text(json.dumps(split, indent=1))
    images, masks = to_network_set(train_set, cfg.input_size, cfg.hu_window)
    if len(base_set):  # lung-base slices with HU-derived masks join the lung slices
        base_images, base_masks = to_network_set(base_set, cfg.input_size, cfg.hu_window)
        images, masks = torch.cat([images, base_images]), torch.cat([masks, base_masks])
    free_images, _ = to_network_set(free_set, cfg.input_size, cfg.hu_window)
    fov_images = fov_masks = torch.zeros(0)
    fov_val = empty
    if cfg.fov_fraction > 0:  # cut fields of view of the lung slices (and of the validation slices, scored apart)
        parts = [
            to_network_set(
                fov_cut_variants(s, cfg.fov_variants, cfg.seed + k, kinds=fov_kinds(cfg.fov_kinds)),
                cfg.input_size,
                cfg.hu_window,
            )
            for k, s in enumerate((train_set, base_set))
            if len(s)
        ]
        fov_images, fov_masks = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        fov_val = fov_cut_variants(val_set, 1, cfg.seed + 100) if len(val_set) else empty
    return RunData(
        train_set,
        val_set,
        free_set,
        free_val,
        base_set,
        fov_val,
        images,
        masks,
        free_images,
        fov_images,
        fov_masks,
        list(data.names),
    )


class Batches:
    """The batches of one run: lung slices, a share replaced by cut fields of view, lung-free slices added,
    augmented and resized to a size drawn per batch; every draw from the run's generator, in a fixed order."""

    def __init__(self, cfg: TrainConfig, data: RunData, gen: torch.Generator):
        self.data, self.gen = data, gen
        self.augment = Augment(generator=gen) if cfg.augment else None
        self.sizes = [cfg.input_size]
        if cfg.min_input_size:
            self.sizes = list(range(cfg.min_input_size, cfg.input_size + 1, 32)) or [cfg.input_size]
        self.n = len(data.images)
        # Each batch: n_free lung-free slices (drawn at random) and the rest from the lung slices.
        has_free = len(data.free_images)
        self.n_free = min(cfg.batch_size - 1, max(1, round(cfg.batch_size * cfg.lung_free_fraction))) if has_free else 0
        self.per_batch = cfg.batch_size - self.n_free
        # Of the lung slices, n_fov are replaced by cut fields of view (the steps per epoch stay the same).
        has_fov = len(data.fov_images)
        self.n_fov = min(self.per_batch - 1, max(1, round(self.per_batch * cfg.fov_fraction))) if has_fov else 0
        self.steps = math.ceil(self.n / self.per_batch)

    def batch(self, perm: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, gen = self.data, self.gen
        idx = perm[step * self.per_batch : (step + 1) * self.per_batch]
        x, y = d.images[idx], d.masks[idx]
        if self.n_fov and len(idx) > self.n_fov:
            pick = torch.randint(len(d.fov_images), (self.n_fov,), generator=gen)
            x = torch.cat([x[: -self.n_fov], d.fov_images[pick]])
            y = torch.cat([y[: -self.n_fov], d.fov_masks[pick]])
        if self.n_free:
            pick = torch.randint(len(d.free_images), (self.n_free,), generator=gen)
            x = torch.cat([x, d.free_images[pick]])
            y = torch.cat([y, torch.zeros_like(d.free_images[pick])])
        if self.augment is not None:
            x, y = self.augment(x, y)
        size = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=gen))]
        if size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            y = (torch.nn.functional.interpolate(y, size=(size, size), mode="bilinear") > 0.5).float()
        return x, y
