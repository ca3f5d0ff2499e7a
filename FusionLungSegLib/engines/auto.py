"""``backend="auto"``: time the candidate engines on the first batch of a run and keep the fastest.

Torch (when it runs the precision) and every installed engine that can run it are timed on the first
batch (each twice, alternating, the faster run counts); the verdict is cached per CPU, thread count,
library versions, network, batch shape and candidates (``backend-verdicts.json`` in the cache folder), so
later runs on the machine do not measure again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence

import torch

from ..io.files import atomic_write_text
from ..resources import cache_dir
from .onnx import GRAPH_FORMAT
from .selection import ENGINE_NAMES

__all__ = ["AutoEngine", "verdicts_file"]

log = logging.getLogger(__name__)


def verdicts_file():
    """Where the timing verdicts are kept."""
    return cache_dir() / "backend-verdicts.json"


def _read_verdicts() -> dict:
    try:
        return json.loads(verdicts_file().read_text())
    except (OSError, ValueError):
        return {}


def _versions(engines) -> str:
    return "|".join(sorted({f"{e.runtime} {e.version()}" for e in engines if hasattr(e, "version")}))


class AutoEngine:
    """Runs whichever candidate ran the first batch fastest.

    Args:
        candidates: the engines to time; a :class:`~.torch_engine.TorchEngine` among them is the fallback
            when the others cannot be prepared (export or quantization failed): a warning, then torch.
        clock: the clock the timing reads (tests pass a fake one).
    """

    runtime = "auto"

    def __init__(self, candidates: Sequence, clock: Callable[[], float] = time.perf_counter):
        if not candidates:
            raise ValueError("auto needs at least one engine to choose from")
        self.candidates = list(candidates)
        self.clock = clock
        #: the engine that runs, once the first batch has been timed (None before)
        self.chosen = None
        #: seconds per slice of each candidate when this object measured them (None: a cached verdict)
        self.measured: dict[str, float] | None = None
        self._lock = threading.Lock()

    # what the engine in charge says, "auto" before the first batch
    @property
    def device(self) -> torch.device:
        return (self.chosen or self.candidates[0]).device

    @property
    def precision(self) -> str:
        return (self.chosen or self.candidates[0]).precision

    @property
    def backend(self) -> str:
        return self.chosen.runtime if self.chosen is not None else "auto"

    @property
    def max_batch(self) -> int | None:
        return getattr(self.chosen, "max_batch", None)

    @property
    def notify(self):
        return self.candidates[0].notify

    @notify.setter
    def notify(self, fn) -> None:
        for engine in self.candidates:
            engine.notify = fn

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:  # worker threads share a segmenter: one of them measures
            if self.chosen is None:
                self.chosen = self._choose(x)
        return self.chosen.probabilities(x)

    def release(self) -> None:
        for engine in self.candidates:
            engine.release()

    def _key(self, x: torch.Tensor) -> str:
        from .hardware import cpu_info

        info = cpu_info()
        model = self.candidates[0].model
        n_params = sum(p.numel() for p in model.parameters())
        return (
            f"{info['name']}|{info['cores']} cpus|{torch.get_num_threads()} threads|torch {torch.__version__}|"
            f"{_versions(self.candidates)}|{type(model).__name__} {n_params}|"
            f"{tuple(x.shape)}|graph {GRAPH_FORMAT}|{' vs '.join(e.label() for e in self.candidates)}"
        )

    def _choose(self, x: torch.Tensor):
        torch_engine = next((e for e in self.candidates if e.runtime == "torch"), None)
        try:
            chosen = self._measure(x)
        except Exception as exc:
            if torch_engine is None:  # int8 asked for by name: torch cannot stand in
                raise
            names = " and ".join(ENGINE_NAMES[e.runtime] for e in self.candidates if e is not torch_engine)
            warnings.warn(
                f"{names} could not be prepared ({type(exc).__name__}: {exc}); running in torch", stacklevel=4
            )
            chosen = torch_engine
        for engine in self.candidates:
            if engine is not chosen:
                engine.release()  # the engines not chosen free their compiled graphs
        return chosen

    def _measure(self, x: torch.Tensor):
        by_name = {e.runtime: e for e in self.candidates}
        key = self._key(x)
        verdict = _read_verdicts().get(key)
        if verdict and verdict.get("backend") in by_name:
            return by_name[verdict["backend"]]
        for engine in self.candidates:
            if hasattr(engine, "session"):
                engine.session()  # export, quantize and load outside the timing
        times: dict[str, list[float]] = {name: [] for name in by_name}
        for _ in range(2):  # alternate, so a burst of load elsewhere hits all of them
            for name, engine in by_name.items():
                t0 = self.clock()
                engine.logits(x)
                times[name].append(self.clock() - t0)
        per_slice = {name: min(t) / x.shape[0] for name, t in times.items()}
        backend = min(per_slice, key=per_slice.get)
        self.measured = per_slice
        log.info("backend auto: %s -> %s", ", ".join(f"{k} {v:.3f} s/slice" for k, v in per_slice.items()), backend)
        verdicts = _read_verdicts()
        verdicts[key] = {"backend": backend, "seconds_per_slice": per_slice, "date": time.strftime("%Y-%m-%d")}
        try:
            atomic_write_text(verdicts_file(), json.dumps(verdicts, indent=1))
        except OSError as exc:  # a read-only cache only costs a new measurement next time
            log.warning("could not store the backend verdict in %s: %s", cache_dir(), exc)
        return by_name[backend]
