"""Detection and segmentation over the engine: seeded scene batches with flips, the task's loss, mAP@0.5 or mIoU.

:class:`SceneAdapter` is what :func:`~headstart.tasks.train.train_detector` and
:func:`~headstart.tasks.train.train_segmenter` hand :func:`headstart.engine.train`: it loads the
scenes, builds the model, feeds the loop, then tests the kept weights and writes the bundle and the
run files. :class:`SceneLoader` and
:func:`evaluate_scenes` also serve ``headstart detect evaluate`` / ``segment evaluate``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.backbones import load_backbone
from headstart.data.augment import sample_seed
from headstart.data.scenes import SceneSet, load_scenes
from headstart.engine import Adapter, Setup
from headstart.engine.policy import resolve_policy
from headstart.errors import DataError, HeadstartError
from headstart.bundles import TaskBundle
from headstart.tasks.result import TaskResult, save_run

VAL_METRIC = {"detection": "map_50", "segmentation": "miou"}


class SceneAdapter(Adapter):
    """Detection or segmentation (``task``) on scenes.

    Args:
        task: ``detection`` or ``segmentation``.
        data: A :class:`SceneSet` or a source for :func:`load_scenes`.
        backbone: A backbone name or a loaded :class:`Backbone` (its modules train in place).
        build: ``build(backbone, scenes, size)``: the task's model (a detector or a segmenter).
        image_size: The size the model works at; None: :func:`default_size`.
        trainable_stages: The last K stages train (see :func:`headstart.engine.resolve_policy`).
        extra: The model's settings (architecture, widths), recorded with the run's settings.
    """

    def __init__(self, task: str, data, backbone, build, *, image_size: int | None, trainable_stages: int | None, extra: dict[str, Any]) -> None:
        self.name = self.task = task
        self.score_name = self.metric = VAL_METRIC[task]
        self.source, self.backbone_source, self.build = data, backbone, build
        self.image_size, self.trainable_stages, self.extra = image_size, trainable_stages, extra

    # ----- set-up ---------------------------------------------------------------------------------

    def setup(self, run) -> Setup:
        if run.world > 1:
            raise HeadstartError("Detection and segmentation training runs in one process for now; start it without accelerate launch / torchrun.")
        config, task = run.config, self.task
        seed, device = config.seed, run.accelerator.device
        scenes = self.source if isinstance(self.source, SceneSet) else load_scenes(self.source, seed=seed)
        if task == "segmentation":
            scenes = scenes.with_masks()
        self.scenes = scenes
        self.rows = rows = split_scenes(scenes, config.val_fraction, seed)
        self.n_train, self.val_rows, self.n_val, self.n_test = len(rows[0]), rows[1], len(rows[1]), len(rows[2])
        backbone = load_backbone(self.backbone_source) if isinstance(self.backbone_source, str) else self.backbone_source
        spec = backbone.spec
        self.size = self.image_size or default_size(scenes, rows[0], task)
        torch.manual_seed(seed)
        model = self.build(backbone, scenes, self.size)
        policy = resolve_policy(spec, config.epochs, task=task, strategy=config.strategy, policy=config.policy, trainable_stages=self.trainable_stages)
        compiled = policy.compile(model, config.lr)
        model.to(device)
        settings = {
            "task": task, "backbone": spec.name, "weights_sha256": spec.sha256, "image_size": self.size, "data": scenes.fingerprint(),
            "n_train": self.n_train, "n_val": self.n_val, "policy": policy.to_dict(), "epochs": config.epochs, "lr": config.lr,
            "batch_size": config.batch_size, "optimizer": config.optimizer, "warmup_epochs": config.warmup_epochs,
            "max_grad_norm": config.max_grad_norm, "mixed_precision": run.accelerator.mixed_precision, "seed": seed, **self.extra,
        }
        self.loader = SceneLoader(task, scenes, self.size, seed, device)
        return Setup(model, compiled, settings, rows[0])

    # ----- the end --------------------------------------------------------------------------------

    def conclude(self, run, setup: Setup, state: dict[str, Any]) -> TaskResult:
        """Test metrics of the kept weights, the bundle, and the run files."""
        task, scenes, model, settings = self.task, self.scenes, setup.model, setup.settings
        test = evaluate_scenes(task, model, scenes, self.rows[2], self.loader) if self.n_test else None
        model.to("cpu")
        spec = model.backbone.spec
        classes = scenes.classes if task == "detection" else scenes.mask_classes
        problems = [p.to_dict() for p in scenes.problems]
        metrics = {"test": test, "history": state["history"], "best_epoch": state["best_epoch"], "synthetic_data": scenes.synthetic}
        manifest = {"seed": settings["seed"], "data_source": scenes.source, "data_fingerprint": settings["data"], "train": settings, "skipped_items": len(problems)}
        bundle = TaskBundle(task, spec, model.config, classes, model=model, metrics=metrics, manifest=manifest, ignore_index=scenes.ignore_index)
        result = TaskResult(
            task=task, backbone=spec.name, policy=setup.compiled.policy, lr=settings["lr"], history=state["history"], best_epoch=state["best_epoch"],
            test=test, val_metric=self.metric, stopped_by_budget=state["stopped_by_budget"], cpu_seconds=time.process_time() - run.cpu_started,
            seconds=time.perf_counter() - run.started, problems=problems, bundle=bundle, bundle_path=None, out=run.config.out,
            dataset=scenes.dataset_summary(),
        )
        if run.config.out is not None:
            save_run(result, settings, scenes, self.rows, self.loader, run.accelerator.device, run.config.resume)
        return result

    def closing_line(self, result: TaskResult, state: dict[str, Any]) -> str | None:
        test = result.test
        if test is None:
            return None
        headline = (f"test mAP {_fmt(test['map'])}, mAP@0.5 {_fmt(test['map_50'])}" if self.task == "detection"
                    else f"test mIoU {_fmt(test['miou'])}, pixel accuracy {_fmt(test['pixel_accuracy'])}")
        return f"kept epoch {state['best_epoch']}: {headline}" + (f"; bundle {result.bundle_path}" if result.bundle_path else "")

    # ----- the loop's hooks -----------------------------------------------------------------------

    def train_epoch(self, batches: list[np.ndarray], epoch: int):
        return ((rows, epoch) for rows in batches)  # decoded in loss(), under autocast

    def loss(self, net, batch, autocast):
        rows, epoch = batch
        with autocast():
            loss = _loss(self.task, net, self.loader.batch(rows, epoch), self.scenes.ignore_index)
        return loss, float(loss.detach())

    def weights(self, model):
        return model.network

    def train_metrics(self, tallies: list[float], accelerator) -> dict[str, Any]:
        return {"train_loss": float(np.mean(tallies)) if tallies else None}

    def validate(self, model) -> tuple[float | None, dict[str, Any]]:
        value = evaluate_scenes(self.task, model, self.scenes, self.val_rows, self.loader)[self.metric] if self.n_val else None
        return value, {f"val_{self.metric}": value}

    def history_row(self, base, train, val, times, steps, best):
        return {**base, **train, **val, "steps": steps, "seconds_train": round(times["seconds_train"], 2), "seconds": round(times["seconds"], 2), "best": best}

    def epoch_line(self, row: dict[str, Any], epochs: int, state: dict[str, Any]) -> str:
        value = row[f"val_{self.metric}"]
        return (f"epoch {row['epoch']} [{row['epoch'] + 1}/{epochs}]: train loss {row['train_loss'] or float('nan'):.4f} | val {self.metric} "
                f"{'-' if value is None else f'{value:.3f}'} | lr {row['lr']:.2e} | {row['seconds']:.1f} s" + (" best" if row["best"] else "")
                + (" | CPU budget reached" if state["stopped_by_budget"] else ""))

    def describe(self, compiled, accelerator) -> str:
        summary, policy = compiled.summary(0), compiled.policy
        return (f"{self.task}: {compiled.spec.name} + {_describe_model(compiled.model)} at {self.size} px on {accelerator.device}, {self.n_train} train / "
                f"{self.n_val} val / {self.n_test} test images, {summary['trainable_params']:,} of {summary['total_params']:,} "
                f"parameters train in epoch 0 ({policy.strategy}, BatchNorm {policy.bn}), lr {compiled.lr:g}"
                + (" [synthetic data]" if self.scenes.synthetic else ""))


def _loss(task: str, model, batch, ignore_index: int) -> torch.Tensor:
    if task == "detection":
        images, targets = batch
        return sum(model(images, targets).values())
    images, masks = batch
    return F.cross_entropy(model(images).float(), masks, ignore_index=ignore_index)




@torch.no_grad()
def evaluate_scenes(task: str, model, scenes: SceneSet, rows, loader: SceneLoader) -> dict[str, Any]:
    """Metrics of ``model`` on ``rows`` of ``scenes``. Detection: COCO metrics (crowd boxes as ignore regions); segmentation: IoU metrics at each image's own size."""
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



class SceneLoader:
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



def split_scenes(scenes: SceneSet, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test rows; without a ``val`` split, a seeded share of train is held out."""
    train, val, test = scenes.indices("train"), scenes.indices("val"), scenes.indices("test")
    if not len(train):
        raise DataError(f"{scenes.source} has no training images.")
    if not len(val) and val_fraction > 0 and len(train) > 1:
        order = np.random.default_rng(seed + 7).permutation(train)
        n_val = max(1, int(round(val_fraction * len(train))))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return train, val, test


def default_size(scenes: SceneSet, rows: np.ndarray, task: str) -> int:
    """Detection: the training images' median shorter side (64 to 800); segmentation: that, rounded up to a multiple of 32."""
    short = int(np.median([min(scenes.scenes[r].size) for r in rows]))
    size = max(64, min(800, short))
    return size if task == "detection" else int(math.ceil(size / 32) * 32)



def _describe_model(model) -> str:
    config = model.config
    return f"{config['arch']} + FPN" if "arch" in config else f"{config['head']} decoder"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
