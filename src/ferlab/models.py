"""Architecture registry and the study's classifier head.

Every ferlab model is `FerNet`: a pretrained convolutional body (a torchvision or timm network
without its pooling and classifier) followed by the study's fastai head. Architectures are
built by name through the explicit `ARCHITECTURES` table; an unknown name fails with the
closest matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ConcatPool2d",
    "FerNet",
    "UnknownArchitecture",
    "build_body",
    "build_head",
    "build_model",
    "get_architecture",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF-ported EfficientNet-Lite weights expect inputs scaled to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class UnknownArchitecture(ValueError):
    """The architecture name is not in the registry; the message lists the closest ones."""


@dataclass(frozen=True)
class Architecture:
    """One registry entry: how to build the full ImageNet network and cut its body."""

    name: str
    library: str  # "torchvision" or "timm": whose module definition and weight cache
    source_name: str  # the model's name in that library
    num_features: int  # channels of the body's last feature map
    imagenet_top1: float  # of the weights ferlab uses; ranks the default architecture
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    in_study: bool = False  # one of the study's two architectures


ARCHITECTURES: dict[str, Architecture] = {
    entry.name: entry
    for entry in (
        Architecture("resnet18", "torchvision", "resnet18", 512, 69.76),
        Architecture("resnet34", "torchvision", "resnet34", 512, 73.31, in_study=True),
        Architecture("resnet50", "torchvision", "resnet50", 2048, 76.13),
        Architecture("vgg16_bn", "torchvision", "vgg16_bn", 512, 73.36),
        Architecture("vgg19_bn", "torchvision", "vgg19_bn", 512, 74.22, in_study=True),
        Architecture("mobilenet_v2", "torchvision", "mobilenet_v2", 1280, 71.88),
        Architecture("convnext_tiny", "torchvision", "convnext_tiny", 768, 82.52),
        Architecture(
            "efficientnet_lite0", "timm", "tf_efficientnet_lite0", 1280, 74.83,
            INCEPTION_MEAN, INCEPTION_STD,
        ),
        Architecture(
            "efficientnet_lite1", "timm", "tf_efficientnet_lite1", 1280, 76.64,
            INCEPTION_MEAN, INCEPTION_STD,
        ),
        Architecture(
            "efficientnet_lite2", "timm", "tf_efficientnet_lite2", 1280, 77.46,
            INCEPTION_MEAN, INCEPTION_STD,
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    """The registry entry for `name`, or an error naming the closest registered ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(ARCHITECTURES), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownArchitecture(
            f"unknown architecture {name!r}; {hint}known: {', '.join(ARCHITECTURES)}"
        ) from None


def build_imagenet_network(arch: Architecture) -> nn.Module:
    """The library's full ImageNet network with random weights (pretrained ones load later)."""
    if arch.library == "torchvision":
        import torchvision

        return torchvision.models.get_model(arch.source_name, weights=None)
    import timm

    return timm.create_model(arch.source_name, pretrained=False)


def cut_body(arch: Architecture, network: nn.Module) -> nn.Module:
    """The feature extractor of a full network: everything before pooling and classifier."""
    if arch.library == "timm":
        # timm's interface: drop the classifier and the pooling, keep conv_head/bn2.
        network.reset_classifier(0, global_pool="")  # type: ignore[operator]
        return network
    if arch.source_name.startswith("resnet"):
        return nn.Sequential(*list(network.children())[:-2])
    # VGG, MobileNetV2 and ConvNeXt keep their convolutional stages in `.features`.
    features = network.features
    assert isinstance(features, nn.Module)
    return features


def build_body(arch: Architecture) -> nn.Module:
    return cut_body(arch, build_imagenet_network(arch))


class ConcatPool2d(nn.Module):
    """fastai's AdaptiveConcatPool2d: average and max pooling side by side -> 2*C features."""

    def __init__(self) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.max = nn.AdaptiveMaxPool2d(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(features), self.avg(features)], dim=1)


# The head's first layers, ConcatPool2d and Flatten, have no parameters (see build_head).
HEAD_POOLING_LAYERS = 2


def build_head(
    num_features: int,
    num_classes: int,
    hidden: int = 512,
    dropout: tuple[float, float] = (0.25, 0.5),
) -> nn.Sequential:
    """The study's head: ConcatPool -> Flatten -> BN -> Dropout -> Linear -> ReLU -> BN -> Dropout -> Linear."""
    head = nn.Sequential(
        ConcatPool2d(),
        nn.Flatten(),
        nn.BatchNorm1d(2 * num_features),
        nn.Dropout(dropout[0]),
        nn.Linear(2 * num_features, hidden, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout[1]),
        nn.Linear(hidden, num_classes, bias=False),
    )
    # fastai initialises the new linear layers with Kaiming normal.
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight)
    return head


class FerNet(nn.Module):
    """A pretrained body and the study's head: (N, 3, S, S) -> logits (N, num_classes)."""

    def __init__(self, body: nn.Module, head: nn.Sequential) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, 2*features): the body, then the head's parameter-free pooling.

        With the body frozen this is a fixed function of the image, so the frozen phase can
        compute it once and train the rest of the head (`classify`) on the cached result.
        """
        return self.head[:HEAD_POOLING_LAYERS](self.body(images))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, 2*features) from `pooled_features` -> logits (N, num_classes)."""
        return self.head[HEAD_POOLING_LAYERS:](pooled)

    def body_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Body parameters split into (early, late) halves by count, for discriminative rates."""
        params = [p for p in self.body.parameters()]
        total = sum(p.numel() for p in params)
        early: list[nn.Parameter] = []
        seen = 0
        for param in params:
            if seen >= total // 2:
                break
            early.append(param)
            seen += param.numel()
        late = params[len(early) :]
        return early, late

    def freeze_body(
        self, frozen: bool = True, train_bn: bool = False, keep_bn_statistics: bool = False
    ) -> None:
        """Freeze (or unfreeze) the body's weights.

        With `train_bn`, BatchNorm layers keep learning while frozen (fastai's train_bn);
        without it the frozen body is a fixed function: `train()` keeps it in eval mode, so
        its BatchNorm uses the ImageNet running statistics. With `keep_bn_statistics` an
        unfrozen body keeps them too: its BatchNorm layers stay in eval mode (their scale and
        shift still learn) instead of switching to the statistics of each batch.
        """
        self.body_frozen = frozen and not train_bn
        self.body_bn_fixed = keep_bn_statistics and not (frozen and train_bn)
        for module in self.body.modules():
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm)
            for param in module.parameters(recurse=False):
                param.requires_grad = not frozen or (train_bn and is_norm)
        self.train(self.training)

    def train(self, mode: bool = True) -> FerNet:
        super().train(mode)
        if mode and getattr(self, "body_frozen", False):
            self.body.eval()
        elif mode and getattr(self, "body_bn_fixed", False):
            for module in self.body.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def build_model(
    name: str,
    num_classes: int,
    hidden: int = 512,
    dropout: tuple[float, float] = (0.25, 0.5),
    load_imagenet: Callable[[Architecture, nn.Module], object] | None = None,
) -> FerNet:
    """Build `name` with the study's head; `load_imagenet` fills the full network first."""
    arch = get_architecture(name)
    network = build_imagenet_network(arch)
    if load_imagenet is not None:
        load_imagenet(arch, network)
    body = cut_body(arch, network)
    return FerNet(body, build_head(arch.num_features, num_classes, hidden, dropout))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
