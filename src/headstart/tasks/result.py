"""What a detection or segmentation run returns (:class:`TaskResult`) and the files it leaves in its run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.scenes import SceneSet
from headstart.engine.logs import say
from headstart.engine.policy import FinetunePolicy
from headstart.io import atomic_write_json
from headstart.bundles import TaskBundle


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


def save_run(result: TaskResult, settings: dict[str, Any], scenes: SceneSet, rows, loader, device, resumed: bool) -> None:
    """The bundle, ``metrics.json``, the prediction pictures (test images, else validation ones), ``manifest.json`` and ``report.html``."""
    out = result.out
    result.bundle_path = result.bundle.save(out / "bundle")
    atomic_write_json(out / "metrics.json", result.to_dict())
    shown, split = (rows[2], "test") if len(rows[2]) else (rows[1], "val")
    write_run_files(out, result, settings, scenes, shown, split, loader, device, resumed)


# Test images drawn with their predictions for the report.
PICTURES = 8
DRAWN_SUFFIXES = (".boxes.png", ".mask.png", ".overlay.png")


def write_run_files(out: Path, result: TaskResult, settings: dict[str, Any], scenes: SceneSet, rows: np.ndarray, split: str,
                     loader, device, resumed: bool) -> None:
    """Pictures of the predictions on up to :data:`PICTURES` images of ``rows``, ``manifest.json`` and ``report.html``.

    Neither a picture nor the report that fails loses the run: each is a warning.
    """
    from headstart.report import write_report_or_warn
    from headstart.runs import write_manifest

    try:
        draw_predictions(out, result.bundle, scenes, rows[:PICTURES], split, loader, device)
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


def draw_predictions(out: Path, bundle: TaskBundle, scenes: SceneSet, rows: np.ndarray, split: str, loader, device) -> None:
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
