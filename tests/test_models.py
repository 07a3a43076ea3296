from __future__ import annotations

import pytest
import torch
from torch import nn

from ferlab.models import (
    ARCHITECTURES,
    ConcatPool2d,
    UnknownArchitecture,
    build_model,
    get_architecture,
)

STUDY_ARCHS = {"resnet18", "resnet34", "resnet50", "vgg16_bn", "vgg19_bn", "mobilenet_v2",
               "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "convnext_tiny"}


def test_registry_holds_the_required_architectures() -> None:
    assert set(ARCHITECTURES) >= STUDY_ARCHS
    assert {a.name for a in ARCHITECTURES.values() if a.in_study} == {"resnet34", "vgg19_bn"}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_trains_with_the_study_head(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    images = torch.randn(2, 3, 64, 64)
    logits = model(images)
    assert logits.shape == (2, 5)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 3]))
    loss.backward()
    # Gradients reach the first body layer and the last head layer.
    first = next(p for p in model.body.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert model.head[-1].weight.grad is not None


def test_head_is_the_studys() -> None:
    model = build_model("resnet34", num_classes=5)
    kinds = [type(m) for m in model.head]
    assert kinds == [ConcatPool2d, nn.Flatten, nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU,
                     nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert model.head[2].num_features == 1024
    assert (model.head[4].in_features, model.head[4].out_features) == (1024, 512)
    assert model.head[4].bias is None and model.head[8].bias is None
    assert (model.head[3].p, model.head[7].p) == (0.25, 0.5)
    assert model.head[8].out_features == 5


def test_unknown_architecture_suggests_the_closest() -> None:
    with pytest.raises(UnknownArchitecture, match="did you mean 'resnet34'"):
        get_architecture("resnt34")


def test_freezing_the_body() -> None:
    model = build_model("resnet18", num_classes=5)
    model.freeze_body(True)
    assert not any(p.requires_grad for p in model.body.parameters())
    model.train()
    assert not model.body.training and model.head.training  # ImageNet BatchNorm statistics kept
    model.freeze_body(True, train_bn=True)  # fastai's train_bn
    for module in model.body.modules():
        for param in module.parameters(recurse=False):
            assert param.requires_grad == isinstance(module, nn.BatchNorm2d)
    assert model.body.training
    assert all(p.requires_grad for p in model.head.parameters())
    model.freeze_body(False)
    assert all(p.requires_grad for p in model.parameters()) and model.body.training
    norms = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training for m in norms)  # fastai's way: batch statistics once unfrozen


def test_unfrozen_body_can_keep_its_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5)
    model.freeze_body(False, keep_bn_statistics=True)
    model.train()
    norms = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.body.modules() if isinstance(m, nn.Conv2d)]
    assert model.body.training and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    weights = [m.weight.detach().clone() for m in (norms[0], convs[0])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    # The statistics stay ImageNet's; the BatchNorm scale and the convolutions still learn.
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))
    assert not torch.equal(weights[0], norms[0].weight) and not torch.equal(weights[1], convs[0].weight)


def test_body_groups_split_every_body_parameter_once() -> None:
    model = build_model("mobilenet_v2", num_classes=5)
    early, late = model.body_groups()
    assert early and late
    assert len(early) + len(late) == len(list(model.body.parameters()))
