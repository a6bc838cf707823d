"""Train a detector or a segmenter: one plain loop, with the fine-tuning policy, checks and checkpoints.

The loop is :mod:`headstart.engine`'s, the one classification fine-tuning runs on:
:class:`FinetunePolicy` decides what trains in which epoch, at which learning rate, and how
BatchNorm behaves; :class:`FrozenGuard` proves after each epoch that frozen weights and frozen
BatchNorm statistics did not move; Accelerate gives the device and autocast (AMP); checkpoints are
written atomically after every epoch, and ``resume=True`` continues exactly where the last one
stopped. Only the step differs from classification (:class:`~headstart.tasks.adapter.SceneAdapter`):
a detector returns its loss dict, a segmenter logits for a cross-entropy that skips the ignore index.

The loop is single-process; ``accelerate launch`` with several processes is refused with a message.

Policy defaults (:func:`headstart.engine.resolve_policy`): with no ``strategy``, ``policy`` or
``trainable_stages``, everything trains, with BatchNorm ``stats-frozen`` for pretrained backbones
(running statistics kept, as torchvision's frozen BatchNorm does for detection) and ``train`` for
random ones. ``trainable_stages=K`` is torchvision's ``trainable_backbone_layers``: the head plus
the last K stages of ``spec.param_groups`` (``last-n:K``), 0 for the head alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart import engine
from headstart.backbones import Backbone, check_trainable
from headstart.data.scenes import SceneSet
from headstart.engine.policy import FinetunePolicy
from headstart.errors import OptionError
from headstart.tasks.adapter import SceneAdapter
from headstart.tasks.result import TaskResult


def train_detector(
    data: SceneSet | str | Path,
    backbone: Backbone | str,
    *,
    arch: str = "fasterrcnn",
    strategy: str | None = None,
    policy: FinetunePolicy | str | Path | None = None,
    trainable_stages: int | None = None,
    epochs: int = 12,
    lr: float = 1e-3,
    batch_size: int = 4,
    optimizer: str = "adamw",
    warmup_epochs: float = 1.0,
    max_grad_norm: float | None = 10.0,
    image_size: int | None = None,
    fpn_channels: int = 256,
    val_fraction: float = 0.1,
    mixed_precision: str = "auto",
    max_cpu_seconds: float | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    quiet: bool = False,
) -> TaskResult:
    """Train a detector (Faster R-CNN + FPN by default) on a pretrained backbone.

    Args:
        data: A :class:`SceneSet` or a source for :func:`load_scenes` (``builtin:animal-scenes``,
            a COCO JSON file, a VOC folder, ...).
        backbone: A backbone name (``tv:mobilenet_v2.IMAGENET1K_V1``) or a loaded :class:`Backbone`
            (its modules are trained in place).
        arch: ``fasterrcnn``, ``retinanet`` or ``fcos``.
        strategy: A fine-tuning strategy (``full``, ``last-stage``, ``linear-then-full``, ``gradual``).
        policy: A :class:`FinetunePolicy` or a YAML file of one (patterns see ``head.*`` for the new parts).
        trainable_stages: torchvision's ``trainable_backbone_layers``: the last K stages train (0: the head only).
        epochs: Epochs to train.
        lr: The head's learning rate (the policy scales other groups).
        batch_size: Images per step.
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9).
        warmup_epochs: Linear warm-up before the cosine decay, in epochs.
        max_grad_norm: Clip the gradient norm to this; None turns clipping off.
        image_size: Shorter side the detector resizes images to; None: the training images' median shorter side (at most 800).
        fpn_channels: Width of the feature pyramid.
        val_fraction: Share of the training images held out for validation when there is no val split.
        mixed_precision: ``auto`` (bf16/fp16 on GPUs, none on CPUs), ``no``, ``bf16`` or ``fp16``.
        max_cpu_seconds: Stop training once the process has used this much CPU time (all threads); None: no limit.
        seed: Seed for the split, the shuffles, the flips and the initialisation of the new parts.
        out: Run directory (checkpoints, metrics.csv, metrics.json, bundle/). None keeps everything in memory.
        resume: Continue the run in ``out`` from its last checkpoint.
        device: ``auto``, ``cpu`` or ``cuda``.
        quiet: No per-epoch lines.

    Returns:
        A :class:`TaskResult`; ``result.test`` holds COCO mAP, mAP@0.5 and AP per class.
    """
    options = dict(locals())
    from headstart.models.detection import build_detector

    def build(loaded: Backbone, scenes: SceneSet, size: int):
        return build_detector(loaded, len(scenes.classes), arch=arch, image_size=size, fpn_channels=fpn_channels)

    return _train("detection", build, options, {"arch": arch, "fpn_channels": fpn_channels})


def train_segmenter(
    data: SceneSet | str | Path,
    backbone: Backbone | str,
    *,
    head: str = "fpn",
    strategy: str | None = None,
    policy: FinetunePolicy | str | Path | None = None,
    trainable_stages: int | None = None,
    epochs: int = 12,
    lr: float = 1e-3,
    batch_size: int = 8,
    optimizer: str = "adamw",
    warmup_epochs: float = 1.0,
    max_grad_norm: float | None = 10.0,
    image_size: int | None = None,
    channels: int = 128,
    val_fraction: float = 0.1,
    mixed_precision: str = "auto",
    max_cpu_seconds: float | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    quiet: bool = False,
) -> TaskResult:
    """Train a semantic segmenter (light FPN decoder by default) on a pretrained backbone.

    Arguments are those of :func:`train_detector`, except:

    Args:
        head: ``fpn`` (light FPN decoder), ``deeplabv3`` or ``fcn`` (torchvision's heads).
        image_size: Square side images and masks are resized to; None: the training images' median
            shorter side (at most 800), rounded to a multiple of 32.
        channels: Decoder width (``fpn``).

    Returns:
        A :class:`TaskResult`; ``result.test`` holds mIoU, IoU per class and pixel accuracy.
    """
    options = dict(locals())
    from headstart.models.segmentation import build_segmenter

    def build(loaded: Backbone, scenes: SceneSet, size: int):
        return build_segmenter(loaded, len(scenes.mask_classes), head=head, image_size=size, channels=channels)

    return _train("segmentation", build, options, {"head": head, "channels": channels})


def _train(task: str, build, options: dict[str, Any], extra: dict[str, Any]) -> TaskResult:
    """Map the public function's arguments (``options``) onto the engine's config and the task's adapter, and run."""
    if options["lr"] is None:
        raise OptionError("--lr must be a positive number, got None.")
    check_trainable(options["backbone"])  # an onnx: backbone cannot train: say so before any work
    config = engine.TrainConfig.from_options(options, nesterov=False)
    adapter = SceneAdapter(task, options["data"], options["backbone"], build, image_size=options["image_size"],
                           trainable_stages=options["trainable_stages"], extra=extra)
    return engine.train(config, adapter)


__all__ = ["TaskResult", "train_detector", "train_segmenter"]
