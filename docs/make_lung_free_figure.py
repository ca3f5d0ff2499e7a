"""Draw docs/lung_free_boundaries.jpg: for every range of recorded lung-free slices, the slice at its
edge next to the lungs and the slices beyond it, up to the nearest slice that holds lung.

    python docs/make_lung_free_figure.py [DATA_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import SimpleITK as sitk

from FusionLungSegLib.core.geometry import AxialReorientation
from FusionLungSegLib.io import read_image
from FusionLungSegLib.training.data import default_data_dir, lung_free_catalogue

TILE = 200


def _tile(hu2d: np.ndarray, text: str, colour) -> np.ndarray:
    g = (np.clip((hu2d.astype(np.float32) + 1000) / 1200, 0, 1) * 255).astype(np.uint8)
    g = cv2.cvtColor(cv2.resize(g, (TILE, TILE), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    cv2.rectangle(g, (0, 0), (TILE - 1, TILE - 1), colour, 3)
    for k, line in enumerate(text.split("\n")):
        y = 18 + 16 * k
        cv2.putText(g, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(g, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return g


def main(data_dir: Path) -> Path:
    rows = []
    for entry in lung_free_catalogue()["volumes"]:
        img = read_image(data_dir / entry["path"])
        hu = AxialReorientation.from_image(img).to_canonical(sitk.GetArrayFromImage(img))
        n = hu.shape[0]
        name = Path(entry["path"]).name.split(".")[0][:28]
        for first, last in entry["ranges"]:
            # Toward the lungs: above a range at the scan's bottom, below a range at its top.
            toward = 1 if first == 0 else -1
            edge = last if toward == 1 else first
            zs = [edge - toward, edge] + [edge + toward * k for k in range(1, 4)]
            tiles = []
            for z in zs:
                if not 0 <= z < n:
                    continue
                free = first <= z <= last
                label = f"{name}\nslice {z} ({entry['use']})\n" + ("recorded lung-free" if free else "not recorded")
                tiles.append(_tile(hu[z], label, (60, 180, 60) if free else (40, 40, 200)))
            rows.append(np.hstack(tiles + [np.zeros_like(tiles[0])] * (5 - len(tiles))))
    out = Path(__file__).with_name("lung_free_boundaries.jpg")
    cv2.imwrite(str(out), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default_data_dir()))
