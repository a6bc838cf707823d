"""Object detection and semantic segmentation: thin glue over torchvision's models, on headstart backbones.

* :func:`load_scenes` reads boxes and masks (COCO JSON, Pascal VOC, images + mask PNGs, or the
  synthetic ``builtin:animal-scenes``); bad items are reported with file and field, and skipped.
* :func:`train_detector` / :func:`train_segmenter` train through the fine-tuning policy, with
  frozen checks, AMP, checkpoints and exact resume, and return a :class:`TaskResult` whose bundle
  ``headstart predict`` uses unchanged.
* :func:`detection_metrics` (COCO mAP, mAP@0.5, AP per class) and :func:`segmentation_metrics`
  (mIoU, IoU per class, pixel accuracy).

Heavy modules import on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Scene": "headstart.data.scenes.scene",
    "SceneSet": "headstart.data.scenes.scene",
    "Problem": "headstart.data.scenes.scene",
    "load_scenes": "headstart.data.scenes.load",
    "animal_scenes": "headstart.data.scenes.synthetic",
    "write_coco": "headstart.data.scenes.coco",
    "build_detector": "headstart.models.detection",
    "build_segmenter": "headstart.models.segmentation",
    "train_detector": "headstart.tasks.train",
    "train_segmenter": "headstart.tasks.train",
    "TaskResult": "headstart.tasks.result",
    "SceneLoader": "headstart.tasks.adapter",
    "evaluate_scenes": "headstart.tasks.adapter",
    "TaskBundle": "headstart.bundles",
    "detection_metrics": "headstart.evaluate.tasks",
    "segmentation_metrics": "headstart.evaluate.tasks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headstart.tasks' has no attribute {name!r}")
