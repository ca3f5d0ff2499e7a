"""A real MRML scene from the slicer-core wheel (skips with the reason when the wheel is absent)."""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install slicer-core)")

from FusionLungSegLib.mrml import HeadlessSlicer  # noqa: E402


class SlicerSession(HeadlessSlicer):
    @property
    def volumes(self):
        return self.volumes_logic
