"""Run a batch: find what is left to do (resume), hand it to an engine (local processes or Ray), log each row
as it comes, report progress with an ETA, and write the final ``report.csv`` and ``report.parquet``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cases import Case
from .report import ReportLog, latest_rows, read_rows, write_final_report
from .work import BatchSpec, case_outputs, model_identity

__all__ = ["BatchResult", "run_batch", "cases_to_do", "available_cores", "default_workers", "ENGINES"]

#: local: worker processes on this machine; ray: Ray actors; inline: in this process, one case after another
#: (no worker processes: inside 3D Slicer, in a debugger)
ENGINES = ("local", "ray", "inline")


@dataclass
class BatchResult:
    """What a batch did: case ids segmented now (``ok``), ``failed`` now, ``kept`` from an earlier run, and
    the final rows by case id (``rows``)."""

    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    rows: dict[str, dict] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0: every case ok; 1: some case failed (now or, not retried, before); 130: interrupted."""
        if self.interrupted:
            return 130
        return 1 if any(r["status"] != "ok" for r in self.rows.values()) else 0


#: memory a worker may need on a large volume (bench/batch.py --memory: 2.9 GB peak on 800 slices)
WORKER_MEMORY_GB = 4.0


def default_workers(options, cores: int | None = None, memory_gb: float | None = None) -> int:
    """Workers for ``--workers auto``: one per core (reading, post-processing and writing are
    single-threaded, so on 2 cores 2 workers x 1 thread ran 31 % more cases per hour than 1 x 2), as many as
    memory holds at :data:`WORKER_MEMORY_GB` each; one on CUDA (the workers would share the GPU)."""
    if options.device.startswith("cuda"):
        return 1
    if options.device == "auto" and options.method == "network":
        import torch

        if torch.cuda.is_available():
            return 1
    cores = cores or available_cores()
    if memory_gb is None:
        try:
            memory_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
        except (ValueError, OSError, AttributeError):
            memory_gb = WORKER_MEMORY_GB
    return max(1, min(cores, int(memory_gb // WORKER_MEMORY_GB)))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cases_to_do(cases: list[Case], spec: BatchSpec, retry_failed: bool = False) -> tuple[list[Case], list[Case]]:
    """Split ``cases`` into (to do, kept): a case is kept when the report holds its row for the same model
    sha256 and options and its outputs exist (ok), or it failed and ``retry_failed`` is off."""
    previous = latest_rows(read_rows(Path(spec.out_dir) / "report.csv"))
    sha, key = model_identity(spec.options), spec.options_key()
    todo, kept = [], []
    for c in cases:
        row = previous.get(c.case_id)
        same = row is not None and row["model_sha256"] == sha and row["options"] == key and row["input"] == c.path
        if same and row["status"] == "ok" and all(p.is_file() for p in case_outputs(spec, c).values()):
            kept.append(c)
        elif same and row["status"] != "ok" and not retry_failed:
            kept.append(c)
        else:
            todo.append(c)
    return todo, kept


class _Progress:
    def __init__(self, total: int, kept: int, stream):
        self.total, self.kept, self.stream = total, kept, stream
        self.done = self.failed = 0
        self.t0 = time.monotonic()

    def __call__(self, row: dict) -> None:
        self.done += 1
        self.failed += row["status"] != "ok"
        elapsed = time.monotonic() - self.t0
        left = self.total - self.done
        eta = _duration(elapsed / self.done * left) if left else "0 s"
        status = row["status"] + (f" ({row.get('error', '')})" if row["status"] != "ok" else "")
        print(
            f"[{self.done}/{self.total}] {row['case']}: {status}; {self.failed} failed, ETA {eta}",
            file=self.stream,
            flush=True,
        )


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def run_batch(
    cases: list[Case],
    spec: BatchSpec,
    engine: str = "local",
    workers: int | None = 1,
    threads: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    stream=None,
    on_row: Callable[[dict], None] | None = None,
) -> BatchResult:
    """Segment the ``cases`` not already done (see :func:`cases_to_do`) with ``engine`` (:data:`ENGINES`),
    ``workers`` workers (None: :func:`default_workers`) of ``threads`` CPU threads each (None: this machine's
    cores shared out).  Each case's
    row is appended to ``OUT/report.csv`` as it finishes; at the end (also after Ctrl-C) the report is
    rewritten with one row per case and ``report.parquet`` is written.  Never raises for a bad case."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers is None:
        workers = default_workers(spec.options) if engine != "inline" else 1
    if workers < 1 or (threads is not None and threads < 1):
        raise ValueError("--workers and --threads must be 1 or more")
    stream = stream or sys.stderr
    if threads is None:  # on a cluster (address), give --threads: the CPUs each actor asks for
        threads = max(1, available_cores() // workers)
    todo, kept = cases_to_do(cases, spec, retry_failed)
    if kept:
        print(f"{len(kept)} of {len(cases)} cases already done (same model and options): kept", file=stream)
    progress = _Progress(len(todo), len(kept), stream)
    result = BatchResult(kept=[c.case_id for c in kept])
    log = ReportLog(Path(spec.out_dir) / "report.csv")

    def finished(row: dict) -> None:
        log.append(row)
        (result.ok if row["status"] == "ok" else result.failed).append(row["case"])
        if row.get("traceback"):
            print(row["traceback"], file=stream)
        progress(row)
        if on_row:
            on_row(row)

    try:
        if todo:
            if engine == "ray":
                from .ray_engine import run_ray

                run_ray(todo, spec, finished, workers, threads, address)
            elif engine == "inline":
                from .work import Worker

                worker = Worker(spec, threads)
                for case in todo:
                    finished(worker.process(case))
            else:
                from .local import run_local

                run_local(todo, spec, finished, workers, threads)
    except KeyboardInterrupt:
        result.interrupted = True
        print("interrupted: the finished cases are in the report; run again to go on", file=stream)
    finally:
        log.close()
        rows = write_final_report(spec.out_dir, [c.case_id for c in cases])
        result.rows = {c.case_id: rows[c.case_id] for c in cases if c.case_id in rows}
    return result
