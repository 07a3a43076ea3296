"""Inference engines: one saved model, run by PyTorch or by ONNX Runtime.

An engine maps normalised float images (N, 3, S, S) to logits (N, C). `TorchEngine` runs the
network itself (channels_last on the CPU, where it is measurably faster); `OnnxEngine` runs
`model.onnx`, the same network exported beside `model.safetensors`. An ONNX file is used only
when it was exported from exactly these weights (their SHA-256 is stored in the file) and its
outputs matched PyTorch's on export (`check_parity`); otherwise `select_engine` falls back to
PyTorch and says why. ONNX files are protobuf graphs: loading one runs no Python code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ENGINES",
    "Engine",
    "EngineChoice",
    "EngineUnavailable",
    "OnnxEngine",
    "Parity",
    "TorchEngine",
    "check_parity",
    "export_onnx",
    "onnx_runtime_available",
    "select_engine",
    "weights_digest",
]

ENGINES = ("auto", "onnx", "torch")
# Largest difference in any class probability that still counts as the same model: float32
# graphs reorder sums, which moves probabilities by ~1e-6; a wrong export moves them by 1e-1.
PARITY_TOLERANCE = 1e-4
ONNX_OPSET = 17
DIGEST_KEY = "ferlab_weights_sha256"
INSTALL_HINT = "pip install 'ferlab[onnx]' (onnxruntime and onnx)"


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run here; the message says what to install or pass."""


class Engine(Protocol):
    name: str

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised float (N, 3, S, S) -> logits (N, C) on the CPU."""
        ...


class TorchEngine:
    """The PyTorch network itself, in eval mode, without autograd."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, channels_last: bool | None = None) -> None:
        self.device = device
        # channels_last: 1.8x faster CPU inference for these convnets (measured, issue 3).
        self.channels_last = device.type == "cpu" if channels_last is None else channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.eval().to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=memory_format)

    @torch.inference_mode()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.model(inputs).float().cpu()


class OnnxEngine:
    """An exported `model.onnx` on ONNX Runtime's CPU provider."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().float().cpu().contiguous().numpy()
        (output,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(output)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


@dataclass(frozen=True)
class Parity:
    """How far ONNX Runtime's outputs are from PyTorch's on the same random inputs."""

    max_probability_difference: float
    max_logit_difference: float
    images: int

    @property
    def passed(self) -> bool:
        return self.max_probability_difference <= PARITY_TOLERANCE


@dataclass(frozen=True)
class EngineChoice:
    """The engine `select_engine` settled on, and why (shown in reports and --verbose)."""

    engine: Engine
    reason: str
    parity: Parity | None = None


def onnx_runtime_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, shapes and bytes): ties an ONNX file to weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_onnx(model: nn.Module, image_size: int, path: Path, weights_digest: str) -> Path:
    """Write `model` as ONNX with a free batch dimension; the weights' digest goes inside."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".onnx.tmp")
    example = torch.zeros(1, 3, image_size, image_size)
    # The TorchScript-based exporter: it handles every registered architecture (timm's
    # TF-"same" padding included) in seconds, where the dynamo exporter takes far longer and
    # needs onnxscript. It is deprecated, hence the silenced warnings; parity is checked after.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval().cpu(),
            (example,),
            str(temporary),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(temporary))
    entry = graph.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, weights_digest
    onnx.save(graph, str(temporary))
    temporary.replace(path)  # atomic: a half-written graph is never picked up
    return path


@torch.inference_mode()
def check_parity(model: nn.Module, engine: Engine, image_size: int, images: int = 8, seed: int = 0) -> Parity:
    """Compare `engine` with the PyTorch `model` on seeded random normalised images."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(images, 3, image_size, image_size, generator=generator)
    reference = model.eval().cpu()(inputs).float()
    candidate = engine.logits(inputs)
    return Parity(
        max_probability_difference=float((F.softmax(reference, 1) - F.softmax(candidate, 1)).abs().max()),
        max_logit_difference=float((reference - candidate).abs().max()),
        images=images,
    )


def _onnx_path_for(weights_path: Path | None, digest: str) -> Path:
    """model.onnx beside the weights, or a per-digest file in the temp folder if read-only."""
    if weights_path is not None:
        beside = Path(weights_path).with_suffix(".onnx")
        if os.access(beside.parent, os.W_OK):
            return beside
    return Path(tempfile.gettempdir()) / "ferlab-onnx" / f"{digest[:24]}.onnx"


def _existing_onnx(path: Path, digest: str) -> OnnxEngine | None:
    """The ONNX file at `path` if it was exported from the weights with `digest`."""
    if not path.is_file():
        return None
    try:
        engine = OnnxEngine(path)
    except Exception:  # a broken or foreign file is re-exported, not trusted
        return None
    return engine if engine.metadata().get(DIGEST_KEY) == digest else None


def select_engine(
    model: nn.Module, image_size: int, weights_path: Path | None, device: torch.device,
    requested: str = "auto",
) -> EngineChoice:
    """The fastest correct engine for `model`.

    "auto": ONNX Runtime on the CPU when it is installed and the exported graph matches
    PyTorch, else PyTorch; "onnx": ONNX Runtime or an `EngineUnavailable` error; "torch":
    PyTorch. On a GPU "auto" keeps PyTorch (ONNX Runtime here is CPU-only).
    """
    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; choose from {', '.join(ENGINES)}")
    torch_engine = TorchEngine(model, device)
    if requested == "torch":
        return EngineChoice(torch_engine, "PyTorch, as asked (--engine torch)")
    if requested == "auto" and device.type != "cpu":
        return EngineChoice(torch_engine, f"PyTorch on {device} (ONNX Runtime is used on the CPU only)")
    if not onnx_runtime_available():
        if requested == "onnx":
            raise EngineUnavailable(f"--engine onnx needs ONNX Runtime; {INSTALL_HINT}")
        return EngineChoice(torch_engine, f"PyTorch: ONNX Runtime is not installed ({INSTALL_HINT} for faster inference)")
    digest = weights_digest(model)
    path = _onnx_path_for(weights_path, digest)
    engine = _existing_onnx(path, digest)
    try:
        if engine is None:
            engine = OnnxEngine(export_onnx(model, image_size, path, digest))
        parity = check_parity(model, engine, image_size)
    except Exception as error:  # an exporter or runtime failure: PyTorch still gives the answer
        if requested == "onnx":
            raise EngineUnavailable(f"ONNX export or run failed: {type(error).__name__}: {error}") from error
        return EngineChoice(torch_engine, f"PyTorch: ONNX export failed ({type(error).__name__}: {error})")
    finally:
        model.to(device)
    if not parity.passed:
        message = (
            f"ONNX Runtime's probabilities differ from PyTorch's by {parity.max_probability_difference:.2e} "
            f"(more than {PARITY_TOLERANCE:g})"
        )
        if requested == "onnx":
            raise EngineUnavailable(message + "; use --engine torch")
        return EngineChoice(torch_engine, f"PyTorch: {message}", parity)
    return EngineChoice(
        engine,
        f"ONNX Runtime ({path.name}; max probability difference to PyTorch {parity.max_probability_difference:.1e})",
        parity,
    )
