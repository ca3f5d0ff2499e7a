"""``fusionlungseg batch``: case discovery, resume, failures, interruption, dead workers (local processes and a
real local Ray instance), and the same labels as ``segment`` on the dev volumes."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, REPO, SAMPLE_DICOM, make_phantom

from FusionLungSegLib.batch import BatchSpec, find_cases, read_manifest
from FusionLungSegLib.batch.report import FIELDS, read_rows
from FusionLungSegLib.options import SegmentOptions

DEV = DATA / "dev"


def _cli(args, cwd, **kw):
    cmd = [sys.executable, "-m", "FusionLungSegLib", "batch", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env, **kw)


def _dicom_copy(dest: Path, series_uid: str | None = None, **tags) -> Path:
    """The bundled two-slice DICOM sample copied to ``dest``, optionally as another series or with other tags."""
    import pydicom
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    for f in sorted(SAMPLE_DICOM.glob("*.dcm")):
        ds = pydicom.dcmread(str(f))
        if series_uid is not None or tags:
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = generate_uid()
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(str(dest / f"s{uid.replace('.', '_')[-6:]}_{f.name}"))
    return dest


def _phantoms(folder: Path, n: int, size=(48, 44, 40)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, _ = make_phantom(np.diag([1.0, 1.0, 1.0]), size=size, rng_shift=(i, 0, 0))
        paths.append(folder / f"p{i:02d}.nrrd")
        sitk.WriteImage(img, str(paths[-1]))
    return paths


def _small_model(weights) -> list[str]:
    return ["--weights", weights, "--input-size", "64", "--precision", "fp32", "--backend", "torch", "--device", "cpu"]


# ------------------------------------------------------------------ discovery
def test_find_cases_recursive_dicom_series_and_skips(tmp_path):
    root = tmp_path / "cohort"
    _phantoms(root / "site_a" / "nested", 1)
    two = root / "site_b" / "study"
    _dicom_copy(two, series_uid="1.2.3.4.100")
    _dicom_copy(two, series_uid="1.2.3.4.200")
    _dicom_copy(root / "site_b" / "scout", series_uid="1.2.3.4.300", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _dicom_copy(root / "site_b" / "pet", series_uid="1.2.3.4.400", Modality="PT")
    _dicom_copy(root / "site_b" / "rt", series_uid="1.2.3.4.500", SOPClassUID="1.2.840.10008.5.1.4.1.1.481.3")
    (root / "site_b" / "notes.txt").write_text("not a scan")
    (root / "site_b" / "loop").symlink_to(root / "site_b")  # a link back up: searched once, no endless walk
    cases, skipped = find_cases([root])
    ids = [c.case_id for c in cases]
    assert ids == ["site_a/nested/p00", "site_b/study/1.2.3.4.100", "site_b/study/1.2.3.4.200"]
    assert [c.series_uid for c in cases] == [None, "1.2.3.4.100", "1.2.3.4.200"]
    assert all(Path(c.path).is_absolute() for c in cases)
    reasons = sorted(s.reason for s in skipped)
    assert reasons == [
        "CT localizer (scout)",
        "RT structure set (RTSTRUCT), not a CT image series",
        "modality PT, not CT",
    ]
    # Each CT series of the study folder reads as its own image.
    from FusionLungSegLib.io import read_image

    assert read_image(cases[1].path, cases[1].series_uid).GetSize()[2] == 2


def test_outputs_inside_the_input_folder_are_not_taken_for_scans(tmp_path, random_weights):
    scans = tmp_path / "scans"
    _phantoms(scans, 1)
    out = scans / "results"  # the outputs (.nii.gz, .seg.nrrd) land inside the folder searched
    args = [scans, "--out", out, *_small_model(random_weights), "--formats", "nii.gz,seg.nrrd"]
    assert _cli(args, tmp_path).returncode == 0
    (scans / "old_lungs.seg.nrrd").write_bytes((out / "p00.seg.nrrd").read_bytes())  # a segmentation, no CT
    cases, _ = find_cases([scans], exclude=out)
    assert [c.case_id for c in cases] == ["p00"]
    r = _cli([*args, "--dry-run"], tmp_path)
    assert r.returncode == 0 and r.stdout.split() == ["kept", "p00", str((scans / "p00.nrrd").resolve())]


def test_manifest_and_duplicate_ids(tmp_path):
    scans = _phantoms(tmp_path / "scans", 2)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id,path\nP 1,scans/p00.nrrd\nP/2,scans/p01.nrrd\n")
    cases = read_manifest(manifest)
    assert [c.case_id for c in cases] == ["P_1", "P/2"]
    assert [Path(c.path) for c in cases] == [s.resolve() for s in scans]
    (tmp_path / "bad.csv").write_text("id,file\nx,y\n")
    with pytest.raises(ValueError, match="case_id and path"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="two cases would be named 'p00'"):
        find_cases([scans[0], tmp_path / "scans" / "p00.nrrd"])
    with pytest.raises(FileNotFoundError, match="input not found"):
        find_cases([tmp_path / "missing"])


# ------------------------------------------------------------------ one machine: report, resume, failures
def test_local_batch_report_resume_and_retry(tmp_path, random_weights):
    scans = tmp_path / "scans"
    _phantoms(scans, 2)
    (scans / "hostile.nii.gz").write_bytes(b"\x00" * 300)  # named like a scan, is not one
    out = tmp_path / "out"
    args = [scans, "--out", out, *_small_model(random_weights)]
    r = _cli(args, tmp_path)
    assert r.returncode == 1, r.stderr
    rows = {row["case"]: row for row in read_rows(out / "report.csv")}
    assert set(rows) == {"p00", "p01", "hostile"}
    assert rows["hostile"]["status"] == "failed" and "cannot read image" in rows["hostile"]["error"]
    for c in ("p00", "p01"):
        row = rows[c]
        assert row["status"] == "ok" and row["engine"] == "torch" and row["precision"] == "fp32"
        assert len(row["model_sha256"]) == 64 and row["attempts"] == "1" and float(row["right_lung_ml"]) >= 0
        for suffix in (".nii.gz", ".seg.nrrd", ".png", ".json"):
            assert (out / f"{c}{suffix}").is_file()
        assert not (out / f"{c}.dcm").exists()  # DICOM SEG only for DICOM input
    import pyarrow.parquet as pq

    table = pq.read_table(out / "report.parquet").to_pydict()
    assert table["case"] == ["hostile", "p00", "p01"] and table["status"] == ["failed", "ok", "ok"]
    assert set(FIELDS) <= set(table) and isinstance(table["right_lung_ml"][1], float)
    assert "[3/3]" in r.stderr and "ETA" in r.stderr
    # Again: nothing redone (the hostile case failed before and --retry-failed is off), same exit code.
    stamp = (out / "p00.nii.gz").stat().st_mtime_ns
    r = _cli(args, tmp_path)
    assert r.returncode == 1 and "3 of 3 cases already done" in r.stderr
    assert (out / "p00.nii.gz").stat().st_mtime_ns == stamp
    # Another option (input size) redoes the cases; --dry-run lists them first.
    dry = _cli([scans, "--out", out, *_small_model(random_weights)[:2], "--input-size", "96", "--dry-run"], tmp_path)
    assert dry.returncode == 0 and dry.stdout.count("to do") == 3
    # A lost output is made again; --retry-failed tries the failed case again.
    (out / "p01.seg.nrrd").unlink()
    r = _cli([*args, "--retry-failed"], tmp_path)
    assert r.returncode == 1 and "[2/2]" in r.stderr
    final = list(csv.DictReader(open(out / "report.csv")))
    assert [row["case"] for row in final] == ["hostile", "p00", "p01"]  # one row per case at the end
    assert (out / "p01.seg.nrrd").is_file()


def test_dicom_case_writes_dicom_seg(tmp_path, random_weights):
    out = tmp_path / "out"
    r = _cli([SAMPLE_DICOM, "--out", out, *_small_model(random_weights), "--formats", "dcm,nii.gz"], tmp_path)
    assert r.returncode == 0, r.stderr
    import pydicom

    seg = pydicom.dcmread(str(out / "lungmask_testdata.dcm"))
    assert seg.Modality == "SEG"
    assert sorted(p.name for p in out.iterdir()) == [
        "lungmask_testdata.dcm",
        "lungmask_testdata.nii.gz",
        "report.csv",
        "report.parquet",
    ]


def test_bad_arguments(tmp_path, random_weights):
    r = _cli([tmp_path / "nothing", "--out", tmp_path / "o"], tmp_path)
    assert r.returncode == 2 and "input not found" in r.stderr
    _phantoms(tmp_path / "s", 1)
    r = _cli([tmp_path / "s", "--out", tmp_path / "o", "--formats", "nii.gz,stl"], tmp_path)
    assert r.returncode == 2 and "unknown stl" in r.stderr
    r = _cli([tmp_path / "s", "--out", tmp_path / "o", "--weights", tmp_path / "none.pt"], tmp_path)
    assert r.returncode == 2 and "weights file not found" in r.stderr
    (tmp_path / "junk.pt").write_bytes(b"junk")
    r = _cli([tmp_path / "s", "--out", tmp_path / "o", "--weights", tmp_path / "junk.pt"], tmp_path)
    assert r.returncode == 2 and "a batch worker could not start" in r.stderr, r.stderr


# ------------------------------------------------------------------ interruption and dead workers
def _wait_rows(report: Path, n: int, proc, timeout=300) -> None:
    t0 = time.monotonic()
    while len(read_rows(report)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no progress"
        time.sleep(0.2)


def _processes_titled(prefix: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").startswith(prefix):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _worker_processes(pid: int) -> list[int]:
    """The batch's worker processes: children of ``pid`` started by multiprocessing's spawn (not its
    resource tracker)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


def _all_ok_one_retried(out: Path) -> None:
    """Every case once in the report, all ok, and exactly one tried twice (the one whose worker died)."""
    rows = read_rows(out / "report.csv")
    assert sorted(r["case"] for r in rows) == ["p00", "p01", "p02", "p03"] and all(r["status"] == "ok" for r in rows)
    assert sorted(r["attempts"] for r in rows) == ["1", "1", "1", "2"]


def _popen(args, cwd):
    cmd = [sys.executable, "-m", "FusionLungSegLib", "batch", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A shell starts background jobs with SIGINT ignored, and the child would inherit that: restore the
    # default so Ctrl-C reaches the batch however the tests were started.
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_interrupted_batch_resumes_without_redoing_finished_cases(tmp_path, random_weights):
    scans = tmp_path / "scans"
    _phantoms(scans, 8, size=(64, 60, 80))
    out = tmp_path / "out"
    args = [scans, "--out", out, *_small_model(random_weights), "--no-skip"]
    proc = _popen(args, tmp_path)
    _wait_rows(out / "report.csv", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    first = {row["case"]: row for row in read_rows(out / "report.csv")}
    assert 2 <= len(first) < 8 and all(r["status"] == "ok" for r in first.values())
    stamps = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in first}
    assert not list(out.glob("**/.tmp-*"))  # the interrupted case left no partial file
    r = _cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{len(first)} of 8 cases already done" in r.stderr
    rows = read_rows(out / "report.csv")
    assert sorted(row["case"] for row in rows) == [f"p{i:02d}" for i in range(8)]  # each once: none redone
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in first} == stamps


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_local_worker_killed_mid_case_is_replaced_and_the_case_retried(tmp_path, random_weights):
    scans = tmp_path / "scans"
    _phantoms(scans, 4, size=(64, 60, 80))
    out = tmp_path / "out"
    proc = _popen([scans, "--out", out, *_small_model(random_weights), "--no-skip"], tmp_path)
    _wait_rows(out / "report.csv", 1, proc)
    workers = _worker_processes(proc.pid)
    assert workers, "no worker process"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _all_ok_one_retried(out)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_ray_actor_killed_mid_case_is_replaced_and_the_case_retried(tmp_path, random_weights):
    pytest.importorskip("ray", reason="the ray extra: pip install 'fusionlungseg[ray]'")
    scans = tmp_path / "scans"
    _phantoms(scans, 4, size=(64, 60, 80))
    out = tmp_path / "out"
    args = [scans, "--out", out, *_small_model(random_weights), "--no-skip", "--engine", "ray", "--workers", "2"]
    args += ["--threads", "1"]
    proc = _popen(args, tmp_path)
    _wait_rows(out / "report.csv", 1, proc)
    t0 = time.monotonic()
    while not (busy := _processes_titled("ray::SegmentWorker.process")):
        assert proc.poll() is None and time.monotonic() - t0 < 120, "no Ray actor at work"
        time.sleep(0.05)
    os.kill(busy[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    _all_ok_one_retried(out)


# ------------------------------------------------------------------ the dev volumes on Ray, against segment
DEV_CASES = {
    "C3N-00247_chest_ct": DEV / "C3N-00247_chest_ct.nii.gz",
    "LungPETCTDx_A0001_CT_5mm_kernelB": DEV / "LungPETCTDx_A0001_CT_5mm_kernelB.nii.gz",
    "NSCLCRadiomics_LUNG1-001_CT": DEV / "NSCLCRadiomics_LUNG1-001_CT.nii.gz",
    "totalsegmentator_abdomen_dicom": DEV / "totalsegmentator_abdomen_dicom",
}


@pytest.mark.slow
def test_ray_batch_over_dev_volumes_gives_segments_labels(tmp_path):
    pytest.importorskip("ray", reason="the ray extra: pip install 'fusionlungseg[ray]'")
    missing = [str(p) for p in DEV_CASES.values() if not p.exists()]
    if missing:
        pytest.skip(f"dev volumes not found ({', '.join(missing)}); set FUSIONLUNGSEG_DATA to ../shared/data")
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, src in DEV_CASES.items():
        (scans / (name + (".nii.gz" if src.is_file() else ""))).symlink_to(src)
    shutil.copytree(SAMPLE_DICOM, scans / "sample_dicom")
    hostile = "NRRD0004\ntype: short\ndimension: 3\nsizes: 40000 40000 40000\nencoding: raw\nendian: little\n\n"
    (scans / "hostile.nrrd").write_text(hostile)  # a header that asks for 128 TB
    out = tmp_path / "out"
    options = ["--fast", "--precision", "fp32", "--backend", "torch"]
    r = _cli([scans, "--out", out, *options, "--engine", "ray", "--workers", "2", "--threads", "1"], tmp_path)
    assert r.returncode == 1, r.stderr  # the hostile file failed
    rows = {row["case"]: row for row in read_rows(out / "report.csv")}
    assert set(rows) == {*DEV_CASES, "sample_dicom", "hostile"}
    assert rows["hostile"]["status"] == "failed" and rows["hostile"]["error"].startswith("ValueError")
    from FusionLungSegLib.cli import main

    for case in [*DEV_CASES, "sample_dicom"]:
        assert rows[case]["status"] == "ok", rows[case]
        ref = tmp_path / "segment" / f"{case}.nii.gz"
        assert main(["segment", rows[case]["input"], str(ref), "--quiet", *options]) == 0
        same = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        np.testing.assert_array_equal(same, sitk.GetArrayFromImage(sitk.ReadImage(str(ref))), err_msg=case)
    assert (out / "sample_dicom.dcm").is_file() and (out / "totalsegmentator_abdomen_dicom.dcm").is_file()
    slicerio = pytest.importorskip("slicerio")
    seg = slicerio.read_segmentation(str(out / "NSCLCRadiomics_LUNG1-001_CT.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["right lung", "left lung"]


def test_options_key_ignores_what_does_not_change_results():
    a = BatchSpec("o", SegmentOptions(device="cpu", batch_size=2))
    b = BatchSpec("o", SegmentOptions(device="cuda", batch_size=8))
    assert a.options_key() == b.options_key()
    assert a.options_key() != BatchSpec("o", SegmentOptions(fast=True)).options_key()


def test_default_workers_one_per_core_as_memory_allows():
    from FusionLungSegLib.batch.run import default_workers

    cpu = SegmentOptions(device="cpu")
    assert default_workers(cpu, cores=2, memory_gb=24) == 2
    assert default_workers(cpu, cores=16, memory_gb=24) == 6  # 4 GB each
    assert default_workers(cpu, cores=8, memory_gb=2) == 1
    assert default_workers(SegmentOptions(device="cuda"), cores=8, memory_gb=64) == 1
