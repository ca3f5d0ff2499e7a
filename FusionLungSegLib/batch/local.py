"""The local engine: N worker processes on this machine, each with one loaded model and ``threads`` CPU
threads.  A worker that dies (killed, out of memory) is replaced and its case is tried once more."""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait

from .cases import Case
from .work import BatchSpec

__all__ = ["run_local", "WorkerStartError", "retry_or_fail"]

#: A case is tried at most this many times when its worker dies under it.
MAX_ATTEMPTS = 2


class WorkerStartError(RuntimeError):
    """A worker could not load the model (every case would fail the same way): the batch stops."""


def retry_or_fail(queue: deque, case: Case, attempt: int, why: str, on_row: Callable[[dict], None]) -> None:
    """The worker running ``case`` died (``why``): queue the case first for another try, or, after
    :data:`MAX_ATTEMPTS`, report it failed."""
    if attempt < MAX_ATTEMPTS:
        queue.appendleft((case, attempt + 1))
        return
    on_row(
        {
            "case": case.case_id,
            "input": case.path,
            "series_uid": case.series_uid or "",
            "status": "failed",
            "attempts": attempt,
            "error": f"WorkerDied: {why} on each of {attempt} attempts",
        }
    )


def _worker_main(spec: BatchSpec, threads: int | None, conn) -> None:
    """A worker process: load the model once, then segment the cases it is sent until it gets None."""
    try:
        from .work import Worker

        worker = Worker(spec, threads)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver, which stops the batch
        conn.send(("start-failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", worker.name))
    try:
        while True:
            job = conn.recv()
            if job is None:
                return
            case, attempt = job
            conn.send(("row", worker.process(case, attempt)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # the driver is stopping the batch
        return


class _Slot:
    def __init__(self, ctx, spec: BatchSpec, threads: int | None):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(spec, threads, child), daemon=True)
        self.process.start()
        child.close()
        self.job: tuple[Case, int] | None = None
        self.ready = False

    def stop(self, terminate: bool = False) -> None:
        if terminate:
            self.process.terminate()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def run_local(
    cases: Iterable[Case], spec: BatchSpec, on_row: Callable[[dict], None], workers: int = 1, threads: int | None = None
) -> None:
    """Segment ``cases`` in ``workers`` processes; ``on_row(row)`` in this process as each case finishes.
    Raises :class:`WorkerStartError` when a worker cannot load the model."""
    ctx = mp.get_context("spawn")  # not fork: torch's thread pools do not survive a fork
    queue = deque((c, 1) for c in cases)
    slots = [_Slot(ctx, spec, threads) for _ in range(max(1, min(workers, len(queue) or 1)))]
    try:
        while queue or any(s.job for s in slots):
            for s in slots:
                if s.ready and s.job is None and queue:
                    s.job = queue.popleft()
                    s.conn.send(s.job)
            ready = wait([s.conn for s in slots] + [s.process.sentinel for s in slots])
            for i, s in enumerate(list(slots)):
                if s.conn in ready or s.process.sentinel in ready:
                    slots[i] = _serve(s, ctx, spec, threads, queue, on_row)
    finally:
        for s in slots:
            s.stop(terminate=True)


def _serve(s: _Slot, ctx, spec, threads, queue: deque, on_row) -> _Slot:
    """Take what slot ``s`` has to say; return it, or its replacement when its worker died."""
    try:
        while s.conn.poll():
            kind, payload = s.conn.recv()
            if kind == "start-failed":
                raise WorkerStartError(f"a batch worker could not start: {payload}")
            if kind == "ready":
                s.ready = True
            else:
                s.job = None
                on_row(payload)
        if s.process.is_alive():
            return s
    except (EOFError, ConnectionResetError, BrokenPipeError):
        pass
    s.process.join(timeout=5)
    if s.job is not None:
        retry_or_fail(queue, *s.job, f"worker process died (exit code {s.process.exitcode})", on_row)
    elif not s.ready:
        raise WorkerStartError(f"a batch worker died while loading the model (exit code {s.process.exitcode})")
    return _Slot(ctx, spec, threads)
