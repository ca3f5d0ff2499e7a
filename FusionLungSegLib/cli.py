"""Command line: ``python -m FusionLungSegLib {segment,batch,web,train,inspect,export,evaluate,bench}`` (also
``fusionlungseg``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .core.options import add_arguments, from_args
from .options import SegmentOptions

__all__ = ["main", "build_parser"]

DESCRIPTION = """\
Lung segmentation in chest CT with FusionLungNet (arXiv 2410.15812).

Input CT: a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha/.mhd) file or a
folder holding one DICOM series; voxel values in Hounsfield units (HU).
Output label map: NIfTI or NRRD with 0 = background, 1 = right lung,
2 = left lung (patient's right and left), on exactly the input's voxel grid;
.seg.nrrd writes a 3D Slicer segmentation (named, coloured, SNOMED-coded
segments), .dcm a DICOM SEG of a DICOM input series.
Volumes are reported in millilitres (mL), distances in millimetres (mm).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionlungseg", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _segment_parser,
        _batch_parser,
        _web_parser,
        _train_parser,
        _inspect_parser,
        _export_parser,
        _evaluate_parser,
        _bench_parser,
    ):
        add(sub)
    return parser


def _segment_parser(sub) -> None:
    s = sub.add_parser(
        "segment",
        help="segment the lungs in a CT file or DICOM folder",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("input", help="CT: .nii/.nii.gz/.nrrd/.mha file or a DICOM series folder (HU)")
    s.add_argument(
        "output",
        help="label map to write: .nii.gz, .nii or .nrrd (0 background, 1 right, 2 left lung); .seg.nrrd: 3D Slicer "
        "segmentation; .dcm: DICOM SEG (DICOM input only)",
    )
    s.add_argument("--dicom-seg", metavar="OUT.dcm", help="also write a DICOM SEG of the DICOM input series here")
    add_arguments(s, SegmentOptions)
    s.add_argument(
        "--png",
        help="overlay picture to write (default: OUTPUT without its suffix + .png: lungs.seg.nrrd -> lungs.png); "
        "'none' to skip",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", help="also write the report (volumes, QC verdict) to this JSON file")


BATCH_DESCRIPTION = """\
Segment many CT scans: files, folders (searched recursively), DICOM trees (one case per CT
series; localizers, SEG, RTSTRUCT and other modalities are skipped and listed) or CSV
manifests (columns case_id, path[, series_uid]).  Each case writes OUT/<case>.nii.gz,
.seg.nrrd, .png, .json and, for DICOM input, .dcm (DICOM SEG); OUT/report.csv gets a row
as each case finishes, and report.csv and report.parquet hold one row per case at the end.
Run it again to go on after an interruption: a case done with the same model and options
is kept.  A failing case never stops the batch; exit code 1 when any case failed.
"""


def _batch_parser(sub) -> None:
    from .batch.work import FORMATS

    b = sub.add_parser(
        "batch",
        help="segment a cohort: many files, folders, DICOM trees or a CSV manifest, with resume and a report",
        description=BATCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="CT file, folder, DICOM tree or .csv manifest")
    b.add_argument("--out", required=True, help="output folder (outputs per case, report.csv, report.parquet)")
    add_arguments(b, SegmentOptions)
    b.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"what each case writes, comma-separated, of {', '.join(FORMATS)} (dcm: DICOM input only); default: all",
    )
    b.add_argument(
        "--engine",
        choices=("local", "ray", "inline"),
        default="local",
        help="local: worker processes on this machine; ray: Ray actors (pip install 'fusionlungseg[ray]'); "
        "inline: in this process, one case after another",
    )
    b.add_argument(
        "--workers",
        default="auto",
        help="worker processes (or Ray actors), each with its model; auto: one per core, as many as memory "
        "holds at 4 GB each (one on CUDA)",
    )
    b.add_argument("--threads", type=int, help="CPU threads per worker (default: this machine's cores / --workers)")
    b.add_argument(
        "--address",
        help="with --engine ray: join this Ray cluster (e.g. 'auto', or ray://host:10001); default: a local Ray",
    )
    b.add_argument("--retry-failed", action="store_true", help="segment again the cases that failed before")
    b.add_argument("--dry-run", action="store_true", help="list the cases (to do, kept, skipped) and stop")


WEB_DESCRIPTION = """\
Serve a web page that segments the lungs: 3D Slicer's slice and 3D views and segment
editor in a browser (trame-slicer; pip install 'fusionlungseg[web]').  The page lists the
CT files and DICOM series under --data, opens one, runs "Segment lungs" (the same pipeline
as `segment`) with progress and Cancel, shows the lung volumes and the QC verdict, offers
correction tools (erase, scissors, islands, smoothing) and exports .seg.nrrd, .nii.gz,
.png, .json and, for DICOM input, DICOM SEG to --out.  It opens only what lies under
--data, writes only under --out and listens on 127.0.0.1 unless --host says otherwise.
"""


def _web_parser(sub) -> None:
    w = sub.add_parser(
        "web",
        help="serve a web page that segments, shows, corrects and exports lungs (pip install 'fusionlungseg[web]')",
        description=WEB_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("--data", required=True, help="folder of CT files and DICOM series the page lists and opens")
    w.add_argument("--open", metavar="NAME", help="case to open at start: a listed name or a path under --data")
    w.add_argument("--out", default="fusionlungseg-exports", help="folder the page exports to (default: %(default)s)")
    w.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 serves every network "
        "this machine is on, to anyone who reaches it: there is no login)",
    )
    w.add_argument("--port", type=int, default=8080, help="port (default: %(default)s; 0: any free port)")
    add_arguments(w, SegmentOptions, skip=("batch_size",))


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train FusionLungNet (or a baseline, --arch) on 2D CT slices with lung masks")
    from .training.config import TrainConfig

    add_arguments(t, TrainConfig)
    t.add_argument("--export", help="after training, write the compact fp16 weights file here")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _inspect_parser(sub) -> None:
    i = sub.add_parser(
        "inspect",
        help="lung mL per range of slices and an axial strip picture, to check a whole volume at a glance",
        description="For a CT and its label map (e.g. from segment): prints the right and left lung volume "
        "(mL) per range of axial slices, inferior to superior, and writes a PNG grid of every k-th axial "
        "slice, neck first, with the lungs outlined and each slice's lung mL.",
    )
    i.add_argument("ct", help="CT file or DICOM folder")
    i.add_argument("labels", help="label map on the CT's grid (0 background, 1 right, 2 left lung)")
    i.add_argument("--ranges", type=int, default=10, help="number of slice ranges to report")
    i.add_argument("--every", type=int, help="show every k-th slice (default: at most 48 slices)")
    i.add_argument("--png", help="strip picture to write (default: LABELS stem + _strip.png)")


def _export_parser(sub) -> None:
    e = sub.add_parser("export", help="write a compact fp16 inference file from a training checkpoint")
    e.add_argument("checkpoint", help="best.pt or last.pt from train")
    e.add_argument("output", help="weights file to write (.pt)")


def _evaluate_parser(sub) -> None:
    v = sub.add_parser(
        "evaluate",
        help="metrics: label maps against references, or the model on the 2D validation slices",
        description="Either PRED REF (two label-map files, or two folders matched by file name), or --slices "
        "to run the model on the Kaggle 2D slices. Metrics: IoU, F1 (Dice), precision, recall, accuracy, MCC "
        "(paper Table 2, in %), plus 3D Dice, HD95 (mm) and volumes (mL) for label maps.",
    )
    v.add_argument("pred", nargs="?", help="predicted label map (file or folder)")
    v.add_argument("ref", nargs="?", help="reference label map (file or folder)")
    v.add_argument("--slices", choices=["validation", "all"], help="evaluate the model on the 2D slices")
    v.add_argument("--data", help="Kaggle archive or folder for --slices")
    v.add_argument("--split", help="split.json written by train (default: the weights' own split, seed 0)")
    add_arguments(v, SegmentOptions, skip=("skip_slices", "batch_size"))
    v.add_argument(
        "--postprocess", action="store_true", help="with --slices: score after component cleaning and hole filling"
    )
    v.add_argument("--limit", type=int, help="with --slices: only the first N slices (quick checks)")
    v.add_argument("--json", help="write per-case rows and summary here")


def _bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="time the pipeline and the network; prints and writes JSON")
    add_arguments(b, SegmentOptions, skip=("method", "fast", "skip_slices"))
    b.add_argument("--slices", type=int, default=300, help="slices in the synthetic 512x512 volume")
    b.add_argument("--input", help="time this CT file or DICOM folder instead of the synthetic volume")
    b.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    b.add_argument(
        "--compare-lungmask",
        action="store_true",
        help="also run lungmask's pipeline on the same volume and report the ratio (pip install lungmask)",
    )
    b.add_argument(
        "--compare-backends",
        action="store_true",
        help="also time the network alone in torch, ONNX Runtime and its int8 graph side by side on the bundled "
        "sample's slices (CPU, --precision fp32)",
    )
    b.add_argument("--json", help="write the figures here")


def _cmd_segment(args) -> int:
    from .io import check_output_path, output_stem, read_image, write_image
    from .io.outputs import check_dicom_seg_request, write_dicom_seg
    from .nets.weights import describe_model

    options = from_args(SegmentOptions, args)
    out = check_output_path(args.output)
    dicom_segs = check_dicom_seg_request(args.input, out, args.dicom_seg)  # before the work: DICOM input only
    t0 = time.monotonic()
    image = read_image(args.input)
    seg = options.segmenter(progress=not args.quiet)
    result = seg.run(image)
    labels = result.labels
    model = describe_model(seg.meta, args.weights) if dicom_segs else None
    dicom_written = [write_dicom_seg(labels, args.input, p, model=model) for p in dicom_segs]
    if out not in dicom_segs:
        write_image(labels, out)
    from .segmenter import segmentation_report

    report = {
        "input": str(args.input),
        "output": str(out),
        **segmentation_report(image, result, seg, time.monotonic() - t0),
    }
    if dicom_written:
        report["dicom_seg"] = dicom_written
    if (args.png or "").lower() != "none":
        from .io.png import overlay_png

        png = Path(args.png) if args.png else out.with_name(output_stem(out) + ".png")
        report["png"] = str(overlay_png(image, labels, png))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if not result.qc["ok"]:  # the result is written; the warning goes where a person reads it
        print("warning: check this result: " + " ".join(result.qc["flags"]), file=sys.stderr)
    return 0


def _cmd_batch(args) -> int:
    from .batch import BatchSpec, cases_to_do, find_cases, run_batch
    from .batch.work import FORMATS

    formats = tuple(f.strip().lstrip(".") for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--formats: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}")
    spec = BatchSpec(str(Path(args.out)), from_args(SegmentOptions, args), formats)
    cases, skipped = find_cases(args.inputs, exclude=args.out)
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    if not cases:
        raise ValueError(f"no CT scans found in {', '.join(args.inputs)}")
    if args.dry_run:
        todo, kept = cases_to_do(cases, spec, args.retry_failed)
        todo_ids = {c.case_id for c in todo}
        for c in cases:
            what = "to do" if c.case_id in todo_ids else "kept"
            print(f"{what:6} {c.case_id}  {c.path}" + (f"  series {c.series_uid}" if c.series_uid else ""))
        print(f"{len(todo)} to do, {len(kept)} kept, {len(skipped)} skipped", file=sys.stderr)
        return 0
    if args.workers != "auto" and not args.workers.isdigit():
        raise ValueError(f"--workers must be a number or auto, got {args.workers!r}")
    result = run_batch(
        cases,
        spec,
        engine=args.engine,
        workers=None if args.workers == "auto" else int(args.workers),
        threads=args.threads,
        address=args.address,
        retry_failed=args.retry_failed,
    )
    failed = [c for c, r in result.rows.items() if r["status"] != "ok"]
    print(
        f"{len(result.ok)} segmented, {len(result.failed)} failed, {len(result.kept)} kept from before; "
        f"report: {Path(args.out) / 'report.csv'}" + (f"; failed: {', '.join(failed)}" if failed else ""),
        file=sys.stderr,
    )
    return result.exit_code


def _cmd_web(args) -> int:
    import importlib.util

    if importlib.util.find_spec("trame_slicer") is None:
        raise RuntimeError("the web page needs its extra: pip install 'fusionlungseg[web]' (trame-slicer is missing)")
    from .web.app import serve

    serve(args.data, args.out, from_args(SegmentOptions, args), args.open, host=args.host, port=args.port)
    return 0


def _cmd_inspect(args) -> int:
    from .evaluation.evaluate import lung_ml_by_slice_range
    from .io import output_stem, read_image
    from .io.png import axial_strip_png

    image = read_image(args.ct)
    labels = read_image(args.labels)
    if labels.GetSize() != image.GetSize():
        raise ValueError(f"{args.labels}: size {labels.GetSize()} differs from the CT's {image.GetSize()}")
    rows = lung_ml_by_slice_range(labels, args.ranges)
    print(f"{'slices (0 = most inferior)':>28} {'right mL':>10} {'left mL':>10} {'slices with lung':>17}")
    for r in rows:
        first, last = r["slices"]
        print(f"{first:>19} - {last:<6} {r['right_ml']:>10.1f} {r['left_ml']:>10.1f} {r['slices_with_lung']:>17}")
    png = Path(args.png) if args.png else Path(args.labels).with_name(output_stem(args.labels) + "_strip.png")
    print(f"strip: {axial_strip_png(image, labels, png, every=args.every)}")
    return 0


def _cmd_train(args) -> int:
    from .training.config import TrainConfig
    from .training.train import export_weights, train

    cfg = from_args(TrainConfig, args)
    result = train(cfg, progress=not args.quiet)
    summary = {k: v for k, v in result.items() if k != "history"}
    if args.export:
        summary["export"] = export_weights(result["best"], args.export)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _cmd_export(args) -> int:
    from .training.train import export_weights

    print(json.dumps(export_weights(args.checkpoint, args.output), indent=1, default=str))
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluation.evaluate import evaluate_label_images, format_table, match_files, summarise

    if args.slices:
        from .training.data import load_finding_lungs, split_by_case

        seg = from_args(SegmentOptions, args).segmenter()
        data = load_finding_lungs(args.data)
        if args.slices == "all":
            subset = data
        else:
            names = None
            if args.split:
                names = json.loads(Path(args.split).read_text())["validation"]
            elif seg.meta.get("validation"):
                names = list(seg.meta["validation"])
            if names is None:
                _, val_idx = split_by_case(data.cases, 0.1, int(seg.meta.get("seed") or 0))
                subset = data.subset(val_idx)
            else:
                subset = data.subset([i for i, n in enumerate(data.names) if n in set(names)])
        from .evaluation.evaluate import evaluate_slices

        if args.limit:
            subset = subset.subset(range(min(args.limit, len(subset))))
        rows = evaluate_slices(seg, subset, postprocess=args.postprocess)
        print(format_table(rows))
    else:
        if not (args.pred and args.ref):
            raise ValueError("give PRED and REF label maps (files or folders), or --slices")
        from .io import read_image

        rows = []
        for case, p, r in match_files(Path(args.pred), Path(args.ref)):
            rows.append({"case": case, **evaluate_label_images(read_image(p), read_image(r))})
        keys = ["iou", "f1", "precision", "recall", "mcc", "hd95_mm", "volume_ml", "ref_volume_ml"]
        keys += [k for k in ("dice_right", "dice_left", "hd95_right_mm", "hd95_left_mm") if k in rows[0]]
        keys += ["ml_on_ref_free_slices"] if "ml_on_ref_free_slices" in rows[0] else []
        print(format_table(rows, keys=keys))
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": rows, "summary": summarise(rows)}, indent=1))
    return 0


def _cmd_bench(args) -> int:
    from .evaluation.bench import run_bench

    result = run_bench(
        device=args.device,
        input_size=args.input_size,
        batch_size=args.batch_size,
        slices=args.slices,
        weights=args.weights,
        input_path=args.input,
        compare_lungmask=args.compare_lungmask,
        threads=args.threads,
        precision=args.precision,
        backend=args.backend,
        compare_engines=args.compare_backends,
    )
    from .evaluation.bench import summary

    print(summary(result), file=sys.stderr)  # stdout carries the JSON alone
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


def _show_engine_notices() -> None:
    """Print the engine's one-time notices (graph export and int8 quantization, about 15 s; the auto
    choice) on stderr, so a first run's pause is explained; stdout keeps only the JSON."""
    import logging

    log = logging.getLogger("FusionLungSegLib.engines")  # export, quantization and the auto choice
    if not any(getattr(h, "_fusionlungseg", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._fusionlungseg = True
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "segment": _cmd_segment,
        "batch": _cmd_batch,
        "web": _cmd_web,
        "train": _cmd_train,
        "export": _cmd_export,
        "evaluate": _cmd_evaluate,
        "inspect": _cmd_inspect,
        "bench": _cmd_bench,
    }
    if not getattr(args, "quiet", False):
        _show_engine_notices()
    try:
        return handlers[args.command](args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
