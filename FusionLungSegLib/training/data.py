"""Training data: 2D CT slices with binary lung masks, seeded splits, CT-safe augmentation.

A :class:`SliceSet` holds HU slices ``images`` (N, H, W) int16, masks
``masks`` (N, H, W) bool, one case id per slice, the in-plane spacing
``spacing_yx`` (mm, or None where unknown, as on the Kaggle slices) of each
slice and the body crop box the network sees (see :mod:`body`).
"""

from __future__ import annotations

import math
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SliceSet",
    "default_data_dir",
    "finding_lungs_path",
    "load_finding_lungs",
    "load_volume_slices",
    "load_lung_free_slices",
    "load_hu_labelled_slices",
    "hu_lung_mask",
    "lung_free_catalogue",
    "attach_crop_boxes",
    "concat_slice_sets",
    "split_by_case",
    "Augment",
]

FINDING_LUNGS_ARCHIVE = "finding-lungs-2d.tar.gz"
FINDING_LUNGS_DIR = "finding-lungs-in-ct-data"


@dataclass
class SliceSet:
    images: np.ndarray  # (N, H, W) int16 HU
    masks: np.ndarray  # (N, H, W) bool
    cases: list[str]
    names: list[str]
    spacing_yx: list[tuple[float, float] | None] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)  # body crop per slice

    def __post_init__(self):
        n = len(self.images)
        if not self.spacing_yx:
            self.spacing_yx = [None] * n
        if not self.boxes:
            self.boxes = [None] * n
        if not (len(self.masks) == len(self.cases) == len(self.names) == len(self.spacing_yx) == len(self.boxes) == n):
            raise ValueError("images, masks, cases, names, spacing and boxes must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> SliceSet:
        idx = list(indices)
        return SliceSet(
            self.images[idx],
            self.masks[idx],
            [self.cases[i] for i in idx],
            [self.names[i] for i in idx],
            [self.spacing_yx[i] for i in idx],
            [self.boxes[i] for i in idx],
        )


def concat_slice_sets(*sets: SliceSet) -> SliceSet:
    """One :class:`SliceSet` holding the slices of ``sets`` in order (same slice size)."""
    sets = [s for s in sets if len(s)]
    if not sets:
        raise ValueError("nothing to concatenate")
    return SliceSet(
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.masks for s in sets]),
        [c for s in sets for c in s.cases],
        [n for s in sets for n in s.names],
        [sp for s in sets for sp in s.spacing_yx],
        [b for s in sets for b in s.boxes],
    )


def attach_crop_boxes(slices: SliceSet) -> SliceSet:
    """Fill in the body crop box of every slice that has none, from that slice alone (2D slices).

    Slices cut from a volume get their boxes from the volume's 3D body mask
    instead (:func:`load_volume_slices`), as at inference.
    """
    from ..core.body import body_mask, crop_box

    for i, box in enumerate(slices.boxes):
        if box is None:
            sp = slices.spacing_yx[i]
            body = body_mask(slices.images[i : i + 1], None if sp is None else (1.0, *sp))
            slices.boxes[i] = crop_box(body[0], sp)
    return slices


def default_data_dir() -> Path:
    """``$FUSIONLUNGSEG_DATA``, else ``shared/data`` beside the repository checkout."""
    env = os.environ.get("FUSIONLUNGSEG_DATA")
    if env:
        return Path(env)
    from ..resources import PACKAGE_DIR

    return PACKAGE_DIR.parent.parent / "shared" / "data"  # the checkout's folder, then its shared/ beside it


def finding_lungs_path(data_dir: str | Path | None = None) -> Path:
    """Path of the Kaggle "Finding and Measuring Lungs in CT Data" archive or folder."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    for candidate in (root / FINDING_LUNGS_ARCHIVE, root / FINDING_LUNGS_DIR, root):
        if candidate.is_file() or (candidate / "2d_images").is_dir():
            return candidate
    raise FileNotFoundError(
        f"Kaggle lung slices not found under {root}: expected {FINDING_LUNGS_ARCHIVE} or "
        f"{FINDING_LUNGS_DIR}/2d_images (set FUSIONLUNGSEG_DATA or pass the path)"
    )


def _decode_tif(data: bytes, name: str) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"cannot decode TIFF {name}")
    return arr


def load_finding_lungs(
    path: str | Path | None = None, limit: int | None = None, names: list[str] | None = None
) -> SliceSet:
    """Load the Kaggle lung slices (512x512 int16 HU TIFFs + 0/255 masks).

    ``path``: the ``.tar.gz`` archive, the extracted folder, or None for the
    default data folder.  ``limit`` keeps the first N slices by name;
    ``names`` keeps only those file names.  One slice per case: case id is
    the ``ID_xxxx`` prefix.
    """
    src = Path(path) if path is not None else finding_lungs_path()
    if not (src.is_file() or (src / "2d_images").is_dir()):
        src = finding_lungs_path(src)
    pairs: dict[str, dict[str, bytes]] = {}
    if src.is_file():
        with tarfile.open(src) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".tif")]
            for m in members:
                kind = "image" if "/2d_images/" in m.name else "mask" if "/2d_masks/" in m.name else None
                name = Path(m.name).name
                if kind and (names is None or name in names):
                    pairs.setdefault(name, {})[kind] = tar.extractfile(m).read()
    else:
        for kind, sub in (("image", "2d_images"), ("mask", "2d_masks")):
            for f in sorted((src / sub).glob("*.tif")):
                if names is None or f.name in names:
                    pairs.setdefault(f.name, {})[kind] = f.read_bytes()
    keys = sorted(k for k, v in pairs.items() if "image" in v and "mask" in v)
    if limit is not None:
        keys = keys[:limit]
    if not keys:
        raise FileNotFoundError(f"no image/mask TIFF pairs found in {src}")
    images = np.stack([_decode_tif(pairs[k]["image"], k).astype(np.int16) for k in keys])
    masks = np.stack([_decode_tif(pairs[k]["mask"], k) > 0 for k in keys])
    cases = [k.split("_Z_")[0] for k in keys]
    return SliceSet(images, masks, cases, keys)  # pixel spacing unknown: not stored in the TIFFs


def load_volume_slices(
    image_path: str | Path,
    mask_path: str | Path | None,
    case: str | None = None,
    axial_only_with_lung: bool = False,
    slices=None,
    lung_from_hu=None,
) -> SliceSet:
    """Read a CT volume (file or DICOM folder) and its lung mask as canonical axial slices.

    Slices are reoriented with :class:`geometry.AxialReorientation`; the mask is
    binarised (any non-zero label is lung).  ``mask_path`` None means "no lung"
    (all-zero masks), unless ``lung_from_hu(hu, spacing_zyx, body)`` derives the
    mask from the canonical volume (e.g. :func:`hu_lung_mask`).  ``slices``:
    canonical indices to keep (0 = most inferior).  Each slice's crop box comes
    from the volume's 3D body mask, as at inference.
    """
    import SimpleITK as sitk

    from ..core.body import body_mask, crop_box
    from ..core.geometry import AxialReorientation
    from ..io import read_image

    img = read_image(image_path)
    reo = AxialReorientation.from_image(img)
    hu = reo.to_canonical(sitk.GetArrayViewFromImage(img)).astype(np.int16)
    body = body_mask(hu, reo.spacing_zyx)
    if mask_path is not None:
        msk = read_image(mask_path)
        if img.GetSize() != msk.GetSize():
            raise ValueError(f"{mask_path}: mask size {msk.GetSize()} differs from image size {img.GetSize()}")
        lung = reo.to_canonical(sitk.GetArrayViewFromImage(msk)) > 0
    elif lung_from_hu is not None:
        lung = lung_from_hu(hu, reo.spacing_zyx, body)
    else:
        lung = np.zeros(hu.shape, bool)
    keep = np.arange(hu.shape[0]) if slices is None else np.asarray(list(slices), int)
    if keep.size and (keep.min() < 0 or keep.max() >= hu.shape[0]):
        raise ValueError(f"{image_path}: slice numbers must lie in 0..{hu.shape[0] - 1}")
    if axial_only_with_lung:
        keep = keep[lung[keep].any(axis=(1, 2))]
    spacing_yx = reo.spacing_zyx[1:]
    case = case or Path(image_path).name.split(".")[0]
    return SliceSet(
        np.ascontiguousarray(hu[keep]),
        np.ascontiguousarray(lung[keep]),
        [case] * len(keep),
        [f"{case}_z{int(z):04d}" for z in keep],
        [spacing_yx] * len(keep),
        [crop_box(body[z], spacing_yx) for z in keep],
    )


def hu_lung_mask(hu: np.ndarray, spacing_zyx, body: np.ndarray, air_hu: float = -400.0, min_ml: float = 100.0):
    """A lung mask from HU alone, for slices through the lung bases: air inside the body in 3D
    components of ``min_ml`` or more, holes filled per slice.  Not for slices with the trachea."""
    from scipy import ndimage

    from ..core.masks import CONN6, fill_holes_axial

    labels, n = ndimage.label((np.asarray(hu) < air_hu) & body, structure=CONN6)
    ml = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing_zyx)) / 1000.0
    keep = ml >= min_ml
    keep[0] = False
    return fill_holes_axial(keep[labels])


def load_hu_labelled_slices(data_dir: str | Path | None = None) -> SliceSet:
    """Slices through the lung bases of real volumes with HU-derived lung masks (``hu_labelled_slices.json``).

    Volumes missing from ``data_dir`` are skipped with a warning.
    """
    import json
    import warnings

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    catalogue = json.loads(Path(__file__).with_name("hu_labelled_slices.json").read_text())
    parts = []
    for entry in catalogue["volumes"]:
        path = root / entry["path"]
        if not path.exists():
            warnings.warn(f"HU-labelled slices: {path} not found, skipped", stacklevel=2)
            continue
        keep = [z for first, last in entry["ranges"] for z in range(first, last + 1)]
        case = Path(entry["path"]).name.split(".")[0]
        parts.append(load_volume_slices(path, None, case=case, slices=keep, lung_from_hu=hu_lung_mask))
    if not parts:
        return SliceSet(np.zeros((0, 1, 1), np.int16), np.zeros((0, 1, 1), bool), [], [])
    return concat_slice_sets(*parts)


def lung_free_catalogue() -> dict:
    """The recorded lung-free slices (``lung_free_slices.json`` beside this module)."""
    import json

    return json.loads((Path(__file__).with_name("lung_free_slices.json")).read_text())


def load_lung_free_slices(data_dir: str | Path | None = None, use: str = "train") -> SliceSet:
    """Slices recorded as holding no lung, with all-zero masks, for ``use`` "train" or "held-out".

    Volumes missing from ``data_dir`` are skipped with a warning, so training on
    the Kaggle slices alone still works where the volumes are absent.
    """
    import warnings

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    parts = []
    for entry in lung_free_catalogue()["volumes"]:
        if entry["use"] != use:
            continue
        path = root / entry["path"]
        if not path.exists():
            warnings.warn(f"lung-free slices: {path} not found, skipped", stacklevel=2)
            continue
        indices = [z for first, last in entry["ranges"] for z in range(first, last + 1)]
        parts.append(load_volume_slices(path, None, case=Path(entry["path"]).name.split(".")[0], slices=indices))
    if not parts:
        return SliceSet(np.zeros((0, 1, 1), np.int16), np.zeros((0, 1, 1), bool), [], [])
    shapes = {p.images.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"lung-free volumes have different slice sizes {shapes}")
    return concat_slice_sets(*parts)


def split_by_case(cases: list[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split of slice indices so that no case is on both sides."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(cases))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = int(round(val_fraction * len(unique)))
    val_cases = {unique[i] for i in order[:n_val]}
    train = [i for i, c in enumerate(cases) if c not in val_cases]
    val = [i for i, c in enumerate(cases) if c in val_cases]
    return train, val


class Augment:
    """Batch augmentation on network tensors (N, 1, S, S) image in [0, 1] and mask.

    Geometric: rotation (degrees), isotropic scale, translation (fraction of
    size), applied identically to image and mask.  No left/right or
    anterior/posterior flips: the anatomy is not mirror-symmetric (``hflip``
    enables left/right flips for binary masks only).  Intensity: offset and
    contrast jitter in HU-equivalent units, Gaussian noise and gamma.
    """

    def __init__(
        self,
        rotation: float = 10.0,
        scale: tuple[float, float] = (0.8, 1.15),
        translate: float = 0.08,
        hu_offset: float = 60.0,
        contrast: tuple[float, float] = (0.9, 1.1),
        noise: float = 0.02,
        gamma: tuple[float, float] = (0.8, 1.25),
        hflip: float = 0.0,
        window_width: float = 1400.0,
        generator: torch.Generator | None = None,
    ):
        self.rotation, self.scale, self.translate = rotation, scale, translate
        self.hu_offset, self.contrast, self.noise, self.gamma = hu_offset, contrast, noise, gamma
        self.hflip, self.window_width = hflip, window_width
        self.generator = generator

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = image.shape[0]
        angle = self._uniform(n, -self.rotation, self.rotation) * math.pi / 180
        scale = torch.exp(self._uniform(n, math.log(self.scale[0]), math.log(self.scale[1])))
        shift = self._uniform(2 * n, -self.translate, self.translate).view(n, 2) * 2
        flip = torch.where(torch.rand(n, generator=self.generator) < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mask = F.grid_sample(mask, grid.to(mask.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        mask = (mask > 0.5).to(image.dtype)
        # Intensity: offset and contrast around the window centre, then gamma and noise.
        offset = self._uniform(n, -self.hu_offset, self.hu_offset) / self.window_width
        contrast = self._uniform(n, *self.contrast)
        gamma = self._uniform(n, *self.gamma)
        image = ((image - 0.5) * contrast.view(n, 1, 1, 1) + 0.5 + offset.view(n, 1, 1, 1)).clamp(0, 1)
        image = image ** gamma.view(n, 1, 1, 1)
        if self.noise > 0:
            image = image + self.noise * torch.randn(image.shape, generator=self.generator) * torch.rand(
                n, 1, 1, 1, generator=self.generator
            )
        return image.clamp(0, 1), mask
