"""Score the pipeline on every real dev volume: Dice/HD95 where lung labels exist, mL of lung on the
recorded lung-free slices, the QC verdict, and an axial strip PNG of each volume.

    python bench/dev_volumes.py --out runs/dev [--weights FILE] [--input-size N] [--precision P] [--data DIR]
    python bench/dev_volumes.py --out runs/dev --labels-dir DIR   # score label maps made earlier
    python bench/dev_volumes.py --out runs/crops --crops [--crop-names a,b] [--volumes a,b]

``--crops`` runs every dev volume with lungs through the crop suite of :mod:`FusionLungSegLib.evaluation.crops`
(cardiac field, Crop Volume ROIs, halves, anterior/posterior 60 %, upper/lower half) and compares each
crop's labels with the full volume's labels inside it (and with the reference where one exists): Dice
per side, share of a side labelled as the other, QC verdict. Writes ``OUT/crops.json``, a strip per crop and
each crop's label map (``crop_<volume>_<crop>_lungs.nii.gz``: two runs compare with ``bench/label_parity.py``).

``--labels-dir`` reads ``DIR/<name>_lungs.nii.gz`` instead of segmenting (e.g. an older version's output).
Writes ``OUT/dev_volumes.json`` and ``OUT/strip_<name>.png``; prints one line per volume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from FusionLungSegLib.core.geometry import AxialReorientation
from FusionLungSegLib.evaluation.crops import CROP_NAMES, compare_sides, crop_image, crop_suite, resample_like
from FusionLungSegLib.evaluation.evaluate import evaluate_label_images
from FusionLungSegLib.io import read_image, write_image
from FusionLungSegLib.io.png import axial_strip_png
from FusionLungSegLib.training.data import default_data_dir, lung_free_catalogue

#: name -> (CT path under data/, lung label path or None)
VOLUMES = {
    "C3N-00247_chest_ct": ("dev/C3N-00247_chest_ct.nii.gz", None),
    "LungPETCTDx_A0001_CT_5mm_kernelB": ("dev/LungPETCTDx_A0001_CT_5mm_kernelB.nii.gz", None),
    "NSCLCRadiomics_LUNG1-001_CT": (
        "dev/NSCLCRadiomics_LUNG1-001_CT.nii.gz",
        "dev/NSCLCRadiomics_LUNG1-001_lungmask.nii.gz",
    ),
    "totalsegmentator_abdomen_dicom": ("dev/totalsegmentator_abdomen_dicom", None),
}


def lung_free_ml(labels, ct_path: str) -> tuple[float, int]:
    """mL of lung on the slices recorded as lung-free for this volume, and how many slices that is."""
    entries = [e for e in lung_free_catalogue()["volumes"] if e["path"] == ct_path]
    if not entries:
        return 0.0, 0
    reo = AxialReorientation.from_image(labels)
    lab = reo.to_canonical(sitk.GetArrayViewFromImage(labels))
    zs = [z for e in entries for a, b in e["ranges"] for z in range(a, b + 1)]
    return float(np.count_nonzero(lab[zs]) * np.prod(reo.spacing_zyx) / 1000.0), len(zs)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", help="data folder (default: ../shared/data)")
    ap.add_argument("--weights")
    ap.add_argument("--input-size", type=int)
    ap.add_argument("--method", choices=("network", "hu-threshold"), default="network", help="hu-threshold: baseline")
    ap.add_argument("--labels-dir", help="score <name>_lungs.nii.gz label maps from this folder instead")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto")
    ap.add_argument("--crops", action="store_true", help="run the crop suite instead (see above)")
    ap.add_argument("--crop-names", help="comma-separated subset of the crop suite")
    ap.add_argument("--volumes", help="comma-separated subset of the dev volumes (names as printed)")
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else default_data_dir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seg = None
    if not args.labels_dir:
        from FusionLungSegLib.segmenter import HUThresholdSegmenter, LungSegmenter

        if args.method == "hu-threshold":
            seg = HUThresholdSegmenter()
        else:
            seg = LungSegmenter(
                args.weights, device="cpu", input_size=args.input_size, progress=False, precision=args.precision
            )
    volumes = {k: v for k, v in VOLUMES.items() if not args.volumes or k in args.volumes.split(",")}
    if args.crops:
        if seg is None:
            raise SystemExit("--crops segments the crops: it does not take --labels-dir")
        names = tuple(args.crop_names.split(",")) if args.crop_names else CROP_NAMES
        return run_crops(seg, data, out, volumes, names)
    rows = {}
    for name, (ct_path, ref_path) in volumes.items():
        if not (data / ct_path).exists():
            print(f"{name}: not found under {data}, skipped")
            continue
        image = read_image(data / ct_path)
        row: dict = {"slices": image.GetSize()[2]}
        if seg is not None:
            t0 = time.perf_counter()
            result = seg.run(image)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            labels, row["qc"] = result.labels, result.qc
            write_image(labels, out / f"{name}_lungs.nii.gz")
        else:
            labels = read_image(Path(args.labels_dir) / f"{name}_lungs.nii.gz")
        arr = sitk.GetArrayViewFromImage(labels)
        voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
        row["right_ml"] = round(float(np.count_nonzero(arr == 1)) * voxel_ml, 1)
        row["left_ml"] = round(float(np.count_nonzero(arr == 2)) * voxel_ml, 1)
        ml, n = lung_free_ml(labels, ct_path)
        row["ml_on_recorded_lung_free_slices"], row["recorded_lung_free_slices"] = round(ml, 1), n
        if ref_path and (data / ref_path).exists():
            ref = sitk.Cast(read_image(data / ref_path), sitk.sitkUInt8)
            m = evaluate_label_images(labels, ref)
            keys = ("dice_3d", "dice_right", "dice_left", "hd95_mm", "hd95_right_mm", "hd95_left_mm")
            row.update({k: round(m[k], 4) for k in keys})
            row["ml_on_ref_free_slices"] = round(m["ml_on_ref_free_slices"], 1)
        axial_strip_png(image, labels, out / f"strip_{name}.png", tile=160)
        rows[name] = row
        qc = row.get("qc", {})
        print(
            f"{name}: R {row['right_ml']} mL, L {row['left_ml']} mL, lung-free {row['ml_on_recorded_lung_free_slices']}"
            f" mL on {n} slices"
            + (
                f", Dice {row['dice_3d']} (R {row['dice_right']}, L {row['dice_left']}), HD95 {row['hd95_mm']} mm"
                if "dice_3d" in row
                else ""
            )
            + (f", qc ok={qc.get('ok')} {qc.get('flags')}" if qc else ""),
            flush=True,
        )
    (out / "dev_volumes.json").write_text(json.dumps(rows, indent=1))
    return rows


def run_crops(seg, data: Path, out: Path, volumes: dict, names=CROP_NAMES) -> dict:
    """Every crop of every dev volume with lungs: its labels against the full volume's labels inside it."""
    rows: dict = {}
    for name, (ct_path, ref_path) in volumes.items():
        if not (data / ct_path).exists():
            print(f"{name}: not found under {data}, skipped")
            continue
        image = read_image(data / ct_path)
        full = seg.run(image)
        if min(full.qc["measures"]["right_lung_ml"], full.qc["measures"]["left_lung_ml"]) < 100:
            print(f"{name}: fewer than two lungs on the full volume, no crops")
            continue
        ref = (
            sitk.Cast(read_image(data / ref_path), sitk.sitkUInt8) if ref_path and (data / ref_path).exists() else None
        )
        for spec in crop_suite(image, full.labels, names):
            crop = crop_image(image, spec)
            t0 = time.perf_counter()
            result = seg.run(crop)
            row: dict = {"seconds": round(time.perf_counter() - t0, 1), "size": crop.GetSize()}
            voxel_ml = float(np.prod(crop.GetSpacing())) / 1000.0
            pred = sitk.GetArrayViewFromImage(result.labels)
            answers = {"full": full.labels, **({"reference": ref} if ref is not None else {})}
            for key, answer in answers.items():
                on_crop = sitk.GetArrayFromImage(resample_like(answer, crop))  # a copy: the image is a temporary
                row[key] = {k: round(v, 4) for k, v in compare_sides(pred, on_crop, voxel_ml).items()}
            row["qc_ok"], row["qc_flags"] = result.qc["ok"], result.qc["flags"]
            row["qc_measures"] = result.qc["measures"]
            rows[f"{name}/{spec.name}"] = row
            axial_strip_png(crop, result.labels, out / f"crop_{name}_{spec.name}.png", tile=128)
            write_image(result.labels, out / f"crop_{name}_{spec.name}_lungs.nii.gz")  # for bench/label_parity.py
            f = row["full"]
            print(
                f"{name}/{spec.name}: vs full R {f['dice_right']:.3f} ({f['ref_right_ml']:.0f} mL, "
                f"{f['right_as_other']:.1%} as L), L {f['dice_left']:.3f} ({f['ref_left_ml']:.0f} mL, "
                f"{f['left_as_other']:.1%} as R)"
                + (
                    f"; vs ref R {row['reference']['dice_right']:.3f} L {row['reference']['dice_left']:.3f}"
                    if "reference" in row
                    else ""
                )
                + f"; qc ok={row['qc_ok']} {len(row['qc_flags'])} flags; {row['seconds']} s",
                flush=True,
            )
    (out / "crops.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
