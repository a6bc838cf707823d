"""Train a detector or a segmenter: one plain loop, with the fine-tuning policy, checks and checkpoints.

The pieces are classification fine-tuning's own: :class:`FinetunePolicy` decides what trains in
which epoch, at which learning rate, and how BatchNorm behaves (``policy.compile`` gives the
optimizer groups and the phases); :class:`FrozenGuard` proves after each epoch that frozen weights
and frozen BatchNorm statistics did not move; Accelerate gives the device and autocast (AMP);
checkpoints (model, optimizer, scheduler, scaler, random states, loop state, settings) are written
atomically after every epoch, and ``resume=True`` continues exactly where the last one stopped.
Only the step differs from classification: a detector returns its loss dict, a segmenter logits
for a cross-entropy that skips the ignore index.

The loop is single-process; ``accelerate launch`` with several processes is refused with a message.

Policy defaults: with no ``strategy``, ``policy`` or ``trainable_stages``, everything trains, with
BatchNorm ``stats-frozen`` for pretrained backbones (running statistics kept, as torchvision's
frozen BatchNorm does for detection) and ``train`` for random ones. ``trainable_stages=K`` is
torchvision's ``trainable_backbone_layers``: the head plus the last K stages of ``spec.param_groups``
(``last-n:K``), 0 for the head alone.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.backbones import Backbone, load_backbone
from headstart.errors import DataError, HeadstartError
from headstart.io import atomic_write_bytes, atomic_write_json
from headstart.data.augment import sample_seed
from headstart.finetune.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, settings_diff
from headstart.finetune.data import train_batches
from headstart.finetune.guard import FrozenGuard
from headstart.finetune.loop import TrainingDivergedError, _make_accelerator, _warmup_cosine
from headstart.finetune.policy import FinetunePolicy, PolicyError, strategy_policy
from headstart.bundles import TaskBundle
from headstart.data.scenes import SceneSet, load_scenes

OPTIMIZERS = ("adamw", "sgd")


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
    from headstart.models.detection import build_detector

    def build(loaded: Backbone, scenes: SceneSet, size: int):
        return build_detector(loaded, len(scenes.classes), arch=arch, image_size=size, fpn_channels=fpn_channels)

    return _train(
        "detection", data, backbone, build, strategy=strategy, policy=policy, trainable_stages=trainable_stages, epochs=epochs,
        lr=lr, batch_size=batch_size, optimizer=optimizer, warmup_epochs=warmup_epochs, max_grad_norm=max_grad_norm,
        image_size=image_size, val_fraction=val_fraction, mixed_precision=mixed_precision, max_cpu_seconds=max_cpu_seconds,
        seed=seed, out=out, resume=resume, device=device, quiet=quiet, extra={"arch": arch, "fpn_channels": fpn_channels},
    )


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
    from headstart.models.segmentation import build_segmenter

    def build(loaded: Backbone, scenes: SceneSet, size: int):
        return build_segmenter(loaded, len(scenes.mask_classes), head=head, image_size=size, channels=channels)

    return _train(
        "segmentation", data, backbone, build, strategy=strategy, policy=policy, trainable_stages=trainable_stages, epochs=epochs,
        lr=lr, batch_size=batch_size, optimizer=optimizer, warmup_epochs=warmup_epochs, max_grad_norm=max_grad_norm,
        image_size=image_size, val_fraction=val_fraction, mixed_precision=mixed_precision, max_cpu_seconds=max_cpu_seconds,
        seed=seed, out=out, resume=resume, device=device, quiet=quiet, extra={"head": head, "channels": channels},
    )


def task_policy(strategy: str | None, policy: FinetunePolicy | str | Path | None, trainable_stages: int | None, spec, epochs: int) -> FinetunePolicy:
    """The policy of a detection or segmentation run (see the module docstring for the defaults).

    Raises:
        PolicyError: More than one of the three is given, ``lp-ft`` (or a probe-initialised head) is asked for, or K < 0.
    """
    given = [name for name, value in (("strategy", strategy), ("policy", policy), ("trainable_stages", trainable_stages)) if value is not None]
    if len(given) > 1:
        raise PolicyError(f"Give one of strategy, policy or trainable_stages, not {' and '.join(given)}: each states the whole plan.")
    bn = "stats-frozen" if spec.pretrained else "train"
    if isinstance(policy, (str, Path)):
        resolved = FinetunePolicy.load(policy)
    elif policy is not None:
        resolved = policy
    elif strategy is not None:
        resolved = strategy_policy(strategy, spec, epochs)
    elif trainable_stages is not None:
        if trainable_stages < 0:
            raise PolicyError(f"trainable_stages must be >= 0, got {trainable_stages}.")
        trainable = ("head",) if trainable_stages == 0 else ("head", f"last-n:{trainable_stages}")
        resolved = FinetunePolicy(trainable=trainable, bn=bn, strategy=f"trainable-stages-{trainable_stages}")
    else:
        resolved = FinetunePolicy(trainable=("*",), bn=bn, strategy="full")
    if getattr(resolved, "lora_rank", 0):
        raise PolicyError(
            f"The policy adds LoRA adapters (lora_rank={resolved.lora_rank}), which headstart applies to transformer "
            "linear layers in classification only; detection and segmentation train the convolutional trunk directly."
        )
    if resolved.head_init != "random":
        raise PolicyError(
            f"head_init={resolved.head_init!r} ({resolved.strategy}) starts the head from a linear probe of pooled features; "
            "detection and segmentation heads are new networks, so they start at random. Use full, last-stage, "
            "linear-then-full or gradual, trainable_stages=K, or a policy with head_init: random."
        )
    return resolved


# ----- the loop ------------------------------------------------------------------------------------

def _train(task: str, data, backbone, build, *, strategy, policy, trainable_stages, epochs, lr, batch_size, optimizer, warmup_epochs,
           max_grad_norm, image_size, val_fraction, mixed_precision, max_cpu_seconds, seed, out, resume, device, quiet, extra) -> TaskResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    _check_arguments(epochs, lr, batch_size, optimizer, val_fraction, resume, out)
    accelerator = _make_accelerator(device, mixed_precision)
    if accelerator.num_processes > 1:
        raise HeadstartError("Detection and segmentation training runs in one process for now; start it without accelerate launch / torchrun.")
    out = Path(out) if out is not None else None

    # ----- data, model, policy ----------------------------------------------------------------
    scenes = data if isinstance(data, SceneSet) else load_scenes(data, seed=seed)
    if task == "segmentation":
        scenes = scenes.with_masks()
    train_rows, val_rows, test_rows = _split(scenes, val_fraction, seed)
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    spec = backbone.spec
    size = image_size or _default_size(scenes, train_rows, task)
    torch.manual_seed(seed)
    model = build(backbone, scenes, size)
    resolved = task_policy(strategy, policy, trainable_stages, spec, epochs)
    compiled = resolved.compile(model, lr)
    model.to(accelerator.device)
    settings = {
        "task": task, "backbone": spec.name, "weights_sha256": spec.sha256, "image_size": size, "data": scenes.fingerprint(),
        "n_train": len(train_rows), "n_val": len(val_rows), "policy": resolved.to_dict(), "epochs": epochs, "lr": lr,
        "batch_size": batch_size, "optimizer": optimizer, "warmup_epochs": warmup_epochs, "max_grad_norm": max_grad_norm,
        "mixed_precision": accelerator.mixed_precision, "seed": seed, **extra,
    }

    groups = compiled.optimizer_groups()
    for group in groups:
        group.pop("names")
    if optimizer == "adamw":
        inner = torch.optim.AdamW(groups, lr=lr, weight_decay=resolved.weight_decay)
    else:
        inner = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=resolved.weight_decay)
    opt = accelerator.prepare_optimizer(inner)
    steps_per_epoch = len(train_batches(train_rows, batch_size, seed, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(inner, _warmup_cosine(round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch))

    state: dict[str, Any] = {"epoch": 0, "best_epoch": -1, "best_value": None, "history": [], "done": False, "stopped_by_budget": False, "cpu_used": 0.0}
    if resume:
        checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
        differences = settings_diff(checkpoint["settings"], settings)
        if differences:
            raise CheckpointError(
                f"The checkpoint in {out} comes from a run with other settings: {'; '.join(differences)}. "
                "Resume with the same arguments, or start a new run in another --out folder."
            )
        model.network.load_state_dict(checkpoint["model"])
        inner.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if accelerator.scaler is not None and checkpoint.get("scaler"):
            accelerator.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        state = checkpoint["loop"]
        _say(quiet, f"resuming {out} at epoch {state['epoch']}")
    else:
        summary = compiled.summary(0)
        _say(quiet, f"{task}: {spec.name} + {_describe_model(model)} at {size} px on {accelerator.device}, {len(train_rows)} train / "
                    f"{len(val_rows)} val / {len(test_rows)} test images, {summary['trainable_params']:,} of {summary['total_params']:,} "
                    f"parameters train in epoch 0 ({resolved.strategy}, BatchNorm {resolved.bn}), lr {lr:g}"
                    + (" [synthetic data]" if scenes.synthetic else ""))
    if out is not None:
        atomic_write_bytes(out / "policy.yaml", resolved.to_yaml().encode())

    loader = _Loader(task, scenes, size, seed, accelerator.device)
    val_metric = "map_50" if task == "detection" else "miou"
    best_state = None
    phase = None
    cpu_before = state["cpu_used"]
    cpu_mark = time.process_time()
    epoch = state["epoch"]
    while epoch < epochs and not state["done"]:
        if resolved.phase_at(epoch) != phase:
            phase = resolved.phase_at(epoch)
            compiled.apply(model, epoch)
        guard = FrozenGuard(model, epoch)
        tick = time.perf_counter()
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        losses = []
        for index, rows in enumerate(train_batches(train_rows, batch_size, seed, epoch)):
            with accelerator.autocast():
                loss = _loss(task, model, loader.batch(rows, epoch), scenes.ignore_index)
            if not torch.isfinite(loss.detach()):
                raise TrainingDivergedError(
                    f"The training loss became {loss.item()} in epoch {epoch}, batch {index}, at learning rate {scheduler.get_last_lr()[-1]:.3g}. "
                    "Lower the learning rate (for example by 10x), or turn mixed precision off."
                )
            accelerator.backward(loss)
            if max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, max_grad_norm)
            opt.step()
            if not opt.step_was_skipped:
                scheduler.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if max_cpu_seconds is not None and cpu_before + time.process_time() - cpu_mark > max_cpu_seconds:
                state["stopped_by_budget"] = True
                break
        train_seconds = time.perf_counter() - tick
        value = _evaluate(task, model, scenes, val_rows, loader)[val_metric] if len(val_rows) else None
        guard.check()
        improved = state["best_value"] is None or (value is not None and value > state["best_value"]) or (value is None and len(val_rows) == 0)
        if improved:
            state.update(best_value=value, best_epoch=epoch)
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.network.state_dict().items()}
        row = {
            "epoch": epoch, "phase": phase, "trainable_params": compiled.summary(epoch)["trainable_params"], "lr": scheduler.get_last_lr()[-1],
            "train_loss": float(np.mean(losses)) if losses else None, f"val_{val_metric}": value, "steps": len(losses),
            "seconds_train": round(train_seconds, 2), "seconds": round(time.perf_counter() - tick, 2), "best": improved,
        }
        state["history"].append(row)
        epoch += 1
        state["epoch"] = epoch
        state["cpu_used"] = cpu_before + time.process_time() - cpu_mark
        if epoch >= epochs or state["stopped_by_budget"]:
            state["done"] = True
        _say(quiet, f"epoch {row['epoch']} [{epoch}/{epochs}]: train loss {row['train_loss'] or float('nan'):.4f} | val {val_metric} "
                    f"{'-' if value is None else f'{value:.3f}'} | lr {row['lr']:.2e} | {row['seconds']:.1f} s" + (" best" if improved else "")
                    + (" | CPU budget reached" if state["stopped_by_budget"] else ""))
        if out is not None:
            checkpoint = {
                "settings": settings, "model": model.network.state_dict(), "optimizer": inner.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None, "rng": rng_state(),
                "policy": resolved.to_dict(), "phase": phase, "loop": state,
            }
            save_checkpoint(out / "checkpoints" / "last.pt", checkpoint)
            if improved:
                save_checkpoint(out / "checkpoints" / "best.pt", checkpoint)
            _write_history(out, state["history"])
        _after_epoch(epoch)

    # ----- the kept weights, test metrics, bundle ---------------------------------------------
    if best_state is None and out is not None and (out / "checkpoints" / "best.pt").is_file():
        best_state = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    if best_state is not None:
        model.network.load_state_dict(best_state)
    model.eval()
    test = _evaluate(task, model, scenes, test_rows, loader) if len(test_rows) else None
    model.to("cpu")
    classes = scenes.classes if task == "detection" else scenes.mask_classes
    problems = [p.to_dict() for p in scenes.problems]
    metrics = {"test": test, "history": state["history"], "best_epoch": state["best_epoch"], "synthetic_data": scenes.synthetic}
    manifest = {"seed": seed, "data_source": scenes.source, "data_fingerprint": settings["data"], "train": settings, "skipped_items": len(problems)}
    bundle = TaskBundle(task, spec, model.config, classes, model=model, metrics=metrics, manifest=manifest, ignore_index=scenes.ignore_index)
    cpu_seconds = time.process_time() - cpu_started
    result = TaskResult(
        task=task, backbone=spec.name, policy=resolved, lr=lr, history=state["history"], best_epoch=state["best_epoch"], test=test,
        val_metric=val_metric, stopped_by_budget=state["stopped_by_budget"], cpu_seconds=cpu_seconds, seconds=time.perf_counter() - started,
        problems=problems, bundle=bundle, bundle_path=None, out=out, dataset=scenes.dataset_summary(),
    )
    if out is not None:
        result.bundle_path = bundle.save(out / "bundle")
        atomic_write_json(out / "metrics.json", result.to_dict())
        shown, split = (test_rows, "test") if len(test_rows) else (val_rows, "val")
        _write_run_files(out, result, settings, scenes, shown, split, loader, accelerator.device, resume)
    if test is not None:
        headline = f"test mAP {_fmt(test['map'])}, mAP@0.5 {_fmt(test['map_50'])}" if task == "detection" else f"test mIoU {_fmt(test['miou'])}, pixel accuracy {_fmt(test['pixel_accuracy'])}"
        _say(quiet, f"kept epoch {state['best_epoch']}: {headline}" + (f"; bundle {result.bundle_path}" if result.bundle_path else ""))
    return result


# ----- the run directory ---------------------------------------------------------------------------

# Test images drawn with their predictions for the report.
PICTURES = 8
DRAWN_SUFFIXES = (".boxes.png", ".mask.png", ".overlay.png")


def _write_run_files(out: Path, result: TaskResult, settings: dict[str, Any], scenes: SceneSet, rows: np.ndarray, split: str,
                     loader: _Loader, device, resumed: bool) -> None:
    """Pictures of the predictions on up to :data:`PICTURES` images of ``rows``, ``manifest.json`` and ``report.html``.

    Neither a picture nor the report that fails loses the run: each is a warning.
    """
    from headstart.report import write_report_or_warn
    from headstart.runs import write_manifest

    try:
        _draw_predictions(out, result.bundle, scenes, rows[:PICTURES], split, loader, device)
    except Exception as exc:  # noqa: BLE001 - the model and metrics are saved; only the pictures are missing
        _say(False, f"warning: the prediction pictures were not drawn ({type(exc).__name__}: {exc})")
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


def _draw_predictions(out: Path, bundle: TaskBundle, scenes: SceneSet, rows: np.ndarray, split: str, loader: _Loader, device) -> None:
    """Draw the bundle's predictions on ``rows`` into the report's predictions folder, with ``captions.json``.

    The drawing is :meth:`TaskBundle.write_outputs`' (boxes, or masks and overlays); each caption
    names what was predicted beside the ground truth: box counts for detection, the image's mIoU for
    segmentation.
    """
    from headstart.runs import PREDICTION_IMAGE_DIR
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


def _after_epoch(epoch: int) -> None:
    """Called after each epoch's checkpoint (tests interrupt a run here)."""


def _loss(task: str, model, batch, ignore_index: int) -> torch.Tensor:
    if task == "detection":
        images, targets = batch
        return sum(model(images, targets).values())
    images, masks = batch
    return F.cross_entropy(model(images).float(), masks, ignore_index=ignore_index)


@torch.no_grad()
def _evaluate(task: str, model, scenes: SceneSet, rows: np.ndarray, loader: _Loader) -> dict[str, Any]:
    """Detection: COCO metrics (crowd boxes as ignore regions); segmentation: IoU metrics at each image's own size."""
    from headstart.evaluate.tasks import confusion_matrix, detection_metrics, segmentation_metrics

    images = [loader.image(r) for r in rows]
    if task == "detection":
        from headstart.models.detection import detect

        predictions = detect(model, images, score_threshold=0.0, device=loader.device)
        targets = [{"boxes": scenes.scenes[r].boxes, "labels": scenes.scenes[r].labels, "iscrowd": scenes.scenes[r].iscrowd} for r in rows]
        return detection_metrics(predictions, targets, scenes.classes)
    from headstart.models.segmentation import segment

    n = len(scenes.mask_classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    for r, (mask, _) in zip(rows, segment(model, images, device=loader.device)):
        confusion += confusion_matrix(mask, scenes.scenes[r].mask, n, scenes.ignore_index)
    return segmentation_metrics(confusion, scenes.mask_classes)


class _Loader:
    """Decoded images (kept in memory) and seeded training batches with horizontal flips."""

    def __init__(self, task: str, scenes: SceneSet, size: int, seed: int, device) -> None:
        self.task = task
        self.scenes = scenes
        self.size = size
        self.seed = seed
        self.device = device
        self._images: dict[int, np.ndarray] = {}

    def image(self, row: int) -> np.ndarray:
        row = int(row)
        if row not in self._images:
            self._images[row] = self.scenes.scenes[row].load_image()
        return self._images[row]

    def batch(self, rows: np.ndarray, epoch: int):
        from headstart.models.detection import image_tensor, to_targets
        from headstart.models.segmentation import resize_pair

        images, targets = [], []
        for row in rows:
            scene = self.scenes.scenes[int(row)]
            flip = sample_seed(self.seed, epoch, int(row)) % 2 == 1
            if self.task == "detection":
                tensor = image_tensor(self.image(row))
                boxes = scene.boxes.copy()
                if flip:
                    tensor = tensor.flip(-1)
                    width = tensor.shape[-1]
                    boxes[:, [0, 2]] = width - scene.boxes[:, [2, 0]]
                target = to_targets(boxes, scene.labels, scene.iscrowd)
                images.append(tensor.to(self.device))
                targets.append({k: v.to(self.device) for k, v in target.items()})
            else:
                tensor, mask = resize_pair(self.image(row), scene.mask, self.size)
                if flip:
                    tensor, mask = tensor.flip(-1), mask.flip(-1)
                images.append(tensor)
                targets.append(mask)
        if self.task == "detection":
            return images, targets
        return torch.stack(images).to(self.device), torch.stack(targets).to(self.device)


def _split(scenes: SceneSet, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train, val, test = scenes.indices("train"), scenes.indices("val"), scenes.indices("test")
    if not len(train):
        raise DataError(f"{scenes.source} has no training images.")
    if not len(val) and val_fraction > 0 and len(train) > 1:
        order = np.random.default_rng(seed + 7).permutation(train)
        n_val = max(1, int(round(val_fraction * len(train))))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return train, val, test


def _default_size(scenes: SceneSet, rows: np.ndarray, task: str) -> int:
    short = int(np.median([min(scenes.scenes[r].size) for r in rows]))
    size = max(64, min(800, short))
    return size if task == "detection" else int(math.ceil(size / 32) * 32)


def _describe_model(model) -> str:
    config = model.config
    return f"{config['arch']} + FPN" if "arch" in config else f"{config['head']} decoder"


def _check_arguments(epochs, lr, batch_size, optimizer, val_fraction, resume, out) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}.")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    if resume and out is None:
        raise CheckpointError("resume needs the run folder: pass out (--out DIR) of the run to continue.")


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    columns = list(history[0]) if history else []
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buffer.getvalue().encode())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _say(quiet: bool, message: str) -> None:
    if quiet:
        return
    from headstart.console import err_console

    err_console.print(message, highlight=False, soft_wrap=True)
