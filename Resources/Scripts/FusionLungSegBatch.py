"""Segment the lungs in many CT scans, unattended.

In 3D Slicer (no window):
    Slicer --no-main-window --python-script Resources/Scripts/FusionLungSegBatch.py \\
        --input scans/ --output results/ [--device cpu] [--precision auto|fp32|bf16|int8] [--fast] [--nifti]
In plain Python (the library alone; no Slicer needed):
    python Resources/Scripts/FusionLungSegBatch.py --input scans/ --output results/

INPUT is one scan (.nii, .nii.gz, .nrrd, .mha, .mhd) or DICOM series folder, or a folder of such
scans and DICOM subfolders.  For each scan it writes OUTPUT/<name>.seg.nrrd (segments "right lung"
and "left lung"), optionally OUTPUT/<name>.nii.gz (labels 0/1/2), and appends a row to
OUTPUT/report.csv: case, status, right/left lung volume (mL), QC verdict (qc_ok yes/no and the
flags, see the README), seconds, error.  A failing scan does
not stop the batch; the exit code is 1 when any scan failed, 2 for bad arguments.

A loop over the library: each scan is read with SimpleITK, segmented by the one pipeline (the model is
loaded once for the batch) and written with the library's writers (``.seg.nrrd`` with slicerio), so the
script runs the same inside Slicer and without it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import traceback
from pathlib import Path

SCAN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _import_library():
    try:
        import FusionLungSegLib  # noqa: F401
    except ImportError:  # running from a source checkout: Resources/Scripts/ -> repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(SCAN_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_folder(path: Path) -> bool:
    import SimpleITK as sitk

    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def find_cases(root: Path) -> list[Path]:
    """Scans under ``root``: itself if it is a scan or a DICOM folder, else its scan files and DICOM subfolders."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"input not found: {root}")
    files = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.lower().endswith(SCAN_SUFFIXES)]
    if not files and _is_dicom_folder(root):
        return [root]
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and _is_dicom_folder(p)]
    return files + folders


def parse_args(argv):
    _import_library()
    from FusionLungSegLib.engines.hardware import ALL_PRECISIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="scan file, DICOM folder, or folder of scans")
    p.add_argument("--output", required=True, help="folder for <name>.seg.nrrd files and report.csv")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=ALL_PRECISIONS,
        default="auto",
        help="auto: bf16 on CUDA; on the CPU bf16 with bf16 matrix units (amx_bf16, avx512_bf16), else fp32, "
        "or int8 in ONNX Runtime or OpenVINO where installed and faster; int8: ONNX Runtime or OpenVINO on the "
        "CPU (the onnx or openvino extra)",
    )
    p.add_argument("--fast", action="store_true", help="160 px network input (faster, a little less accurate)")
    p.add_argument("--input-size", type=int, help="network input in pixels (default: the model's own)")
    p.add_argument("--weights", help="weights file (default: bundled)")
    p.add_argument("--nifti", action="store_true", help="also write <name>.nii.gz label maps (0/1/2)")
    p.add_argument("--report", help="CSV report path (default OUTPUT/report.csv)")
    return p.parse_args(argv)


def _segment_case(case: Path, segmenter, out_dir: Path, nifti: bool) -> dict:
    """Segment one scan and write its outputs; the report row's values."""
    from FusionLungSegLib.io import read_image, write_image

    name = _case_name(case)
    result = segmenter.run(read_image(case))
    write_image(result.labels, out_dir / f"{name}.seg.nrrd")
    if nifti:
        write_image(result.labels, out_dir / f"{name}.nii.gz")  # on the scan's own grid already
    volumes, qc = result.volumes_ml, result.qc
    return {
        "right_lung_ml": f"{volumes['right lung']:.1f}",
        "left_lung_ml": f"{volumes['left lung']:.1f}",
        "qc_ok": "yes" if qc["ok"] else "no",
        "qc_flags": " | ".join(qc["flags"]),
    }


def run(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from FusionLungSegLib.options import SegmentOptions

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Path(args.report) if args.report else out_dir / "report.csv"
    cases = find_cases(Path(args.input))
    if not cases:
        print(f"no scans found in {args.input} (looked for {', '.join(SCAN_SUFFIXES)} files and DICOM folders)")
        return 1
    options = SegmentOptions(
        weights=args.weights, device=args.device, precision=args.precision, fast=args.fast, input_size=args.input_size
    )
    segmenter = options.segmenter(progress=False)  # the model is loaded once for the batch
    fields = ["case", "status", "right_lung_ml", "left_lung_ml", "qc_ok", "qc_flags", "seconds", "error"]
    new_report = not report.exists()
    failures = 0
    with open(report, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new_report:
            writer.writeheader()
        for n, case in enumerate(cases, 1):
            name = _case_name(case)
            t0 = time.monotonic()
            row = {"case": name, "status": "ok", "right_lung_ml": "", "left_lung_ml": "", "error": ""}
            try:
                row.update(_segment_case(case, segmenter, out_dir, args.nifti))
            except Exception as exc:  # one bad scan must not stop the batch
                failures += 1
                row["status"] = "failed"
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            row["seconds"] = f"{time.monotonic() - t0:.1f}"
            writer.writerow(row)
            f.flush()
            print(f"[{n}/{len(cases)}] {name}: {row['status']} {row['error']}".rstrip(), flush=True)
    print(f"{len(cases) - failures} of {len(cases)} scans segmented; report: {report}")
    return 1 if failures else 0


def main() -> None:
    try:
        code = run()
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    except Exception:
        traceback.print_exc()
        code = 2
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            slicer.util.exit(code)
            return
    except ImportError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    main()
