"""Segment the lungs in many CT scans, unattended: a thin wrapper of ``fusionlungseg batch``.

In 3D Slicer (no window):
    Slicer --no-main-window --python-script Resources/Scripts/FusionLungSegBatch.py \\
        --input scans/ --output results/ [--device cpu] [--precision auto|fp32|bf16|int8] [--fast] [--nifti]
In plain Python (the library alone; no Slicer needed):
    python Resources/Scripts/FusionLungSegBatch.py --input scans/ --output results/

INPUT is one scan (.nii, .nii.gz, .nrrd, .mha, .mhd) or DICOM series folder, or a folder searched for
such scans and DICOM series (one case per CT series).  For each scan it writes OUTPUT/<name>.seg.nrrd
(segments "right lung" and "left lung"), optionally OUTPUT/<name>.nii.gz (labels 0/1/2), and a row in
OUTPUT/report.csv: case, status, right/left lung volume (mL), QC verdict (qc_ok yes/no and the flags, see
the README), seconds, error, then the engine, model and options (and report.parquet beside it).  A
failing scan does not stop the batch; run it again to go on after an interruption (finished scans are
kept).  The exit code is 1 when any scan failed, 2 for bad arguments.

It runs the library's batch (``FusionLungSegLib.batch``) in this process, one scan after another, with
the model loaded once; for worker processes or a Ray cluster use ``fusionlungseg batch`` (docs/batch.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import traceback
from pathlib import Path


def _import_library():
    try:
        import FusionLungSegLib  # noqa: F401
    except ImportError:  # running from a source checkout: Resources/Scripts/ -> repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


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
    p.add_argument("--report", help="also copy the CSV report here (it is always OUTPUT/report.csv)")
    return p.parse_args(argv)


def run(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from FusionLungSegLib.batch import BatchSpec, find_cases, run_batch
    from FusionLungSegLib.options import SegmentOptions

    cases, skipped = find_cases([args.input], exclude=args.output)
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}")
    if not cases:
        print(f"no scans found in {args.input} (looked for CT files and DICOM series)")
        return 1
    options = SegmentOptions(
        weights=args.weights, device=args.device, precision=args.precision, fast=args.fast, input_size=args.input_size
    )
    spec = BatchSpec(args.output, options, ("seg.nrrd", "nii.gz") if args.nifti else ("seg.nrrd",))
    result = run_batch(cases, spec, engine="inline", stream=sys.stdout)
    report = Path(args.output) / "report.csv"
    if args.report:
        shutil.copyfile(report, args.report)
    done = sum(r["status"] == "ok" for r in result.rows.values())
    print(f"{done} of {len(cases)} scans segmented; report: {args.report or report}")
    return result.exit_code


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
