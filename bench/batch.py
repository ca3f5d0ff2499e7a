"""Batch throughput and memory, side by side in one run (issue 21).

    python bench/batch.py [--copies 3] [--repeats 2] [--json bench/results/DATE_CPU/batch.json] [-- --backend torch]
    python bench/batch.py --memory [--slices 800] [-- SEGMENT OPTIONS]

Throughput: the dev volumes (each ``--copies`` times, through a CSV manifest) segmented by ``fusionlungseg
batch`` with 1 worker x 2 threads and 2 workers x 1 thread, on the local engine and on a local Ray instance
with the same split, interleaved, ``--repeats`` rounds; cases per hour, wall time per case and Ray's
overhead against local at the same split, on the whole batch and per case once each engine's start-up
(a batch of one 2-slice case, run just before) is taken off.
Memory: one worker (in a child process) on a synthetic volume of ``--slices`` 512 x 512 slices; its peak
resident memory against the volume's own size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FUSIONLUNGSEG_DATA", REPO.parent / "shared" / "data"))
SAMPLE = REPO / "Resources" / "Samples" / "lungmask_testdata"
DEV = {
    "C3N-00247": DATA / "dev" / "C3N-00247_chest_ct.nii.gz",
    "LungPETCTDx_A0001": DATA / "dev" / "LungPETCTDx_A0001_CT_5mm_kernelB.nii.gz",
    "LUNG1-001": DATA / "dev" / "NSCLCRadiomics_LUNG1-001_CT.nii.gz",
    "abdomen_dicom": DATA / "dev" / "totalsegmentator_abdomen_dicom",
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _batch(args: list[str], env=None) -> float:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "FusionLungSegLib", "batch", *args], capture_output=True, text=True, env=env
    )
    if r.returncode != 0:
        raise RuntimeError(f"batch failed ({r.returncode}): {r.stderr[-2000:]}")
    return time.monotonic() - t0


def throughput(copies: int, options: list[str], work: Path, repeats: int = 1) -> dict:
    manifest = work / "cohort.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "path"])
        for k in range(copies):
            for name, path in DEV.items():
                w.writerow([f"{name}_{k}", path])
    n = copies * len(DEV)
    runs = []
    for (engine, workers, threads), rep in ((c, r) for r in range(repeats) for c in CONFIGS):  # interleaved
        common = ["--engine", engine, "--workers", str(workers), "--threads", str(threads), "--formats", "nii.gz"]
        # Start-up: a batch of one 2-slice case (process start, worker start, model load); then the cohort.
        start = _batch(
            [str(SAMPLE), "--out", str(work / f"start_{engine}_{workers}x{threads}_{rep}"), *common, *options]
        )
        out = work / f"{engine}_{workers}x{threads}_{rep}"
        wall = _batch([str(manifest), "--out", str(out), *common, *options])
        rows = list(csv.DictReader(open(out / "report.csv")))
        runs.append(
            {
                "engine": engine,
                "repeat": rep,
                "workers": workers,
                "threads": threads,
                "cases": n,
                "wall_s": round(wall, 1),
                "one_tiny_case_wall_s": round(start, 1),
                "s_per_case": round(wall / n, 2),
                "cases_per_hour": round(3600 * n / wall, 1),
                "mean_case_s_in_worker": round(sum(float(r["seconds"]) for r in rows) / len(rows), 2),
            }
        )
        print(json.dumps(runs[-1]), file=sys.stderr)
    return {"runs": runs, **summarise(runs)}


CONFIGS = [("local", 1, 2), ("ray", 1, 2), ("local", 2, 1), ("ray", 2, 1)]


def summarise(runs: list[dict]) -> dict:
    """Medians per engine and split, and Ray against local at the same split: on the whole batch, and per
    case once each engine's start-up (the one-tiny-case batch) is taken off."""
    import statistics

    def median(key: str, engine: str, workers: int) -> float:
        return statistics.median(r[key] for r in runs if r["engine"] == engine and r["workers"] == workers)

    out = {"median_wall_s": {}, "median_one_tiny_case_wall_s": {}, "ray_vs_local": {}}
    for _, w, t in CONFIGS[::2]:
        split = f"{w}x{t}"
        wall = {e: median("wall_s", e, w) for e in ("local", "ray")}
        start = {e: median("one_tiny_case_wall_s", e, w) for e in ("local", "ray")}
        for e in wall:
            out["median_wall_s"][f"{e}_{split}"] = wall[e]
            out["median_one_tiny_case_wall_s"][f"{e}_{split}"] = start[e]
        out["ray_vs_local"][split] = {
            "whole_batch": round(wall["ray"] / wall["local"] - 1, 4),
            "per_case_after_start_up": round((wall["ray"] - start["ray"]) / (wall["local"] - start["local"]) - 1, 4),
            "extra_start_up_s": round(start["ray"] - start["local"], 1),
        }
    return out


def _synthetic_volume(path: Path, slices: int) -> int:
    """A 512 x 512 x ``slices`` chest-like volume (body at 40 HU, two lungs at -850 HU, air outside) in
    int16, 0.7 x 0.7 x 1 mm; returns its size in bytes."""
    import numpy as np
    import SimpleITK as sitk

    y, x = np.mgrid[0:512, 0:512]
    body = ((x - 256) / 200.0) ** 2 + ((y - 256) / 150.0) ** 2 < 1
    lungs = (((x - 180) / 60.0) ** 2 + ((y - 240) / 90.0) ** 2 < 1) | (
        ((x - 332) / 60.0) ** 2 + ((y - 240) / 90.0) ** 2 < 1
    )
    plane = np.full((512, 512), -1000, np.int16)
    plane[body] = 40
    plane[lungs] = -850
    arr = np.broadcast_to(plane, (slices, 512, 512)).copy()
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(img, str(path), False)
    return arr.nbytes


def _memory_child(path: str, options: list[str]) -> None:
    """In a fresh process: load the model, note the resident memory, segment the volume, print both."""
    from FusionLungSegLib.batch import BatchSpec, Case
    from FusionLungSegLib.batch.work import Worker
    from FusionLungSegLib.cli import build_parser
    from FusionLungSegLib.core.options import from_args
    from FusionLungSegLib.options import SegmentOptions

    args = build_parser().parse_args(["batch", path, "--out", "x", *options])
    out = tempfile.mkdtemp()
    worker = Worker(BatchSpec(out, from_args(SegmentOptions, args), ("nii.gz",)))
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.monotonic()
    row = worker.process(Case("synthetic", path))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "loaded_rss": loaded,
                "peak_rss": peak,
                "status": row["status"],
                "error": row.get("error", ""),
                "seconds": round(time.monotonic() - t0, 1),
                "engine": row.get("engine"),
                "precision": row.get("precision"),
            }
        )
    )


def memory(slices: int, options: list[str], work: Path) -> dict:
    path = work / f"synthetic_{slices}.nrrd"
    volume_bytes = _synthetic_volume(path, slices)
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import bench.batch as b; "
    code += f"b._memory_child({str(path)!r}, {options!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    m = json.loads(r.stdout.strip().splitlines()[-1])
    gib = 1024**3
    return {
        "slices": slices,
        "volume_gib": round(volume_bytes / gib, 3),
        "rss_after_model_load_gib": round(m["loaded_rss"] / gib, 3),
        "peak_rss_gib": round(m["peak_rss"] / gib, 3),
        "peak_above_volume_gib": round((m["peak_rss"] - volume_bytes) / gib, 3),
        "peak_above_model_and_volume_gib": round((m["peak_rss"] - m["loaded_rss"] - volume_bytes) / gib, 3),
        "target_above_volume_gib": 3.0,
        "status": m["status"],
        "error": m["error"],
        "seconds": m["seconds"],
        "engine": m["engine"],
        "precision": m["precision"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=2, help="times each dev volume is in the cohort")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the four runs, interleaved (medians reported)")
    p.add_argument("--memory", action="store_true", help="measure one worker's peak memory instead")
    p.add_argument("--slices", type=int, default=800, help="with --memory: slices of the synthetic volume")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("options", nargs=argparse.REMAINDER, help="segment options after --, e.g. -- --fast")
    args = p.parse_args()
    options = [o for o in args.options if o != "--"]
    result = {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "options": options}
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            result["memory"] = memory(args.slices, options, Path(tmp))
        else:
            missing = [str(p) for p in DEV.values() if not p.exists()]
            if missing:
                print(f"dev volumes not found: {', '.join(missing)} (set FUSIONLUNGSEG_DATA)", file=sys.stderr)
                return 2
            result.update(throughput(args.copies, options, Path(tmp), args.repeats))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
