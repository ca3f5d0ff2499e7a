"""The two lung segments, described once: label values, IDs, names, colour and SNOMED CT codes.

Every output that names the segments takes them from here: the MRML segmentation
(:mod:`FusionLungSegLib.mrml`), ``.seg.nrrd`` written with slicerio and DICOM SEG
written with highdicom (:mod:`FusionLungSegLib.io.outputs`).  No Slicer import.
"""

from __future__ import annotations

from dataclasses import dataclass

from .labels import LEFT_LUNG, RIGHT_LUNG

__all__ = [
    "Code",
    "LungSegment",
    "LUNG_SEGMENTS",
    "SEGMENTS",
    "LUNG_COLOUR",
    "CATEGORY_ANATOMICAL_STRUCTURE",
    "TYPE_LUNG",
    "MODIFIER_RIGHT",
    "MODIFIER_LEFT",
]

#: A coded concept as (coding scheme designator, code value, code meaning), e.g. ("SCT", "39607008", "Lung").
Code = tuple[str, str, str]

CATEGORY_ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
TYPE_LUNG: Code = ("SCT", "39607008", "Lung")
MODIFIER_RIGHT: Code = ("SCT", "24028007", "Right")
MODIFIER_LEFT: Code = ("SCT", "7771000", "Left")

#: Slicer's General Anatomy colour for lung (both sides), RGB 0..1.
LUNG_COLOUR = (197 / 255, 165 / 255, 145 / 255)

#: Context names of Slicer's terminology entry (category/type list, anatomic region list).
SLICER_TYPE_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class LungSegment:
    """One output segment: label value in the label map, and how Slicer and DICOM name it."""

    value: int
    id: str
    name: str
    modifier: Code
    category: Code = CATEGORY_ANATOMICAL_STRUCTURE
    type: Code = TYPE_LUNG
    colour: tuple[float, float, float] = LUNG_COLOUR

    @property
    def terminology(self) -> str:
        """Slicer terminology entry string: ``context~category~type~type modifier~anatomic context~region~modifier``."""
        fields = [SLICER_TYPE_CONTEXT, self.category, self.type, self.modifier, SLICER_ANATOMIC_CONTEXT, None, None]
        return "~".join(f if isinstance(f, str) else "^".join(f or ("", "", "")) for f in fields)


#: The segments in label order: 1 right lung, 2 left lung (the patient's sides).
LUNG_SEGMENTS = (
    LungSegment(RIGHT_LUNG, "right_lung", "right lung", MODIFIER_RIGHT),
    LungSegment(LEFT_LUNG, "left_lung", "left lung", MODIFIER_LEFT),
)

#: label value -> (segment ID, segment name, terminology entry, colour)
SEGMENTS = {s.value: (s.id, s.name, s.terminology, s.colour) for s in LUNG_SEGMENTS}
