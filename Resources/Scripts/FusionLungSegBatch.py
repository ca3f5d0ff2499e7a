"""Segment the lungs in many CT scans, unattended.

In 3D Slicer (no window):
    Slicer --no-main-window --python-script Resources/Scripts/FusionLungSegBatch.py \\
        --input scans/ --output results/ [--device cpu] [--precision auto|fp32|bf16|int8] [--fast] [--nifti]
In plain Python with the slicer-core wheel (pip install slicer-core):
    python Resources/Scripts/FusionLungSegBatch.py --input scans/ --output results/

INPUT is one scan (.nii, .nii.gz, .nrrd, .mha, .mhd) or DICOM series folder, or a folder of such
scans and DICOM subfolders.  For each scan it writes OUTPUT/<name>.seg.nrrd (segments "right lung"
and "left lung"), optionally OUTPUT/<name>.nii.gz (labels 0/1/2), and appends a row to
OUTPUT/report.csv: case, status, right/left lung volume (mL), QC verdict (qc_ok yes/no and the
flags, see the README), seconds, error.  A failing scan does
not stop the batch; the exit code is 1 when any scan failed, 2 for bad arguments.
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


def load_volume(path: Path, scene, volumes_logic):
    """A scalar volume node for a scan file (Slicer's reader) or a DICOM folder (SimpleITK)."""
    from FusionLungSegLib.io import read_image
    from FusionLungSegLib.mrml import sitk_to_volume_node

    if path.is_dir():
        return sitk_to_volume_node(read_image(path), scene, _case_name(path))
    read_image(path)  # a clear error for unreadable files, before Slicer's reader logs its own
    node = volumes_logic.AddArchetypeVolume(str(path), _case_name(path)) if volumes_logic else None
    if node is None:
        raise ValueError(f"{path}: Slicer could not load this file as a volume")
    return node


def _remove_nodes(scene, nodes) -> None:
    """Remove nodes with their display and storage nodes, so a long batch does not grow the scene."""
    for node in nodes:
        if node.GetScene() is not scene:
            continue
        extra = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        extra += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        scene.RemoveNode(node)
        for other in extra:
            if other is not None and other.GetScene() is scene:
                scene.RemoveNode(other)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="scan file, DICOM folder, or folder of scans")
    p.add_argument("--output", required=True, help="folder for <name>.seg.nrrd files and report.csv")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        default="auto",
        help="auto: bf16 on CUDA; on the CPU bf16 with bf16 matrix units (amx_bf16, avx512_bf16), else fp32, "
        "or int8 in ONNX Runtime or OpenVINO where installed and faster; int8: ONNX Runtime or OpenVINO on the "
        "CPU (the onnx or openvino extra)",
    )
    p.add_argument("--fast", action="store_true", help="160 px network input (the bundled model runs at 160 px anyway)")
    p.add_argument("--input-size", type=int, help="network input in pixels (default: the model's own)")
    p.add_argument("--weights", help="weights file (default: bundled)")
    p.add_argument("--nifti", action="store_true", help="also write <name>.nii.gz label maps (0/1/2)")
    p.add_argument("--report", help="CSV report path (default OUTPUT/report.csv)")
    return p.parse_args(argv)


def run(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _import_library()
    import slicer

    from FusionLungSegLib.io import to_file_grid, write_image
    from FusionLungSegLib.mrml import HeadlessSlicer, LungSegmentationLogic, save_segmentation

    in_app = getattr(slicer, "app", None) is not None and getattr(slicer, "mrmlScene", None) is not None
    if in_app:
        scene, volumes_logic = slicer.mrmlScene, slicer.modules.volumes.logic()
    else:
        headless = HeadlessSlicer()
        scene, volumes_logic = headless.scene, headless.volumes_logic
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Path(args.report) if args.report else out_dir / "report.csv"
    cases = find_cases(Path(args.input))
    if not cases:
        print(f"no scans found in {args.input} (looked for {', '.join(SCAN_SUFFIXES)} files and DICOM folders)")
        return 1
    logic = LungSegmentationLogic(scene)
    input_size = 160 if args.fast else args.input_size
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
            added = []
            try:
                volume = load_volume(case, scene, volumes_logic)
                added.append(volume)
                seg = logic.segment(
                    volume,
                    device=args.device,
                    input_size=input_size,
                    weights=args.weights,
                    precision=args.precision,
                )
                added.append(seg)
                save_segmentation(seg, out_dir / f"{name}.seg.nrrd")
                if args.nifti:
                    write_image(to_file_grid(logic.last_label_image, case), out_dir / f"{name}.nii.gz")
                volumes = logic.lung_volumes_ml(seg)
                row["right_lung_ml"] = f"{volumes.get('right lung', 0.0):.1f}"
                row["left_lung_ml"] = f"{volumes.get('left lung', 0.0):.1f}"
                qc = logic.last_qc or {}
                row["qc_ok"] = {True: "yes", False: "no"}.get(qc.get("ok"), "")
                row["qc_flags"] = " | ".join(qc.get("flags", []))
            except Exception as exc:  # one bad scan must not stop the batch
                failures += 1
                row["status"] = "failed"
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            finally:
                _remove_nodes(scene, added)
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
