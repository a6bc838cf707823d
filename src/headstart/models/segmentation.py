"""Semantic segmentation: torchvision's heads, or a light FPN decoder, on a headstart backbone's trunk.

* ``fpn`` (the default): torchvision's ``FeaturePyramidNetwork`` over the stride 8, 16 and 32 maps;
  the levels are upsampled to stride 8 and summed (the semantic branch of Panoptic FPN, reduced to
  one 3x3 convolution with GroupNorm), then a 1x1 classifier. It keeps small objects that a
  stride-32 head blurs. GroupNorm, not BatchNorm: the policy's BatchNorm modes are meant for the
  backbone, and a new layer's statistics must not stay frozen at their initial values.
* ``deeplabv3``: torchvision's ``DeepLabHead`` (ASPP) on the deepest map.
* ``fcn``: torchvision's ``FCNHead`` on the deepest map.

The network takes float images in [0, 1] (N, 3, H, W), normalises them with the backbone spec's mean
and std, and returns class logits (N, C, H, W) at the input resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.backbones import Backbone
from headstart.models.task import TaskModel
from headstart.models.trunk import DEFAULT_STRIDES, Trunk

SEGMENTATION_HEADS = ("fpn", "deeplabv3", "fcn")


class SegmentationNet(nn.Module):
    """Trunk plus decoder; ``forward(images)`` returns logits at the input size."""

    def __init__(self, trunk: Trunk, num_classes: int, head: str, channels: int, mean, std) -> None:
        super().__init__()
        self.trunk = trunk
        self.head_kind = head
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        if head == "fpn":
            from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

            self.fpn = FeaturePyramidNetwork(trunk.channels, channels)
            self.decoder = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.GroupNorm(min(32, channels // 4), channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, num_classes, 1),
            )
        elif head == "deeplabv3":
            from torchvision.models.segmentation.deeplabv3 import DeepLabHead

            self.decoder = DeepLabHead(trunk.channels[-1], num_classes, atrous_rates=(6, 12, 18))
        else:
            from torchvision.models.segmentation.fcn import FCNHead

            self.decoder = FCNHead(trunk.channels[-1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        features = self.trunk((images - self.mean) / self.std)
        if self.head_kind == "fpn":
            levels = list(self.fpn(features).values())
            merged = levels[0]
            for level in levels[1:]:
                merged = merged + F.interpolate(level, size=merged.shape[-2:], mode="bilinear", align_corners=False)
            logits = self.decoder(merged)
        else:
            logits = self.decoder(list(features.values())[-1])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_segmenter(
    backbone: Backbone,
    num_classes: int,
    *,
    head: str = "fpn",
    image_size: int = 512,
    channels: int = 128,
    strides: tuple[int, ...] = DEFAULT_STRIDES,
) -> TaskModel:
    """A segmentation network over ``backbone``'s trunk.

    Args:
        backbone: A loaded backbone; its modules are reused.
        num_classes: Mask classes, background included.
        head: ``fpn`` (light FPN decoder), ``deeplabv3`` or ``fcn``.
        image_size: Square side images are resized to for training and prediction.
        channels: Decoder width (``fpn`` only).
        strides: Backbone strides the trunk returns.

    Raises:
        ValueError: Unknown ``head``.
    """
    if head not in SEGMENTATION_HEADS:
        raise ValueError(f"head={head!r} is not a segmentation head headstart builds; choose one of {', '.join(SEGMENTATION_HEADS)}.")
    spec = backbone.spec
    trunk = Trunk(backbone, tuple(strides))
    network = SegmentationNet(trunk, num_classes, head, channels, spec.mean, spec.std)
    config = {
        "head": head, "num_classes": num_classes, "image_size": image_size, "channels": channels,
        "strides": list(strides), "trunk": trunk.describe(),
    }
    return TaskModel(backbone, network, config)


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An image (float, [0, 1], (3, S, S)) and its mask (long, (S, S), nearest) at ``size``."""
    tensor = torch.tensor(np.asarray(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    if mask is None:
        return tensor, None
    target = torch.tensor(np.asarray(mask)).long()
    if target.shape != (size, size):
        target = F.interpolate(target[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return tensor, target


@torch.no_grad()
def segment(model: TaskModel, images: list[np.ndarray], batch_size: int = 8, device: torch.device | str = "cpu") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: the class-index mask (H, W) at the image's own size, and the class probabilities' max (H, W)."""
    was_training = model.training
    model.eval()
    size = int(model.config["image_size"])
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.stack([resize_pair(image, None, size)[0] for image in chunk]).to(device)
        logits = model(batch).float()
        for image, row in zip(chunk, logits):
            height, width = image.shape[:2]
            if (height, width) != tuple(row.shape[-2:]):
                row = F.interpolate(row[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            probabilities = row.softmax(0)
            confidence, labels = probabilities.max(0)
            results.append((labels.cpu().numpy().astype(np.uint8), confidence.cpu().numpy()))
    model.train(was_training)
    return results
