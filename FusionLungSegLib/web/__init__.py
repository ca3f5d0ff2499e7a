"""The web front door: ``fusionlungseg web`` serves a page (trame-slicer: 3D Slicer's views and segment editor
in a browser) that lists the CT scans under a data folder, segments one with the same pipeline as every other
front door, shows the lungs, volumes and QC, lets the user correct them and exports them.

:mod:`.session` holds what the page does (no trame, testable on a plain MRML scene); :mod:`.app` is the page.
Needs the extra ``[web]`` (``trame-slicer[standalone]``).
"""
