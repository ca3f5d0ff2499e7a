"""ONNX Runtime and OpenVINO as optional engines for FusionLungNet on the CPU
(``pip install fusionlungseg[onnx]``, ``fusionlungseg[openvino]``).

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

OpenVINO runs the same two graphs (fp32, int8) and also bf16 (its CPU plugin
converts the fp32 graph where the CPU has bf16 units); on an AVX-512 CPU with
bf16 and VNNI units it ran the network 1.25-1.3x faster than ONNX Runtime in int8
and 1.4x faster than torch in bf16.

``backend="auto"`` (unless ``FUSIONLUNGSEG_BACKEND`` names an engine) times
torch and every installed engine that can run the precision on the first batch
of a run (each twice, the faster run counts) and keeps the fastest; the verdict
is cached per CPU, thread count, library versions, network, input size and
candidates, so later runs do not measure again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "BACKENDS",
    "available",
    "cache_dir",
    "state_sha256",
    "weights_key",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "openvino_available",
    "quantize_graph",
    "requested_backend",
    "resolve_backend",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: what each engine computes in; torch's fp32 and bf16 are decided in FusionLungSegLib.hardware
ENGINE_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
ENGINE_NAMES = {"torch": "torch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
#: Bumped when the exported graph changes for the same weights (wrapper, opset, exporter).
GRAPH_FORMAT = 1
OPSET = 17
#: Bumped when the int8 graph changes for the same fp32 graph (calibration data or quantization settings).
INT8_FORMAT = 1

_EXPORT_LOCK = threading.Lock()


def available() -> bool:
    """True when onnxruntime (to run the graph) and onnx (torch needs it to export) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def openvino_available() -> bool:
    """True when openvino can run the graph: openvino, onnx (export) and onnxruntime (its quantizer builds
    the int8 graph) can all be imported."""
    return available() and importlib.util.find_spec("openvino") is not None


def _installed(engine: str) -> bool:
    return openvino_available() if engine == "openvino" else available()


_INSTALL = {
    "onnxruntime": "pip install 'fusionlungseg[onnx]'; in 3D Slicer's Python console: "
    "slicer.util.pip_install('onnx onnxruntime')",
    "openvino": "pip install 'fusionlungseg[openvino]'; in 3D Slicer's Python console: "
    "slicer.util.pip_install('onnx onnxruntime openvino')",
}


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


def _why_not(engine: str, device: torch.device, precision: str) -> str | None:
    """Why ``engine`` cannot run ``precision`` on ``device`` here, or None."""
    if device.type != "cpu":
        return f"it runs on the CPU only here, not on {device}"
    runs = ENGINE_PRECISIONS[engine]
    if precision not in runs:
        listed = ", ".join(runs[:-1]) + " and " + runs[-1]
        return f"it runs {listed} only, not {precision} (use precision {' or '.join(runs)})"
    if engine == "openvino" and precision == "bf16":
        from . import hardware

        if not hardware.cpu_info().get("bf16_matrix_units"):
            return "it runs bf16 only on CPUs with bf16 units (amx_bf16, avx512_bf16) (use precision fp32 or int8)"
    if not _installed(engine):
        what = (
            "onnxruntime and onnx are not both"
            if engine == "onnxruntime"
            else "openvino, onnx and onnxruntime are not all"
        )
        return f"{what} installed ({_INSTALL[engine]})"
    return None


def engines_for(device: torch.device, precision: str) -> list[str]:
    """The installed engines besides torch that can run ``precision`` on ``device``."""
    return [e for e in ENGINE_PRECISIONS if _why_not(e, device, precision) is None]


def resolve_backend(backend: str | None, device: torch.device, precision: str) -> str:
    """``torch``, ``onnxruntime``, ``openvino`` or (still to be measured) ``auto`` for this device and precision.

    ONNX Runtime runs here on the CPU in fp32 or int8, OpenVINO in fp32, bf16 or int8; int8 does not run
    in torch.  ``auto`` falls back to torch where no other engine can run (another device, a precision
    they lack, not installed); an explicit engine that cannot run there is an error that says why.
    ``auto`` takes the environment variable ``FUSIONLUNGSEG_BACKEND`` (auto, torch, onnxruntime or
    openvino) when it is set.
    """
    b = requested_backend(backend)
    if precision == "int8":  # asked for by name: a torch pin in FUSIONLUNGSEG_BACKEND does not apply
        if (backend or "auto").lower() == "torch":
            raise ValueError(
                "precision int8 runs in ONNX Runtime or OpenVINO only: use backend onnxruntime, openvino or auto"
            )
        if device.type != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only, not on {device} (use precision auto or bf16 there)")
        if not available():
            raise ValueError(
                f"precision int8 needs onnxruntime and onnx ({_INSTALL['onnxruntime']}); or use precision auto"
            )
        if b == "torch":
            b = "auto"
    if b == "torch":
        return b
    if b in ENGINE_PRECISIONS:
        why = _why_not(b, device, precision)
        if why:
            raise ValueError(f"backend {b}: {why}")
        return b
    candidates = engines_for(device, precision)
    if precision == "int8" and len(candidates) == 1:  # torch cannot run int8: nothing to compare
        return candidates[0]
    return "auto" if candidates else "torch"


def weights_key(weights: str | Path | None, sha256: str | None, model: nn.Module | None) -> Callable[[], str]:
    """A callable giving the sha256 that names the cached graph, computed only when first called:
    the bundled file's known hash (``weights`` None), the given ``sha256`` or the file's own hash,
    or, for a network given in memory (``model``), the hash of its state dict."""

    @functools.cache  # one hash however many engines share the key
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
        precision: "fp32" or "int8" (the quantized graph); :class:`OpenVinoEngine` also "bf16".
        calibration: for int8, a callable returning (N, 1, S, S) network inputs of real CT at
            ``input_size`` (called once, when the int8 graph is first built).
    """

    runtime = "onnxruntime"

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
        if precision not in ENGINE_PRECISIONS[self.runtime]:
            allowed = " or ".join(ENGINE_PRECISIONS[self.runtime])
            raise ValueError(f"{ENGINE_NAMES[self.runtime]} precision must be {allowed}, got {precision!r}")
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
        if self.precision != "int8":
            return fp32
        return fp32.with_name(f"{fp32.stem}-int8-q{INT8_FORMAT}-{self.input_size}px.onnx")

    def _build_graphs(self) -> Path:
        path, fp32 = self.graph_path(), self.fp32_graph_path()
        if self.notify is not None and not path.is_file():
            self.notify(
                f"preparing {ENGINE_NAMES[self.runtime]} ({self.precision}; once per weights file and size, about 15 s)"
            )
        with _EXPORT_LOCK:
            if not fp32.is_file():
                log.info("exporting the network to ONNX (once per weights file): %s", fp32)
                export_graph(self.model, fp32, self.input_size)
            if not path.is_file():
                log.info("quantizing the ONNX graph to int8 (once per weights file and input size): %s", path)
                quantize_graph(fp32, path, self._calibration())
        return path

    def session(self):
        threads = torch.get_num_threads()  # follow torch's setting (bench --threads)
        if self._session is None or self._threads != threads:
            self._session = self._load(self._build_graphs(), threads)
            self._threads = threads
        return self._session

    def release(self) -> None:
        """Free the loaded graph (it is loaded again if this engine runs after all)."""
        self._session = None

    def _load(self, path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) fp32 input -> (N, 1, S, S) refined logits (a CPU tensor)."""
        x = x.detach().to("cpu", torch.float32).contiguous()
        (out,) = self.session().run(["logits"], {"x": x.numpy()})
        return torch.from_numpy(out)

    # ------------------------------------------------------------ auto: measure once, remember
    def label(self) -> str:
        """What this engine runs, for verdict keys: engine, precision and int8 format."""
        return f"{self.runtime} {self.precision}" + (f" q{INT8_FORMAT}" if self.precision == "int8" else "")

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def _verdict_key(self, x: torch.Tensor, candidates: Sequence[str], engines: Sequence[OnnxRuntimeEngine]) -> str:
        from .hardware import cpu_info

        info = cpu_info()
        n_params = sum(p.numel() for p in self.model.parameters())
        versions = "|".join(sorted({f"{e.runtime} {e.version()}" for e in engines}))
        return (
            f"{info['name']}|{info['cores']} cpus|{torch.get_num_threads()} threads|torch {torch.__version__}|"
            f"{versions}|{type(self.model).__name__} {n_params}|"
            f"{tuple(x.shape)}|graph {GRAPH_FORMAT}|{' vs '.join(candidates)}"
        )

    def _verdicts_file(self) -> Path:
        return cache_dir() / "backend-verdicts.json"

    def _read_verdicts(self) -> dict:
        try:
            return json.loads(self._verdicts_file().read_text())
        except (OSError, ValueError):
            return {}

    def choose(
        self,
        x: torch.Tensor,
        torch_logits: Callable[[torch.Tensor], torch.Tensor] | None,
        torch_precision: str = "fp32",
        rivals: Sequence[OnnxRuntimeEngine] = (),
    ) -> str:
        """The engine that runs batch ``x`` fastest: ``"torch"``, this engine's or a rival's ``runtime``
        (a cached verdict if this machine has one).

        ``torch_logits`` runs torch at ``torch_precision`` (None: torch cannot run this precision); each
        engine runs at its own precision.  Every engine's ``measured`` gets the seconds per slice.
        """
        engines = [self, *rivals]
        runners = {"torch": torch_logits} if torch_logits is not None else {}
        runners.update({e.runtime: e.logits for e in engines})
        candidates = ([f"torch {torch_precision}"] if torch_logits is not None else []) + [e.label() for e in engines]
        key = self._verdict_key(x, candidates, engines)
        verdict = self._read_verdicts().get(key)
        if verdict and verdict.get("backend") in runners:
            return verdict["backend"]
        for e in engines:
            e.session()  # export, quantize and load outside the timing
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(2):  # alternate, so a burst of load elsewhere hits all of them
            for name, fn in runners.items():
                t0 = self.clock()
                fn(x)
                times[name].append(self.clock() - t0)
        per_slice = {name: min(t) / x.shape[0] for name, t in times.items()}
        backend = min(per_slice, key=per_slice.get)
        for e in engines:
            e.measured = per_slice
        log.info("backend auto: %s -> %s", ", ".join(f"{k} {v:.3f} s/slice" for k, v in per_slice.items()), backend)
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


class OpenVinoEngine(OnnxRuntimeEngine):
    """FusionLungNet in OpenVINO on the CPU: the same cached graphs as :class:`OnnxRuntimeEngine`
    (fp32, and the int8 copy built by ONNX Runtime's quantizer), compiled by OpenVINO's CPU plugin.
    ``precision="bf16"`` runs the fp32 graph with bf16 inference precision (CPUs with bf16 units)."""

    runtime = "openvino"

    def version(self) -> str:
        import openvino

        return openvino.__version__

    def _load(self, path: Path, threads: int):
        import openvino as ov

        core = ov.Core()
        if (
            self.precision != "fp32"
        ):  # OpenVINO's cache of compiled int8/bf16 graphs: 0.2 s instead of 0.5-0.7 s to load
            blobs = cache_dir() / "openvino"  # (fp32 compiles in 0.2 s anyway; its blob would take 180 MB)
            try:
                blobs.mkdir(parents=True, exist_ok=True)
                if os.access(blobs, os.W_OK):
                    core.set_property({"CACHE_DIR": str(blobs)})
            except OSError:  # a read-only cache only costs compiling again
                pass
        compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                # explicit: on CPUs with bf16 units the plugin would otherwise pick bf16 for the fp32 graph
                "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        return compiled, compiled.create_infer_request()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) fp32 input -> (N, 1, S, S) refined logits (a CPU tensor)."""
        x = x.detach().to("cpu", torch.float32).contiguous()
        compiled, request = self.session()
        out = request.infer({0: x.numpy()})[compiled.output(0)]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))  # the request reuses its buffer
