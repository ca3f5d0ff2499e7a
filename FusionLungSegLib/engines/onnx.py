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

OpenVINO runs the same graphs (:mod:`.openvino`); :mod:`.auto` picks the fastest engine; :mod:`.selection`
says which engines can run a precision here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..io.files import atomic_output
from ..resources import cache_dir
from .selection import ENGINE_NAMES, ENGINE_PRECISIONS

__all__ = [
    "GRAPH_FORMAT",
    "INT8_FORMAT",
    "OPSET",
    "OnnxRuntimeEngine",
    "export_graph",
    "quantize_graph",
    "state_sha256",
    "weights_key",
]

log = logging.getLogger(__name__)

#: Bumped when the exported graph changes for the same weights (wrapper, opset, exporter).
GRAPH_FORMAT = 1
OPSET = 17
#: Bumped when the int8 graph changes for the same fp32 graph (calibration data or quantization settings).
INT8_FORMAT = 1

_EXPORT_LOCK = threading.Lock()


def state_sha256(model: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and values): a key for in-memory weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # flatten() copies in logical order whatever the memory format (the model is channels-last)
        h.update(t.flatten().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_key(weights: str | Path | None, sha256: str | None, model: nn.Module | None) -> Callable[[], str]:
    """A callable giving the sha256 that names the cached graph, computed only when first called:
    the bundled file's known hash (``weights`` None), the given ``sha256`` or the file's own hash,
    or, for a network given in memory (``model``), the hash of its state dict."""

    @functools.cache  # one hash however many engines share the key
    def key() -> str:
        from ..nets.weights import BUNDLED_SHA256, sha256_of

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
    x = torch.rand(2, 1, input_size, input_size)
    was_training = model.training
    model.eval()
    try:
        with atomic_output(path) as tmp, warnings.catch_warnings():  # the exporter's deprecation notes
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
    finally:
        model.train(was_training)
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
    fd, pre_name = tempfile.mkstemp(prefix=".tmp-", suffix="-pre.onnx", dir=path.parent)
    os.close(fd)
    pre = Path(pre_name)  # the shape-inferred copy is a step, not an output
    try:
        with atomic_output(path) as tmp, warnings.catch_warnings():
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
    finally:
        pre.unlink(missing_ok=True)
    return path


class OnnxRuntimeEngine:
    """FusionLungNet in ONNX Runtime on the CPU, built lazily from a torch model: network input (N, 1, S, S)
    in [0, 1] -> logits or probabilities (N, 1, S, S), fp32 CPU tensors.

    Args:
        model: the loaded network, fp32 on the CPU.
        weights_sha256: callable returning the weights' sha256 (called once, when the graph is first needed).
        input_size: the segmenter's network input (used for the export trace and the int8 calibration).
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
        self.precision = precision
        self.device = torch.device("cpu")  # where it runs and where its outputs are
        self._calibration = calibration
        self._session = None
        self._threads = None
        #: called with a message before a graph is built (about 15 s, once): the segmenter's progress
        self.notify: Callable[[str], None] | None = None

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

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) input -> (N, 1, S, S) fp32 probabilities (a CPU tensor)."""
        return torch.sigmoid(self.logits(x))

    def label(self) -> str:
        """What this engine runs, for verdict keys: engine, precision and int8 format."""
        return f"{self.runtime} {self.precision}" + (f" q{INT8_FORMAT}" if self.precision == "int8" else "")

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__
