"""Long work off the main thread, for front doors with a live user interface (the Slicer panel, a web
page): :class:`BackgroundTask` computes in a worker thread, the main thread polls it and applies the
result; processing states idle -> running [-> cancelling] -> done or failed (idle again after a cancel)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .pipeline import CancelFn, ProgressFn, SegmentationCancelled

__all__ = ["IDLE", "RUNNING", "CANCELLING", "DONE", "FAILED", "STATES", "BackgroundTask"]

IDLE, RUNNING, CANCELLING, DONE, FAILED = "idle", "running", "cancelling", "done", "failed"
STATES = (IDLE, RUNNING, CANCELLING, DONE, FAILED)


class BackgroundTask:
    """``compute(progress, cancel)`` in a worker thread; ``apply(result)`` on the main thread by :meth:`finish`.

    The main thread polls :attr:`fraction`, :attr:`message` and :attr:`finished`, may call :meth:`cancel`
    at any time, and calls :meth:`finish` once :attr:`finished` is True: that applies the result (or raises
    the worker's error, or :class:`SegmentationCancelled` with nothing applied).
    """

    def __init__(
        self,
        compute: Callable[[ProgressFn, CancelFn], object],
        apply: Callable[[object], object],
        name: str = "background task",
    ):
        self._compute, self._apply, self._name = compute, apply, name
        self.state = IDLE
        self.fraction, self.message = 0.0, ""
        self.computed = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundTask:
        if self._thread is not None:
            raise RuntimeError("this task was already started")
        self.state, self.message = RUNNING, "starting"
        self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._thread.start()
        return self

    def _progress(self, fraction: float, message: str) -> None:  # worker thread: plain attributes only
        self.fraction, self.message = float(fraction), message

    def _work(self) -> None:
        try:
            self.computed = self._compute(self._progress, self._cancel.is_set)
        except BaseException as exc:  # handed to the main thread by finish()
            self.error = exc

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop before its next batch (thread-safe; returns at once)."""
        self._cancel.set()
        if self.state == RUNNING:
            self.state = CANCELLING

    @property
    def finished(self) -> bool:
        """True once the worker has returned (then call :meth:`finish`)."""
        return self._thread is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker returns (or ``timeout`` seconds); True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.finished

    def done_message(self) -> str:
        return "done"

    def finish(self):
        """Main thread, after :attr:`finished`: apply the result; returns what ``apply`` returns."""
        if not self.finished:
            raise RuntimeError("the computation has not finished (poll .finished or call wait())")
        try:
            if isinstance(self.error, SegmentationCancelled):
                raise self.error
            if self._cancel.is_set():  # asked after the last batch: still nothing is applied
                raise SegmentationCancelled("cancelled before writing the segmentation")
            if self.error is not None:
                raise self.error
            out = self._apply(self.computed)
        except SegmentationCancelled:
            self.state, self.message = IDLE, "cancelled; the scene was not changed"
            raise
        except BaseException as exc:
            self.state, self.message = FAILED, f"{type(exc).__name__}: {exc}"
            raise
        self.state, self.fraction = DONE, 1.0
        self.message = self.done_message()
        return out
