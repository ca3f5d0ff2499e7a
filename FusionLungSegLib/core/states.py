"""Processing states of one segmentation run, shared by the front doors that show them (the Slicer panel,
:class:`FusionLungSegLib.mrml.SegmentationTask`): idle -> running -> (cancelling ->) done or failed."""

__all__ = ["IDLE", "RUNNING", "CANCELLING", "DONE", "FAILED", "STATES"]

IDLE, RUNNING, CANCELLING, DONE, FAILED = "idle", "running", "cancelling", "done", "failed"
STATES = (IDLE, RUNNING, CANCELLING, DONE, FAILED)
