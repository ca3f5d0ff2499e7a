"""Bundled weights: location, sha256 check, safe loading (``weights_only=True``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..resources import PACKAGE_DIR, resources_dir

__all__ = [
    "BUNDLED_WEIGHTS",
    "BUNDLED_SHA256",
    "WeightsError",
    "sha256_of",
    "bundled_weights_path",
    "resources_dir",
    "load_weights",
    "describe_model",
    "model_name",
]

#: File name of the bundled model inside ``Resources/``.
BUNDLED_WEIGHTS = "FusionLungNet.pt"
#: sha256 of the bundled file; a file with another hash is refused.
BUNDLED_SHA256 = "7647990949c8ee76687fe9c0b7fbb7e32d1dba2324d42e17910d00d703b3995a"


class WeightsError(RuntimeError):
    """Weights are missing, damaged, tampered with or of the wrong kind."""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _missing_model_help(package_dir: Path | None = None) -> str:
    """Why the bundled model file is not where it should be, and what to run."""
    package = Path(package_dir).resolve() if package_dir is not None else PACKAGE_DIR
    res = resources_dir(package)
    expected = res / BUNDLED_WEIGHTS
    own_weights = "Or use weights of your own: `segment --weights PATH`, LungSegmenter(weights=PATH)."
    if (package.parent / "pyproject.toml").is_file() and (package.parent / "Resources").is_dir():
        return (
            f"the bundled model {expected} is missing from this source checkout (editable install or "
            "PYTHONPATH). Restore it with `git checkout -- Resources/FusionLungNet.pt` (or `git lfs pull` where "
            f"the repository keeps it in Git LFS). {own_weights}"
        )
    if not res.is_dir():
        return (
            f"the bundled model is missing: the installed package {package} has no Resources/ folder, so it was "
            "installed without its package data (a wheel or sdist built without Resources/, or FusionLungSegLib/ "
            "copied on its own). Reinstall from a full checkout: `pip install --force-reinstall "
            f"/path/to/FusionLungSeg` (not only FusionLungSegLib/). {own_weights}"
        )
    present = ", ".join(sorted(p.name for p in res.iterdir())) or "nothing"
    return (
        f"the bundled model {expected} is missing ({res} holds {present}); the package data is incomplete. "
        f"Reinstall: `pip install --force-reinstall /path/to/FusionLungSeg`. {own_weights}"
    )


def bundled_weights_path(package_dir: str | Path | None = None) -> Path:
    """Path of the bundled weights; raises :class:`WeightsError` that names the cause when they are missing."""
    path = resources_dir(package_dir) / BUNDLED_WEIGHTS
    if not BUNDLED_SHA256:
        raise WeightsError(
            f"no trained FusionLungNet weights are bundled (expected {path}). "
            "Train with `python -m FusionLungSegLib train` and pass the exported file, "
            "e.g. LungSegmenter(weights='path/to/FusionLungNet.pt') or `segment --weights PATH`."
        )
    if not path.is_file():
        raise WeightsError(_missing_model_help(package_dir))
    if path.stat().st_size < 1024 and path.read_bytes().startswith(b"version https://git-lfs"):
        raise WeightsError(
            f"{path} is a Git LFS pointer, not the model: run `git lfs pull` in the checkout, then reinstall."
        )
    return path


def load_weights(path: str | Path | None = None, sha256: str | None = None) -> tuple[dict, dict]:
    """Load ``(state_dict, meta)`` from a weights file, safely.

    ``path=None`` loads the bundled file and checks it against
    :data:`BUNDLED_SHA256`; for another file, ``sha256`` (if given) is checked.
    Only ``torch.load(weights_only=True)`` is used, so pickled code is refused.
    Accepts the exported format ``{"state_dict", "meta"}``, a training
    checkpoint ``{"model", ...}`` or a bare state dict.
    """
    if path is None:
        path, sha256 = bundled_weights_path(), BUNDLED_SHA256
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    if sha256:
        actual = sha256_of(p)
        if actual != sha256.lower():
            raise WeightsError(
                f"{p}: sha256 mismatch (expected {sha256}, got {actual}); the file is damaged or was "
                "replaced. Restore it from the release or reinstall the extension."
            )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in several types
        raise WeightsError(
            f"{p}: not a loadable weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Only plain tensor state dicts are accepted (weights_only=True)."
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{p}: expected a dict of tensors, got {type(obj).__name__}")
    meta: dict = {}
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state, meta = obj["state_dict"], dict(obj.get("meta") or {})
    elif "model" in obj and isinstance(obj["model"], dict):
        state, meta = obj["model"], {"input_size": obj.get("config", {}).get("input_size", 320)}
    else:
        state = obj
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{p}: not a FusionLungNet state dict (entries that are not tensors)")
    return state, meta


def model_name(meta: dict | None) -> str:
    """The weights' own ``version`` if recorded, else architecture, training size and epochs from their
    metadata (e.g. "FusionLungNet 224px 6 epochs")."""
    meta = meta or {}
    if meta.get("version"):
        return str(meta["version"])
    parts = [str(meta.get("architecture") or "FusionLungNet")]
    if meta.get("input_size"):
        parts.append(f"{meta['input_size']}px")
    if meta.get("epochs"):
        parts.append(f"{meta['epochs']} epochs")
    return " ".join(parts)


def describe_model(meta: dict | None, weights: str | Path | None = None, sha256: str | None = None) -> str:
    """Model version for DICOM SEG: :func:`model_name` with the file's sha256 (``sha256`` if already known,
    else hashed; bundled: the recorded one)."""
    digest = sha256 or (BUNDLED_SHA256 if weights is None else sha256_of(weights))
    return f"{model_name(meta)} sha256:{digest[:12]}" if digest else model_name(meta)
