"""Dice per side between two runs' label maps of the same volumes (e.g. int8 against fp32).

    python bench/label_parity.py RUN_A RUN_B [--json OUT]

RUN_A and RUN_B are ``--out`` folders of ``bench/dev_volumes.py`` (label maps ``<name>_lungs.nii.gz``);
prints, per volume found in both, Dice of the right and left lung and the share of voxels that differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def compare(a_dir: Path, b_dir: Path) -> list[dict]:
    rows = []
    for a_path in sorted(a_dir.glob("*_lungs.nii.gz")):
        b_path = b_dir / a_path.name
        if not b_path.is_file():
            continue
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_path)))
        rows.append(
            {
                "volume": a_path.name[: -len("_lungs.nii.gz")],
                "dice_right": round(dice(a == 1, b == 1), 4),
                "dice_left": round(dice(a == 2, b == 2), 4),
                "voxels_differing": int(np.count_nonzero(a != b)),
                "share_differing": round(float(np.mean(a != b)), 6),
            }
        )
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = compare(Path(args.a), Path(args.b))
    for r in rows:
        print(
            f"{r['volume']}: Dice right {r['dice_right']}, left {r['dice_left']}, {r['voxels_differing']} voxels differ"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
