"""Trainable networks built on a headstart backbone: what fine-tuning and task training optimise.

* :mod:`~headstart.models.classifier`: :class:`FinetuneModel`, a backbone plus a linear head;
* :mod:`~headstart.models.detection` and :mod:`~headstart.models.segmentation`: torchvision's
  detectors and segmentation heads over the backbone's multi-scale trunk
  (:mod:`~headstart.models.trunk`), both :class:`~headstart.models.task.TaskModel`.

Modules import torch; nothing here imports a layer above (training, bundles, reports).
"""
