"""Orientation handling: any scan -> canonical axial array and back, without resampling.

Canonical order is the numpy array ``[z, y, x]`` with z running inferior ->
superior, y anterior -> posterior (anterior at the top of a slice) and x
patient right -> patient left (radiological display: the patient's right is on
the image's left).  In ITK/DICOM (LPS) terms the three canonical axes point
along +S, +P and +L.

The image's own voxel axes are matched to these patient axes by their
direction cosines (nearest axis, each used once), so flips and permutations
are exact and an oblique scan is handled as its nearest orthogonal
orientation.  Nothing is interpolated: mapping back gives exactly the input grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AxialReorientation", "voxel_centres_lps"]


@dataclass(frozen=True)
class AxialReorientation:
    """Axis permutation and flips between a 3D image's array and canonical order.

    ``axes[c]`` is the numpy axis of the original ``[k, j, i]`` array that
    becomes canonical axis ``c`` (0 = z/S, 1 = y/P, 2 = x/L); ``flip[c]`` says
    whether it is reversed.  ``spacing_zyx`` is the canonical voxel size in mm.
    """

    axes: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    spacing_zyx: tuple[float, float, float]

    @classmethod
    def from_direction(cls, direction: np.ndarray | tuple, spacing_xyz: tuple) -> AxialReorientation:
        """Build from an ITK direction matrix (3x3, LPS, columns = voxel axes i, j, k)."""
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        if not np.all(np.isfinite(d)) or abs(np.linalg.det(d)) < 1e-6:
            raise ValueError(f"direction matrix is singular or not finite: {d.tolist()}")
        # Greedy assignment: largest |cosine| first, one voxel axis per patient axis.
        patient_of = [-1, -1, -1]
        used = set()
        for flat in np.argsort(-np.abs(d), axis=None):
            p, a = divmod(int(flat), 3)
            if patient_of[a] == -1 and p not in used:
                patient_of[a] = p
                used.add(p)
        axes, flip, spacing = [0, 0, 0], [False] * 3, [0.0] * 3
        for a in range(3):  # voxel axis a (i, j, k) is numpy axis 2 - a
            p = patient_of[a]
            c = 2 - p  # patient L(0) -> canonical x(2), P(1) -> y(1), S(2) -> z(0)
            axes[c] = 2 - a
            flip[c] = bool(d[p, a] < 0)
            spacing[c] = float(spacing_xyz[a])
        return cls(tuple(axes), tuple(flip), tuple(spacing))

    @classmethod
    def from_image(cls, image) -> AxialReorientation:
        """Build from a 3D ``SimpleITK.Image``."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls.from_direction(image.GetDirection(), image.GetSpacing())

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Original ``[k, j, i, ...]`` array -> canonical ``[z, y, x, ...]`` view (no copy)."""
        out = np.transpose(array, self.axes + tuple(range(3, array.ndim)))
        flips = tuple(c for c in range(3) if self.flip[c])
        return np.flip(out, flips) if flips else out

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Canonical ``[z, y, x, ...]`` array -> original ``[k, j, i, ...]`` order (a view)."""
        flips = tuple(c for c in range(3) if self.flip[c])
        out = np.flip(array, flips) if flips else array
        return np.transpose(out, tuple(np.argsort(self.axes)) + tuple(range(3, array.ndim)))


def voxel_centres_lps(image, index_kji: np.ndarray) -> np.ndarray:
    """Physical LPS positions (mm) of voxels given as rows of numpy indices (k, j, i)."""
    idx = np.asarray(index_kji, dtype=float)[:, ::-1]  # -> (i, j, k)
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    return origin + (idx * spacing) @ d.T
