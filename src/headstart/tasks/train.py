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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart import engine
from headstart.backbones import Backbone, load_backbone
from headstart.data.scenes import SceneSet, load_scenes
from headstart.engine.logs import say
from headstart.engine.policy import FinetunePolicy, resolve_policy
from headstart.errors import HeadstartError
from headstart.io import atomic_write_json
from headstart.tasks.adapter import VAL_METRIC, SceneAdapter, SceneLoader, default_size, evaluate_scenes, split_scenes
from headstart.tasks.bundles import TaskBundle


@dataclass
class TaskResult:
    """The outcome of :func:`train_detector` or :func:`train_segmenter`.

    Attributes:
        task: ``detection`` or ``segmentation``.
        backbone: The backbone's name.
        policy: The policy that ran.
        lr: The base (head) learning rate.
        history: One dict per epoch: loss, validation metric, learning rate, seconds.
        best_epoch: The epoch whose weights were kept (best validation metric).
        test: Test metrics of the kept weights (None without a test split).
        val_metric: The name of the validation metric (``map_50`` or ``miou``).
        stopped_by_budget: Whether ``max_cpu_seconds`` ended training early.
        cpu_seconds: CPU time of the process during the call (all threads).
        seconds: Wall time of the call.
        problems: Data items that were reported and skipped.
        bundle: The trained model as a :class:`TaskBundle`.
        bundle_path: Where it was saved (None without ``out``).
        out: The run directory.
        dataset: Objects per class and split, and the skipped items (``headstart report`` draws them).
    """

    task: str
    backbone: str
    policy: FinetunePolicy
    lr: float
    history: list[dict[str, Any]]
    best_epoch: int
    test: dict[str, Any] | None
    val_metric: str
    stopped_by_budget: bool
    cpu_seconds: float
    seconds: float
    problems: list[dict[str, str]]
    bundle: TaskBundle = field(repr=False)
    bundle_path: Path | None
    out: Path | None
    dataset: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "backbone": self.backbone,
            "policy": self.policy.to_dict(),
            "lr": self.lr,
            "best_epoch": self.best_epoch,
            "val_metric": self.val_metric,
            "test": self.test,
            "stopped_by_budget": self.stopped_by_budget,
            "cpu_seconds": round(self.cpu_seconds, 1),
            "seconds": round(self.seconds, 1),
            "history": self.history,
            "problems": self.problems,
            "dataset": self.dataset,
            "bundle": str(self.bundle_path) if self.bundle_path else None,
            "out": str(self.out) if self.out else None,
        }


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


# ----- the run ------------------------------------------------------------------------------------

def _train(task: str, build, options: dict[str, Any], extra: dict[str, Any]) -> TaskResult:
    """Set up, hand the model to the engine, then test, save and report (``options``: the public function's arguments)."""
    if options["lr"] is None:
        raise ValueError("lr must be a positive number, got None.")
    config = engine.TrainConfig.from_options(options, nesterov=False)
    data, backbone, image_size = options["data"], options["backbone"], options["image_size"]
    run = engine.start(config)
    if run.world > 1:
        raise HeadstartError("Detection and segmentation training runs in one process for now; start it without accelerate launch / torchrun.")
    seed, device = config.seed, run.accelerator.device
    scenes = data if isinstance(data, SceneSet) else load_scenes(data, seed=seed)
    if task == "segmentation":
        scenes = scenes.with_masks()
    rows = split_scenes(scenes, config.val_fraction, seed)
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    spec = backbone.spec
    size = image_size or default_size(scenes, rows[0], task)
    torch.manual_seed(seed)
    model = build(backbone, scenes, size)
    policy = resolve_policy(spec, config.epochs, task=task, strategy=config.strategy, policy=config.policy, trainable_stages=options["trainable_stages"])
    compiled = policy.compile(model, config.lr)
    model.to(device)
    settings = {
        "task": task, "backbone": spec.name, "weights_sha256": spec.sha256, "image_size": size, "data": scenes.fingerprint(),
        "n_train": len(rows[0]), "n_val": len(rows[1]), "policy": policy.to_dict(), "epochs": config.epochs, "lr": config.lr,
        "batch_size": config.batch_size, "optimizer": config.optimizer, "warmup_epochs": config.warmup_epochs, "max_grad_norm": config.max_grad_norm,
        "mixed_precision": run.accelerator.mixed_precision, "seed": seed, **extra,
    }
    adapter = SceneAdapter(task, scenes, SceneLoader(task, scenes, size, seed, device), rows, size)
    state = engine.fit(run, adapter, model, compiled, settings, rows[0])
    test = evaluate_scenes(task, model, scenes, rows[2], adapter.loader) if len(rows[2]) else None
    model.to("cpu")
    result = _result(run, task, scenes, model, policy, settings, state, test)
    if config.out is not None:
        result.bundle_path = result.bundle.save(config.out / "bundle")
        atomic_write_json(config.out / "metrics.json", result.to_dict())
        shown, split = (rows[2], "test") if len(rows[2]) else (rows[1], "val")
        _write_run_files(config.out, result, settings, scenes, shown, split, adapter.loader, device, config.resume)
    engine.finish(run)
    if test is not None and not config.quiet:
        headline = f"test mAP {_fmt(test['map'])}, mAP@0.5 {_fmt(test['map_50'])}" if task == "detection" else f"test mIoU {_fmt(test['miou'])}, pixel accuracy {_fmt(test['pixel_accuracy'])}"
        say(f"kept epoch {state['best_epoch']}: {headline}" + (f"; bundle {result.bundle_path}" if result.bundle_path else ""))
    return result


def _result(run, task: str, scenes: SceneSet, model, policy: FinetunePolicy, settings: dict[str, Any], state: dict[str, Any], test) -> TaskResult:
    """The result, with the kept weights as a bundle."""
    spec = model.backbone.spec
    classes = scenes.classes if task == "detection" else scenes.mask_classes
    problems = [p.to_dict() for p in scenes.problems]
    metrics = {"test": test, "history": state["history"], "best_epoch": state["best_epoch"], "synthetic_data": scenes.synthetic}
    manifest = {"seed": settings["seed"], "data_source": scenes.source, "data_fingerprint": settings["data"], "train": settings, "skipped_items": len(problems)}
    bundle = TaskBundle(task, spec, model.config, classes, model=model, metrics=metrics, manifest=manifest, ignore_index=scenes.ignore_index)
    return TaskResult(
        task=task, backbone=spec.name, policy=policy, lr=settings["lr"], history=state["history"], best_epoch=state["best_epoch"], test=test,
        val_metric=VAL_METRIC[task], stopped_by_budget=state["stopped_by_budget"], cpu_seconds=time.process_time() - run.cpu_started,
        seconds=time.perf_counter() - run.started, problems=problems, bundle=bundle, bundle_path=None, out=run.config.out,
        dataset=scenes.dataset_summary(),
    )


# ----- the run directory ---------------------------------------------------------------------------

# Test images drawn with their predictions for the report.
PICTURES = 8
DRAWN_SUFFIXES = (".boxes.png", ".mask.png", ".overlay.png")


def _write_run_files(out: Path, result: TaskResult, settings: dict[str, Any], scenes: SceneSet, rows: np.ndarray, split: str,
                     loader: SceneLoader, device, resumed: bool) -> None:
    """Pictures of the predictions on up to :data:`PICTURES` images of ``rows``, ``manifest.json`` and ``report.html``.

    Neither a picture nor the report that fails loses the run: each is a warning.
    """
    from headstart.runs import write_manifest, write_report_or_warn

    try:
        _draw_predictions(out, result.bundle, scenes, rows[:PICTURES], split, loader, device)
    except Exception as exc:  # noqa: BLE001 - the model and metrics are saved; only the pictures are missing
        say(f"warning: the prediction pictures were not drawn ({type(exc).__name__}: {exc})")
    write_manifest(
        out,
        task=result.task,
        seed=settings["seed"],
        device=str(device),
        mixed_precision=settings["mixed_precision"],
        backbone=result.backbone,
        weights_sha256=settings["weights_sha256"],
        image_size=settings["image_size"],
        data_source=scenes.source,
        data_fingerprint=settings["data"],
        strategy=result.policy.strategy,
        epochs=settings["epochs"],
        lr=result.lr,
        batch_size=settings["batch_size"],
        resumed=resumed,
        wall_seconds=round(result.seconds, 2),
        cpu_seconds=round(result.cpu_seconds, 2),
        pictures=f"{min(PICTURES, len(rows))} {split} images" if len(rows) else "none (no test or val split)",
    )
    write_report_or_warn(out)


def _draw_predictions(out: Path, bundle: TaskBundle, scenes: SceneSet, rows: np.ndarray, split: str, loader: SceneLoader, device) -> None:
    """Draw the bundle's predictions on ``rows`` into the report's predictions folder, with ``captions.json``.

    The drawing is :meth:`TaskBundle.write_outputs`' (boxes, or masks and overlays); each caption
    names what was predicted beside the ground truth: box counts for detection, the image's mIoU for
    segmentation.
    """
    from headstart.evaluate.report import PREDICTION_IMAGE_DIR
    from headstart.evaluate.tasks import confusion_matrix, segmentation_metrics

    folder = out / PREDICTION_IMAGE_DIR
    if folder.is_dir():  # pictures of an earlier run in this folder would mix with these
        for old in folder.iterdir():
            if old.name.endswith(DRAWN_SUFFIXES) or old.name in ("predictions.json", "captions.json"):
                old.unlink()
    if not len(rows):
        return
    model = bundle.model
    model.to(device)
    try:
        predictions = bundle.predict_batch([loader.image(row) for row in rows], device=device)
    finally:
        model.to("cpu")
    for prediction, row in zip(predictions, rows):
        prediction.input = scenes.scenes[int(row)].name
    bundle.write_outputs(predictions, folder)
    captions: dict[str, str] = {}
    for prediction, row in zip(predictions, rows):
        if prediction.error is not None or not prediction.files:
            continue
        scene = scenes.scenes[int(row)]
        if bundle.task == "detection":
            truth = [scenes.classes[int(label)] for label, crowd in zip(scene.labels, scene.iscrowd) if not crowd]
            found = prediction.boxes or []
            caption = (f"{scene.name} ({split}): {len(found)} box{'es' if len(found) != 1 else ''} predicted at score >= "
                       f"{bundle.score_threshold:g}, {len(truth)} true" + (f" ({', '.join(truth)})" if truth else ""))
        else:
            confusion = confusion_matrix(prediction.mask, scene.mask, len(bundle.classes), bundle.ignore_index)
            miou = segmentation_metrics(confusion, bundle.classes)["miou"]
            present = [bundle.classes[i] for i in np.unique(scene.mask) if 0 < i < len(bundle.classes)]
            caption = (f"{scene.name} ({split}): mIoU {'-' if miou is None else f'{miou:.2f}'}"
                       + (f", true classes: {', '.join(present)}" if present else ""))
        captions[Path(prediction.files[-1]).name] = caption
    atomic_write_json(folder / "captions.json", captions)



def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
