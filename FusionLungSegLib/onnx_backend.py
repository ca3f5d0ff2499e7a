"""ONNX Runtime as an optional engine for FusionLungNet on the CPU (``pip install fusionlungseg[onnx]``).

The ONNX graph is exported from the weights the segmenter has loaded, at first
use, and cached under the user's cache folder (``$FUSIONLUNGSEG_CACHE``, else
``$XDG_CACHE_HOME/fusionlungseg`` or ``~/.cache/fusionlungseg``), keyed by the
weights' sha256; nothing ONNX is bundled.  The graph has a dynamic batch and
slice size, so one file serves 160 and 320 px.  It computes the refined logits
in fp32; the segmenter applies the sigmoid, as for torch.

``precision="int8"`` runs a statically quantized copy of that graph (QDQ:
int8 weights per output channel, uint8 activations; about 2x faster than bf16
torch and 3x faster than fp32 ONNX Runtime on an AVX-512 VNNI CPU).  It is built
at first use from the fp32 graph, with activation ranges measured on real chest
CT (the bundled sample's slices, prepared exactly as for segmentation, at the
segmenter's input size), and cached beside it per input size.

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
    "quantize_graph",
    "requested_backend",
    "resolve_backend",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
#: Bumped when the exported graph changes for the same weights (wrapper, opset, exporter).
GRAPH_FORMAT = 1
OPSET = 17
#: Bumped when the int8 graph changes for the same fp32 graph (calibration data or quantization settings).
INT8_FORMAT = 1

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


def requested_backend(backend: str | None) -> str:
    """The engine asked for: ``backend``, or for ``auto`` ``FUSIONLUNGSEG_BACKEND`` when it is set."""
    b = (backend or "auto").lower()
    if b == "auto":  # a deployment (or a test suite) may pin the engine: FUSIONLUNGSEG_BACKEND=torch
        b = os.environ.get("FUSIONLUNGSEG_BACKEND", "auto").strip().lower() or "auto"
    if b not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return b


def resolve_backend(backend: str | None, device: torch.device, precision: str) -> str:
    """``torch``, ``onnxruntime`` or (still to be measured) ``auto`` for this device and precision.

    onnxruntime runs here on the CPU in fp32 or int8; int8 runs in onnxruntime only.
    ``auto`` falls back to torch where onnxruntime cannot run (another device, bf16,
    not installed); an explicit engine that cannot run there is an error that says why.
    ``auto`` takes the environment variable ``FUSIONLUNGSEG_BACKEND`` (auto, torch or
    onnxruntime) when it is set.
    """
    b = requested_backend(backend)
    if precision == "int8":  # asked for by name: FUSIONLUNGSEG_BACKEND (a pin for auto) does not apply
        if (backend or "auto").lower() == "torch":
            raise ValueError("precision int8 runs in ONNX Runtime only: use backend onnxruntime or auto")
        if device.type != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only, not on {device} (use precision auto or bf16 there)")
        if not available():
            raise ValueError(
                "precision int8 needs onnxruntime and onnx (pip install 'fusionlungseg[onnx]'; in 3D Slicer's "
                "Python console: slicer.util.pip_install('onnx onnxruntime')); or use precision auto"
            )
        return "onnxruntime"
    if b == "torch":
        return b
    why_not = None
    if device.type != "cpu":
        why_not = f"it runs on the CPU only here, not on {device}"
    elif precision != "fp32":
        why_not = f"it runs fp32 and int8 only, not {precision} (use precision fp32 or int8)"
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


def quantize_graph(fp32_graph: Path, path: Path, calibration: torch.Tensor) -> Path:
    """Write a static int8 copy of ``fp32_graph`` to ``path`` atomically.

    QDQ format, int8 weights per output channel, uint8 activations whose ranges are the
    minimum and maximum seen over ``calibration``: (N, 1, S, S) network inputs, one at a time.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = calibration.detach().to("cpu", torch.float32)
    inputs = [calibration[i : i + 1].contiguous().numpy() for i in range(len(calibration))]

    class _Inputs(CalibrationDataReader):
        def __init__(self):
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"x": x}

    path.parent.mkdir(parents=True, exist_ok=True)
    stem = f".tmp-{os.getpid()}-{threading.get_ident()}-{path.stem}"
    pre, tmp = path.with_name(stem + "-pre.onnx"), path.with_name(stem + ".onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_graph), str(pre))  # shapes and fused ops, as the quantizer advises
            quantize_static(
                str(pre),
                str(tmp),
                _Inputs(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        os.replace(tmp, path)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path


class OnnxRuntimeEngine:
    """FusionLungNet in ONNX Runtime, built lazily from a torch model.

    Args:
        model: the loaded network, fp32 on the CPU.
        weights_sha256: callable returning the weights' sha256 (called once, when the graph is first needed).
        input_size: the segmenter's network input (used for the export trace, the int8 calibration
            and the verdict key).
        clock: the clock the backend comparison reads (tests pass a fake one).
        precision: "fp32" or "int8" (the quantized graph).
        calibration: for int8, a callable returning (N, 1, S, S) network inputs of real CT at
            ``input_size`` (called once, when the int8 graph is first built).
    """

    def __init__(
        self,
        model: nn.Module,
        weights_sha256: Callable[[], str],
        input_size: int,
        clock: Callable[[], float] = time.perf_counter,
        *,
        precision: str = "fp32",
        calibration: Callable[[], torch.Tensor] | None = None,
    ):
        if precision not in ("fp32", "int8"):
            raise ValueError(f"ONNX Runtime precision must be fp32 or int8, got {precision!r}")
        if precision == "int8" and calibration is None:
            raise ValueError("precision int8 needs calibration inputs")
        self.model, self._sha_source, self._sha_value = model, weights_sha256, None
        self.input_size = input_size
        self.clock = clock
        self.precision = precision
        self._calibration = calibration
        self._session = None
        self._threads = None
        #: called with a message before a graph is built (about 15 s, once): the segmenter's progress
        self.notify: Callable[[str], None] | None = None
        #: seconds per slice of each engine when this object measured them (None when the verdict was cached)
        self.measured: dict[str, float] | None = None

    # ------------------------------------------------------------ graph and session
    def _sha(self) -> str:
        if self._sha_value is None:  # hashing a weights file takes a moment: once per engine
            self._sha_value = self._sha_source()
        return self._sha_value

    def fp32_graph_path(self) -> Path:
        return cache_dir() / f"fusionlungnet-{self._sha()}-g{GRAPH_FORMAT}-opset{OPSET}.onnx"

    def graph_path(self) -> Path:
        """The graph this engine runs: the fp32 export, or its int8 copy for this input size."""
        fp32 = self.fp32_graph_path()
        if self.precision == "fp32":
            return fp32
        return fp32.with_name(f"{fp32.stem}-int8-q{INT8_FORMAT}-{self.input_size}px.onnx")

    def _build_graphs(self) -> Path:
        path, fp32 = self.graph_path(), self.fp32_graph_path()
        if self.notify is not None and not path.is_file():
            self.notify(f"preparing ONNX Runtime ({self.precision}; once per weights file and size, about 15 s)")
        with _EXPORT_LOCK:
            if not fp32.is_file():
                log.info("exporting the network to ONNX (once per weights file): %s", fp32)
                export_graph(self.model, fp32, self.input_size)
            if not path.is_file():
                log.info("quantizing the ONNX graph to int8 (once per weights file and input size): %s", path)
                quantize_graph(fp32, path, self._calibration())
        return path

    def session(self):
        threads = torch.get_num_threads()
        if self._session is None or self._threads != threads:
            import onnxruntime as ort

            path = self._build_graphs()
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
    def _verdict_key(self, x: torch.Tensor, torch_precision: str) -> str:
        import onnxruntime as ort

        from .hardware import cpu_info

        info = cpu_info()
        n_params = sum(p.numel() for p in self.model.parameters())
        engines = "" if (torch_precision, self.precision) == ("fp32", "fp32") else f"|torch {torch_precision}"
        engines += "" if self.precision == "fp32" else f" vs onnxruntime {self.precision} q{INT8_FORMAT}"
        return (
            f"{info['name']}|{info['cores']} cpus|{torch.get_num_threads()} threads|torch {torch.__version__}|"
            f"onnxruntime {ort.__version__}|{type(self.model).__name__} {n_params}|"
            f"{tuple(x.shape)}|graph {GRAPH_FORMAT}{engines}"
        )

    def _verdicts_file(self) -> Path:
        return cache_dir() / "backend-verdicts.json"

    def _read_verdicts(self) -> dict:
        try:
            return json.loads(self._verdicts_file().read_text())
        except (OSError, ValueError):
            return {}

    def choose(
        self, x: torch.Tensor, torch_logits: Callable[[torch.Tensor], torch.Tensor], torch_precision: str = "fp32"
    ) -> str:
        """``"onnxruntime"`` or ``"torch"``, whichever runs batch ``x`` faster (cached verdict if any).

        ``torch_logits`` runs torch at ``torch_precision``; this engine runs at its own precision.
        """
        key = self._verdict_key(x, torch_precision)
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
