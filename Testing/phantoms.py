"""Canonical CT phantoms ``[z, y, x]`` in HU with the things real scans hold besides lungs.

Sizes are in millimetres, so the same phantom can be drawn at any pixel size.
y runs anterior -> posterior (the table is at high y), x patient right -> left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Phantom:
    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool mask


def chest(
    slices: int = 24,
    pixels: int = 256,
    pixel_mm: float = 1.95,
    slice_mm: float = 5.0,
    body_mm: tuple[float, float] = (240.0, 340.0),
    centre_mm: tuple[float, float] | None = None,
    table: bool = False,
    cushion: bool = False,
    circular_fov: bool = False,
    abdomen_gas: bool = False,
    trachea: bool = False,
    heart: bool = False,
) -> Phantom:
    """A chest in air: body ellipse (``body_mm`` = AP x lateral), two lungs on the middle slices.

    Options add a carbon table under the back (thin top shell touching the skin, foam
    core, a base plate), an air cushion whose thin shell touches the skin, -3024 HU
    padding outside a circular field of view, gas pockets in the abdomen (slices
    below the lungs), a trachea above the lungs and a heart left of the midline that hollows the
    lungs' medial sides.
    """
    size_mm = pixels * pixel_mm
    y, x = (np.mgrid[:pixels, :pixels] + 0.5) * pixel_mm
    cy, cx = centre_mm if centre_mm is not None else (size_mm * 0.45, size_mm / 2)
    ay, ax = body_mm[0] / 2, body_mm[1] / 2
    body2d = ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 < 1
    hu = np.full((slices, pixels, pixels), -1000, np.int16)
    parts = {k: np.zeros(hu.shape, bool) for k in ("body", "lung_right", "lung_left", "table", "cushion_air", "gas")}
    lung_z = range(slices // 4, slices - slices // 6)
    back = cy + ay  # posterior skin at the midline
    for z in range(slices):
        hu[z][body2d] = 40
        parts["body"][z] = body2d
        if z in lung_z:
            t = (z - lung_z.start) / max(1, len(lung_z) - 1)
            scale = 0.55 + 0.45 * np.sin(np.pi * min(1.0, 0.3 + t))  # wider at the base
            for name, side in (("lung_right", -1), ("lung_left", 1)):
                lx = cx + side * ax * 0.45
                lung = ((y - cy) / (ay * 0.62 * scale)) ** 2 + ((x - lx) / (ax * 0.3 * scale)) ** 2 < 1
                if heart:  # anterior, left of the midline, as a heart is
                    lung &= ((y - (cy - ay * 0.15)) / (ay * 0.4)) ** 2 + ((x - (cx + ax * 0.1)) / (ax * 0.3)) ** 2 >= 1
                hu[z][lung] = -850
                parts[name][z] = lung
        if trachea and z >= lung_z.stop - 3:
            tube = (y - (cy - ay * 0.45)) ** 2 + (x - cx) ** 2 < 9.0**2
            hu[z][tube] = -1000
            parts["gas"][z] |= tube if z >= lung_z.stop else False
        if abdomen_gas and z < lung_z.start - 1:  # one slice of diaphragm between gas and lung
            for gy, gx, r in ((cy - ay * 0.3, cx + ax * 0.3, 25.0), (cy + ay * 0.1, cx - ax * 0.25, 15.0)):
                pocket = (y - gy) ** 2 + (x - gx) ** 2 < r * r
                hu[z][pocket] = -990
                parts["gas"][z] |= pocket
    if table:  # 2 mm top shell touching the skin, 40 mm of foam, 3 mm base plate, 380 mm wide
        width = np.abs(x - cx) < 190
        top = width & (y >= back - 1) & (y < back + 2)
        foam = width & (y >= back + 2) & (y < back + 42)
        base = width & (y >= back + 42) & (y < back + 45)
        hu[:, top | base] = 300
        hu[:, foam] = -950
        parts["table"][:] = top | base
    if cushion:  # air cushion under the back, its 2 mm vinyl shell pressed against the skin
        width = np.abs(x - cx) < 150
        shell = width & (((y >= back - 2) & (y < back)) | ((y >= back + 38) & (y < back + 40)))
        shell |= (np.abs(np.abs(x - cx) - 149) < 1) & (y >= back - 2) & (y < back + 40)
        air = width & (y >= back) & (y < back + 38) & ~shell
        hu[:, air & ~body2d] = -980
        hu[:, shell & ~body2d] = 0
        parts["cushion_air"][:] = air & ~body2d
        parts["table"][:] |= shell & ~body2d
    if circular_fov:
        outside = (y - size_mm / 2) ** 2 + (x - size_mm / 2) ** 2 > (size_mm / 2) ** 2
        hu[:, outside] = -3024
    return Phantom(hu, (slice_mm, pixel_mm, pixel_mm), parts)
