"""A real MRML scene from the slicer-core wheel (skips with the reason when the wheel is absent)."""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install slicer-core)")

from FusionLungSegLib.mrml import HeadlessSlicer  # noqa: E402


class SlicerSession(HeadlessSlicer):
    @property
    def volumes(self):
        return self.volumes_logic


_SHARED: list[SlicerSession] = []


def shared_session() -> SlicerSession:
    """One wired scene per process: the segmentations logic registers its converter rules in a
    process-wide singleton, so making a second one would register them twice."""
    if not _SHARED:
        _SHARED.append(SlicerSession())
    return _SHARED[0]
