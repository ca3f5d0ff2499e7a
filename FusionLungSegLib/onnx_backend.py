"""ONNX Runtime as an optional engine for FusionLungNet on the CPU (``pip install fusionlungseg[onnx]``).

The ONNX graph is exported from the weights the segmenter has loaded, at first
use, and cached under the user's cache folder (``$FUSIONLUNGSEG_CACHE``, else
``$XDG_CACHE_HOME/fusionlungseg`` or ``~/.cache/fusionlungseg``), keyed by the
weights' sha256; nothing ONNX is bundled.  The graph has a dynamic batch and
slice size, so one file serves 160 and 320 px.  It computes the refined logits
in fp32; the segmenter applies the sigmoid, as for torch.

``backend="auto"`` (unless ``FUSIONLUNGSEG_BACKEND`` names an engine) times
both engines on the first batch of a run (each twice, the faster run counts)
and keeps the faster; the verdict is cached per CPU, thread count, library
versions, network and input size, so later runs do not measure again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BACKENDS",
    "available",
    "cache_dir",
    "state_sha256",
    "weights_key",
    "OnnxRuntimeEngine",
    "resolve_backend",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
#: Bumped when the exported graph changes for the same weights (wrapper, opset, exporter).
GRAPH_FORMAT = 1
OPSET = 17

_EXPORT_LOCK = threading.Lock()


def available() -> bool:
    """True when onnxruntime (to run the graph) and onnx (torch needs it to export) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def cache_dir() -> Path:
    """The folder for exported graphs and backend verdicts (created on demand)."""
    env = os.environ.get("FUSIONLUNGSEG_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.environ.get("LOCALAPPDATA") if os.name == "nt" else None
    )  # Windows: %LOCALAPPDATA%
    return Path(base) / "fusionlungseg" if base else Path.home() / ".cache" / "fusionlungseg"


def state_sha256(model: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and values): a key for in-memory weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # flatten() copies in logical order whatever the memory format (the model is channels-last)
        h.update(t.flatten().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolve_backend(backend: str | None, device: torch.device, precision: str) -> str:
    """``torch``, ``onnxruntime`` or (still to be measured) ``auto`` for this device and precision.

    onnxruntime runs here on the CPU in fp32 only: ``auto`` falls back to torch
    elsewhere or when onnxruntime is not installed; an explicit ``onnxruntime``
    there is an error that says why.  ``auto`` takes the environment variable
    ``FUSIONLUNGSEG_BACKEND`` (auto, torch or onnxruntime) when it is set.
    """
    b = (backend or "auto").lower()
    if b == "auto":  # a deployment (or a test suite) may pin the engine: FUSIONLUNGSEG_BACKEND=torch
        b = os.environ.get("FUSIONLUNGSEG_BACKEND", "auto").strip().lower() or "auto"
    if b not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if b == "torch":
        return b
    why_not = None
    if device.type != "cpu":
        why_not = f"it runs on the CPU only here, not on {device}"
    elif precision != "fp32":
        why_not = f"it runs fp32 only, not {precision} (use precision fp32)"
    elif not available():
        why_not = "onnxruntime and onnx are not both installed (pip install 'fusionlungseg[onnx]')"
    if why_not is None:
        return b
    if b == "onnxruntime":
        raise ValueError(f"backend onnxruntime: {why_not}")
    return "torch"


def weights_key(weights: str | Path | None, sha256: str | None, model: nn.Module | None) -> Callable[[], str]:
    """A callable giving the sha256 that names the cached graph, computed only when first called:
    the bundled file's known hash (``weights`` None), the given ``sha256`` or the file's own hash,
    or, for a network given in memory (``model``), the hash of its state dict."""

    def key() -> str:
        from .weights import BUNDLED_SHA256, sha256_of

        if model is not None:
            return state_sha256(model)
        if weights is None:
            return BUNDLED_SHA256
        return (sha256 or sha256_of(weights)).lower()

    return key


class _Refined(nn.Module):
    """The network's refined logits only: the side outputs are dropped from the exported graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def export_graph(model: nn.Module, path: Path, input_size: int) -> Path:
    """Write ``model``'s ONNX graph (fp32, dynamic batch and size) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    x = torch.rand(2, 1, input_size, input_size)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Refined(model),
                (x,),
                str(tmp),
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
                opset_version=OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        tmp.unlink(missing_ok=True)
    return path


class OnnxRuntimeEngine:
    """FusionLungNet in ONNX Runtime, built lazily from a torch model.

    Args:
        model: the loaded network, fp32 on the CPU.
        weights_sha256: callable returning the weights' sha256 (called once, when the graph is first needed).
        input_size: the segmenter's network input (used for the export trace and the verdict key).
        clock: the clock the backend comparison reads (tests pass a fake one).
    """

    def __init__(
        self,
        model: nn.Module,
        weights_sha256: Callable[[], str],
        input_size: int,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.model, self._sha = model, weights_sha256
        self.input_size = input_size
        self.clock = clock
        self._session = None
        self._threads = None
        #: seconds per slice of each engine when this object measured them (None when the verdict was cached)
        self.measured: dict[str, float] | None = None

    # ------------------------------------------------------------ graph and session
    def graph_path(self) -> Path:
        return cache_dir() / f"fusionlungnet-{self._sha()}-g{GRAPH_FORMAT}-opset{OPSET}.onnx"

    def session(self):
        threads = torch.get_num_threads()
        if self._session is None or self._threads != threads:
            import onnxruntime as ort

            path = self.graph_path()
            with _EXPORT_LOCK:
                if not path.is_file():
                    log.info("exporting the network to ONNX (once per weights file): %s", path)
                    export_graph(self.model, path, self.input_size)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads  # follow torch's setting (bench --threads)
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self._threads = threads
        return self._session

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) fp32 input -> (N, 1, S, S) refined logits (a CPU tensor)."""
        x = x.detach().to("cpu", torch.float32).contiguous()
        (out,) = self.session().run(["logits"], {"x": x.numpy()})
        return torch.from_numpy(out)

    # ------------------------------------------------------------ auto: measure once, remember
    def _verdict_key(self, x: torch.Tensor) -> str:
        import onnxruntime as ort

        from .hardware import cpu_info

        info = cpu_info()
        n_params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{info['name']}|{info['cores']} cpus|{torch.get_num_threads()} threads|torch {torch.__version__}|"
            f"onnxruntime {ort.__version__}|{type(self.model).__name__} {n_params}|"
            f"{tuple(x.shape)}|graph {GRAPH_FORMAT}"
        )

    def _verdicts_file(self) -> Path:
        return cache_dir() / "backend-verdicts.json"

    def _read_verdicts(self) -> dict:
        try:
            return json.loads(self._verdicts_file().read_text())
        except (OSError, ValueError):
            return {}

    def choose(self, x: torch.Tensor, torch_logits: Callable[[torch.Tensor], torch.Tensor]) -> str:
        """``"onnxruntime"`` or ``"torch"``, whichever runs batch ``x`` faster (cached verdict if any)."""
        key = self._verdict_key(x)
        verdict = self._read_verdicts().get(key)
        if verdict and verdict.get("backend") in ("torch", "onnxruntime"):
            return verdict["backend"]
        self.session()  # export and load outside the timing
        times = {"torch": [], "onnxruntime": []}
        for _ in range(2):  # alternate, so a burst of load elsewhere hits both
            for name, fn in (("torch", torch_logits), ("onnxruntime", self.logits)):
                t0 = self.clock()
                fn(x)
                times[name].append(self.clock() - t0)
        per_slice = {name: min(t) / x.shape[0] for name, t in times.items()}
        backend = "onnxruntime" if per_slice["onnxruntime"] < per_slice["torch"] else "torch"
        self.measured = per_slice
        log.info("backend auto: torch %.3f s/slice, onnxruntime %.3f s/slice -> %s", *per_slice.values(), backend)
        verdicts = self._read_verdicts()
        verdicts[key] = {"backend": backend, "seconds_per_slice": per_slice, "date": time.strftime("%Y-%m-%d")}
        try:
            path = self._verdicts_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            tmp.write_text(json.dumps(verdicts, indent=1))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache only costs a new measurement next time
            log.warning("could not store the backend verdict in %s: %s", cache_dir(), exc)
        return backend
