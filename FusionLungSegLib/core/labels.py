"""Label values of the output label map: 0 background, 1 right lung, 2 left lung (patient's sides)."""

__all__ = ["BACKGROUND", "RIGHT_LUNG", "LEFT_LUNG"]

BACKGROUND = 0
RIGHT_LUNG = 1
LEFT_LUNG = 2
