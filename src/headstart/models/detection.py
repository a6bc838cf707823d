"""Object detection: torchvision's detectors on a headstart backbone's feature pyramid.

Nothing here is a new architecture: the trunk's maps (:mod:`headstart.models.trunk`) go into
torchvision's ``FeaturePyramidNetwork`` (the neck of ``BackboneWithFPN``), and the pyramid into
torchvision's ``FasterRCNN`` (the default), ``RetinaNet`` or ``FCOS``. Only sizes are chosen here:

* anchors: two sizes per pyramid level, ``2 x stride`` and ``4 x stride`` (16 to 256 pixels over
  strides 8 to 64), three aspect ratios; FCOS uses one point per location;
* the detector's own transform resizes images so the shorter side is ``image_size`` and normalises
  with the backbone spec's mean and std (the weights carry their preprocessing);
* Faster R-CNN samples 64 regions per image and keeps 1000/500 proposals (train/test), which
  suits few-object images; the box head's width is ``4 x fpn_channels``.

Class labels are 0-based class indices everywhere in headstart; the torchvision models see
``label + 1`` (0 is their background).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.backbones import Backbone
from headstart.models.task import TaskModel
from headstart.models.trunk import DEFAULT_STRIDES, Trunk

DETECTORS = ("fasterrcnn", "retinanet", "fcos")


class FeaturePyramid(nn.Module):
    """The trunk followed by torchvision's FPN: ``BackboneWithFPN`` with a trunk in place of its layer getter."""

    def __init__(self, trunk: Trunk, out_channels: int, extra: str = "pool") -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

        self.body = trunk
        extra_blocks = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(trunk.channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor):
        return self.fpn(self.body(x))


def build_detector(
    backbone: Backbone,
    num_classes: int,
    *,
    arch: str = "fasterrcnn",
    image_size: int = 512,
    fpn_channels: int = 256,
    strides: tuple[int, ...] = DEFAULT_STRIDES,
) -> TaskModel:
    """A torchvision detector over ``backbone``'s feature pyramid.

    Args:
        backbone: A loaded backbone; its modules are reused (and timm ones pruned after the last stage used).
        num_classes: Object classes (without background).
        arch: ``fasterrcnn`` (Faster R-CNN + FPN), ``retinanet`` or ``fcos``.
        image_size: Shorter image side the detector resizes to (the longer side is capped at 5/3 of it).
        fpn_channels: Width of the pyramid.
        strides: Backbone strides that feed the pyramid.

    Returns:
        A :class:`TaskModel`: ``model(images)`` gives detections in eval mode, ``model(images, targets)``
        gives the loss dict in train mode (torchvision's conventions; labels 1-based there).

    Raises:
        ValueError: Unknown ``arch``.
    """
    if arch not in DETECTORS:
        raise ValueError(f"arch={arch!r} is not a detector headstart builds; choose one of {', '.join(DETECTORS)}.")
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    spec = backbone.spec
    trunk = Trunk(backbone, tuple(strides))
    pyramid = FeaturePyramid(trunk, fpn_channels, extra="pool" if arch == "fasterrcnn" else "p6p7")
    levels = list(trunk.strides) + ([trunk.strides[-1] * 2] if arch == "fasterrcnn" else [trunk.strides[-1] * 2, trunk.strides[-1] * 4])
    common: dict[str, Any] = {
        "min_size": image_size,
        "max_size": int(round(image_size * 5 / 3)),
        "image_mean": list(spec.mean),
        "image_std": list(spec.std),
    }
    if arch == "fasterrcnn":
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        anchors = AnchorGenerator(tuple((2 * s, 4 * s) for s in levels), ((0.5, 1.0, 2.0),) * len(levels))
        names = [str(i) for i in range(len(trunk.strides))]
        network = FasterRCNN(
            pyramid,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(fpn_channels * 7 * 7, 4 * fpn_channels),
            box_predictor=FastRCNNPredictor(4 * fpn_channels, num_classes + 1),
            rpn_pre_nms_top_n_train=1000,
            rpn_post_nms_top_n_train=500,
            rpn_pre_nms_top_n_test=500,
            rpn_post_nms_top_n_test=300,
            box_batch_size_per_image=64,
            **common,
        )
    elif arch == "retinanet":
        scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
        anchors = AnchorGenerator(tuple(tuple(int(2 * s * k) for k in scales) for s in levels), ((0.5, 1.0, 2.0),) * len(levels))
        network = RetinaNet(pyramid, num_classes=num_classes + 1, anchor_generator=anchors, **common)
    else:
        anchors = AnchorGenerator(tuple((s,) for s in levels), ((1.0,),) * len(levels))
        network = FCOS(pyramid, num_classes=num_classes + 1, anchor_generator=anchors, **common)
    config = {
        "arch": arch, "num_classes": num_classes, "image_size": image_size, "fpn_channels": fpn_channels,
        "strides": list(strides), "trunk": trunk.describe(),
    }
    return TaskModel(backbone, network, config)


def to_targets(boxes: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray) -> dict[str, torch.Tensor]:
    """Training targets in torchvision's form; crowd and ignore regions are left out (as torchvision's references do)."""
    keep = ~np.asarray(iscrowd, dtype=bool)
    return {
        "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32)[keep]).reshape(-1, 4),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)[keep] + 1),
    }


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """A uint8 (H, W, 3) image as the float (3, H, W) tensor in [0, 1] that torchvision's detectors take."""
    return torch.tensor(np.asarray(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


@torch.no_grad()
def detect(model: TaskModel, images: list[np.ndarray], score_threshold: float = 0.05, batch_size: int = 8, device: torch.device | str = "cpu") -> list[dict[str, np.ndarray]]:
    """Detections per image: ``boxes`` (N, 4) ``x0, y0, x1, y1``, ``scores``, ``labels`` (0-based class indices)."""
    was_training = model.training
    model.eval()
    results = []
    for start in range(0, len(images), batch_size):
        batch = [image_tensor(image).to(device) for image in images[start : start + batch_size]]
        for output in model(batch):
            keep = output["scores"] >= score_threshold
            results.append({
                "boxes": output["boxes"][keep].float().cpu().numpy(),
                "scores": output["scores"][keep].float().cpu().numpy(),
                "labels": (output["labels"][keep] - 1).cpu().numpy(),
            })
    model.train(was_training)
    return results
