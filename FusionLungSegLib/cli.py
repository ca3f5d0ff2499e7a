"""Command line: ``python -m FusionLungSegLib {segment,train,export,evaluate,bench}`` (also ``fusionlungseg``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")


_PRECISION_HELP = (
    "network arithmetic: auto = bf16 on CUDA; on the CPU bf16 where it has bf16 matrix units (amx_bf16, "
    "avx512_bf16), else fp32, or int8 in ONNX Runtime or OpenVINO (when installed, at a size the weights "
    "were trained at) where that runs faster on this machine, measured on the first batch and remembered; "
    "int8 = ONNX Runtime or OpenVINO on the CPU with a statically quantized graph (pip install "
    "'fusionlungseg[onnx]' or 'fusionlungseg[openvino]'); bf16 on CPUs without bf16 units works but is "
    "several times slower"
)


def _add_precision(
    p: argparse.ArgumentParser, help_text: str = _PRECISION_HELP, backend: bool = True, int8: bool = True
) -> None:
    choices = ["auto", "fp32", "bf16"] + (["int8"] if int8 else [])
    p.add_argument("--precision", choices=choices, default="auto", help=help_text)
    if not backend:
        return
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime", "openvino"],
        default="auto",
        help="engine for the network: auto = the fastest on this machine's first batch (measured once, "
        "remembered) of torch and the installed engines that run the precision on the CPU: ONNX Runtime "
        "(fp32, int8; pip install 'fusionlungseg[onnx]') and OpenVINO (fp32, bf16, int8; pip install "
        "'fusionlungseg[openvino]')",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionlungseg", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    s.add_argument("--weights", help="weights file (default: the bundled model)")
    _add_method(s)
    s.add_argument("--input-size", type=int, help="network input in pixels, multiple of 32 (default: the weights' own)")
    s.add_argument(
        "--fast",
        action="store_true",
        help="160 px network input (about 2x faster than the bundled model's default 224 px, slightly less accurate)",
    )
    s.add_argument(
        "--batch-size", type=int, help="slices per forward pass (default: 32 on CUDA; on CPU 4 at 160 px, 1 at 320 px)"
    )
    s.add_argument("--png", help="overlay picture to write (default: OUTPUT with .png); 'none' to skip")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", help="also write the report (volumes, QC verdict) to this JSON file")
    s.add_argument(
        "--no-skip",
        action="store_true",
        help="run the network on every slice (default: skip slices far from any lung-sized air, e.g. pelvis, head)",
    )
    _add_device(s)
    _add_precision(s)

    t = sub.add_parser("train", help="train FusionLungNet (or a baseline, --arch) on 2D CT slices with lung masks")
    t.add_argument("--data", help="Kaggle 'finding-lungs' archive (.tar.gz) or folder (default: ../shared/data)")
    t.add_argument(
        "--out",
        default="",
        help="folder for checkpoints, logs and curves.png (default: ~/.cache/fusionlungseg/runs/fusionlungnet, "
        "outside the work tree, so a run survives a new checkout)",
    )
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--input-size", type=int, default=320, help="training size in pixels (paper: 320)")
    t.add_argument("--min-input-size", type=int, help="multi-scale: draw each batch's size in [min, input-size]")
    t.add_argument(
        "--val-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also validate at these input sizes each epoch (the multi-scale minimum is added)",
    )
    t.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    t.add_argument(
        "--decay-from", type=int, help="keep --lr until this epoch, then cosine decay to --min-lr at the last epoch"
    )
    t.add_argument("--min-lr", type=float, default=1e-6, help="final learning rate of the cosine decay")
    t.add_argument("--val-fraction", type=float, default=0.1, help="fraction of cases held out for validation")
    t.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and augmentation")
    t.add_argument("--threads", type=int, help="CPU threads for torch")
    t.add_argument(
        "--encoder-weights",
        help="local torchvision ResNet-50 (ResNet-18 for --arch resunet18) state dict to start the encoder from",
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--limit", type=int, help="use only the first N slices (smoke runs)")
    t.add_argument("--time-limit", type=float, help="stop after the epoch that passes this many minutes")
    t.add_argument("--no-augment", action="store_true")
    _add_precision(
        t,
        help_text="auto: bf16 autocast on CUDA and on CPUs with bf16 matrix units (AMX, AVX-512 BF16), else fp32; "
        "weights, optimizer and loss stay fp32",
        backend=False,
        int8=False,
    )
    t.add_argument("--no-amp", action="store_true", help="same as --precision fp32")
    t.add_argument(
        "--lung-free-fraction",
        type=float,
        default=0.25,
        help="share of each batch drawn from the recorded lung-free slices of real volumes (0 = none)",
    )
    t.add_argument("--lung-free-data", help="data folder holding the dev/ volumes (default: ../shared/data)")
    t.add_argument("--no-body-crop", action="store_true", help="feed whole slices instead of the body's box")
    t.add_argument(
        "--no-hu-labelled",
        action="store_true",
        help="leave out the lung-base slices of real volumes with HU-derived masks (hu_labelled_slices.json)",
    )
    t.add_argument("--init-weights", help="start from this weights file ('bundled' = the bundled model)")
    t.add_argument("--ema", type=float, default=0.0, help="decay of a moving average of the weights, e.g. 0.99")
    t.add_argument(
        "--fov-fraction",
        type=float,
        default=0.0,
        help="share of each batch's lung slices seen through a cut field of view (zoomed reconstructions, "
        "Crop Volume ROIs, halves, cut rectangles), e.g. 0.25; validation then also reports iou_fov",
    )
    t.add_argument("--fov-variants", type=int, default=2, help="cut fields of view drawn per lung slice")
    t.add_argument(
        "--arch",
        choices=("fusionlungnet", "unet", "resunet18"),
        default="fusionlungnet",
        help="network: FusionLungNet (default), U-Net (classic 4-level, 31 M parameters) or ResUNet-18 (U-Net "
        "decoder on a ResNet-18 encoder, 14 M); stored in the weights, so segment/evaluate/bench need no flag",
    )
    t.add_argument(
        "--no-refinement", action="store_true", help="ablation: FusionLungNet without its residual refinement module"
    )
    t.add_argument(
        "--no-deep-supervision", action="store_true", help="ablation: loss on the refined output only, not the sides"
    )
    t.add_argument(
        "--loss",
        choices=("hybrid", "bce"),
        default="hybrid",
        help="hybrid: 0.3 focal + 0.4 SSIM + 0.3 IoU (paper); bce",
    )
    t.add_argument(
        "--enhance",
        action="store_true",
        help="ablation: the paper's optional enhancement stage (median filter, local thresholding, removal of "
        "table and artifacts outside the body) before the network; stored in the weights and applied at inference",
    )
    t.add_argument("--export", help="after training, write the compact fp16 weights file here")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--log-every", type=int, default=0, help="print the running loss every N steps")
    _add_device(t)

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

    e = sub.add_parser("export", help="write a compact fp16 inference file from a training checkpoint")
    e.add_argument("checkpoint", help="best.pt or last.pt from train")
    e.add_argument("output", help="weights file to write (.pt)")

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
    v.add_argument("--weights", help="weights for --slices (default: bundled)")
    _add_method(v)
    v.add_argument(
        "--postprocess", action="store_true", help="with --slices: score after component cleaning and hole filling"
    )
    v.add_argument("--input-size", type=int)
    v.add_argument("--limit", type=int, help="with --slices: only the first N slices (quick checks)")
    v.add_argument("--json", help="write per-case rows and summary here")
    _add_device(v)
    _add_precision(v, backend=False)

    b = sub.add_parser("bench", help="time the pipeline and the network; prints and writes JSON")
    b.add_argument("--input-size", type=int, default=320)
    b.add_argument("--batch-size", type=int)
    b.add_argument("--slices", type=int, default=300, help="slices in the synthetic 512x512 volume")
    b.add_argument("--input", help="time this CT file or DICOM folder instead of the synthetic volume")
    b.add_argument("--weights", help="weights file (default: bundled; random if none is bundled)")
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
    _add_device(b)
    _add_precision(b)
    return parser


def _add_method(p) -> None:
    p.add_argument(
        "--method",
        choices=("network", "hu-threshold"),
        default="network",
        help="network: the weights (default); hu-threshold: the baseline that calls air below -320 HU inside "
        "the body lung candidates, with the same post-processing (no network)",
    )


def _segmenter(args, **options):
    """The LungSegmenter the arguments ask for (``--method hu-threshold``: the threshold baseline)."""
    if getattr(args, "method", "network") == "hu-threshold":
        if args.weights:
            raise ValueError("--method hu-threshold uses no weights: leave out --weights")
        from .threshold import HUThresholdSegmenter

        return HUThresholdSegmenter(skip_slices=options.get("skip_slices", True))
    from .inference import LungSegmenter

    return LungSegmenter(weights=args.weights, **options)


def _cmd_segment(args) -> int:
    from .io import check_output_path, output_stem, read_image, write_image
    from .outputs import check_dicom_seg_request, describe_model, write_dicom_seg

    if args.fast and args.input_size:
        raise ValueError("give either --fast or --input-size, not both")
    out = check_output_path(args.output)
    dicom_segs = check_dicom_seg_request(args.input, out, args.dicom_seg)  # before the work: DICOM input only
    t0 = time.monotonic()
    image = read_image(args.input)
    seg = _segmenter(
        args,
        device=args.device,
        batch_size=args.batch_size,
        input_size=160 if args.fast else args.input_size,
        progress=not args.quiet,
        skip_slices=not args.no_skip,
        precision=args.precision,
        backend=args.backend,
    )
    result = seg.run(image)
    labels = result.labels
    model = describe_model(seg.meta, args.weights) if dicom_segs else None
    dicom_written = [write_dicom_seg(labels, args.input, p, model=model) for p in dicom_segs]
    if out not in dicom_segs:
        write_image(labels, out)
    volumes = result.volumes_ml
    report = {
        "input": str(args.input),
        "output": str(out),
        "right_lung_ml": volumes["right lung"],
        "left_lung_ml": volumes["left lung"],
        "slices": int(image.GetSize()[2]),
        "seconds": round(time.monotonic() - t0, 1),
        "device": str(seg.device),
        "input_size": seg.input_size,
        "slices_skipped": result.qc["measures"].get("slices_skipped", 0),
        "qc": result.qc,
        "precision": seg.precision,
        "backend": seg.backend,
    }
    if dicom_written:
        report["dicom_seg"] = dicom_written
    if (args.png or "").lower() != "none":
        from .render import overlay_png

        png = Path(args.png) if args.png else out.with_name(output_stem(out) + ".png")
        report["png"] = str(overlay_png(image, labels, png))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if not result.qc["ok"]:  # the result is written; the warning goes where a person reads it
        print("warning: check this result: " + " ".join(result.qc["flags"]), file=sys.stderr)
    return 0


def _cmd_inspect(args) -> int:
    from .evaluate import lung_ml_by_slice_range
    from .io import output_stem, read_image
    from .render import axial_strip_png

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
    from .train import TrainConfig, export_weights, train

    cfg = TrainConfig(
        data=args.data,
        out_dir=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        input_size=args.input_size,
        min_input_size=args.min_input_size,
        lr=args.lr,
        decay_from=args.decay_from,
        min_lr=args.min_lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        precision=args.precision,
        threads=args.threads,
        encoder_weights=args.encoder_weights,
        resume=args.resume,
        limit=args.limit,
        time_limit_min=args.time_limit,
        augment=not args.no_augment,
        body_crop=not args.no_body_crop,
        hu_labelled=not args.no_hu_labelled,
        lung_free_fraction=args.lung_free_fraction,
        lung_free_data=args.lung_free_data,
        init_weights=args.init_weights,
        ema=args.ema,
        fov_fraction=args.fov_fraction,
        fov_variants=args.fov_variants,
        arch=args.arch,
        refinement=not args.no_refinement,
        deep_supervision=not args.no_deep_supervision,
        loss=args.loss,
        enhance=args.enhance,
        log_every=args.log_every,
        val_sizes=tuple(args.val_sizes),
    )
    result = train(cfg, progress=not args.quiet)
    summary = {k: v for k, v in result.items() if k != "history"}
    if args.export:
        summary["export"] = export_weights(result["best"], args.export)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _cmd_export(args) -> int:
    from .train import export_weights

    print(json.dumps(export_weights(args.checkpoint, args.output), indent=1, default=str))
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate import evaluate_label_images, format_table, match_files, summarise

    if args.slices:
        from .data import load_finding_lungs, split_by_case

        seg = _segmenter(args, device=args.device, input_size=args.input_size, progress=False, precision=args.precision)
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
        from .evaluate import evaluate_slices

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
    from .bench import run_bench

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
    from .bench import summary

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

    log = logging.getLogger("FusionLungSegLib.onnx_backend")
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
