"""Where the bundled files live: ``Resources/`` (model and its sha256, sample CT, Slicer UI, icons, scripts).

Light on purpose (standard library only): the Slicer module asks it for its UI
file before torch is installed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE_DIR", "resources_dir", "resource_path", "sample_ct_path", "cache_dir"]

#: The ``FusionLungSegLib`` package folder this module was imported from.
PACKAGE_DIR = Path(__file__).resolve().parent


def resources_dir(package_dir: str | Path | None = None) -> Path:
    """The ``Resources/`` folder, wherever and however the library was installed.

    The one place that decides it, for every layout:

    - installed from a wheel or ``pip install <checkout>``: package data in
      ``FusionLungSegLib/Resources/`` (``pyproject.toml`` maps the checkout's
      ``Resources/`` to the package ``FusionLungSegLib.Resources``);
    - source checkout and editable install: ``Resources/`` beside ``FusionLungSegLib/``;
    - 3D Slicer extension: ``Resources/`` beside the module file, where CMake also
      installs ``FusionLungSegLib/``, so again beside the package.

    ``package_dir`` (default: this package) is for tests of other layouts.  When
    neither folder exists, the wheel location is returned, so that error
    messages name the place a normal install would use.
    """
    here = Path(package_dir).resolve() if package_dir is not None else PACKAGE_DIR
    for candidate in (here / "Resources", here.parent / "Resources"):
        if candidate.is_dir():
            return candidate
    return here / "Resources"


def resource_path(*parts: str, package_dir: str | Path | None = None) -> Path:
    """A path under :func:`resources_dir`, e.g. ``resource_path("UI", "FusionLungSeg.ui")``."""
    return resources_dir(package_dir).joinpath(*parts)


def sample_ct_path() -> Path:
    """The bundled sample CT (a DICOM series folder of two real chest slices)."""
    return resource_path("Samples", "lungmask_testdata")


def cache_dir() -> Path:
    """The user's cache folder for this package: exported ONNX graphs, engine verdicts, training runs
    (``runs/``).  ``$FUSIONLUNGSEG_CACHE`` if set, else ``$XDG_CACHE_HOME/fusionlungseg`` (on Windows
    ``%LOCALAPPDATA%\\fusionlungseg``), else ``~/.cache/fusionlungseg``.  Not created here."""
    import os

    env = os.environ.get("FUSIONLUNGSEG_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (os.environ.get("LOCALAPPDATA") if os.name == "nt" else None)
    return Path(base) / "fusionlungseg" if base else Path.home() / ".cache" / "fusionlungseg"
