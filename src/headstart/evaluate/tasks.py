"""Detection and segmentation metrics.

Detection: COCO's own evaluation (pycocotools ``COCOeval``, 101-point interpolated AP averaged over
IoU 0.50:0.05:0.95, 100 detections per image): mAP, mAP@0.5, mAP@0.75 and AP per class. Crowd and
ignore regions are passed as ``iscrowd``: a detection on one is neither a hit nor a false positive.

Segmentation: a confusion matrix over the pixels that are not ``ignore_index``, and from it IoU per
class, mIoU (mean over the classes that occur in the ground truth or the predictions) and pixel accuracy.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from headstart.errors import require


def detection_metrics(
    predictions: Sequence[dict[str, np.ndarray]],
    targets: Sequence[dict[str, np.ndarray]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """COCO box metrics of ``predictions`` against ``targets``, one dict per image each.

    Args:
        predictions: ``boxes`` (N, 4) ``x0, y0, x1, y1``, ``scores`` (N,), ``labels`` (N,) as class indices.
        targets: ``boxes`` (K, 4), ``labels`` (K,) as class indices, optional ``iscrowd`` (K,).
        classes: Class names; label ``i`` means ``classes[i]``.

    Returns:
        ``map`` (AP at IoU 0.50:0.95), ``map_50``, ``map_75``, ``per_class`` (name -> ``ap`` and
        ``ap_50``, None for classes without ground truth), ``images`` and ``objects`` (non-crowd boxes).
        An AP is -1 in COCO's output when nothing can be scored; here it is None.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images; give one of each per image.")
    require("pycocotools", "detection")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": i + 1, "name": str(name)} for i, name in enumerate(classes)]
    images, annotations, detections = [], [], []
    for image_id, (prediction, target) in enumerate(zip(predictions, targets), start=1):
        images.append({"id": image_id})
        crowd = np.asarray(target.get("iscrowd", np.zeros(len(target["labels"]))), dtype=bool).reshape(-1)
        for box, label, is_crowd in zip(np.asarray(target["boxes"], dtype=float).reshape(-1, 4), np.asarray(target["labels"]).reshape(-1), crowd):
            x0, y0, x1, y1 = box.tolist()
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(is_crowd),
            })
        boxes = np.asarray(prediction["boxes"], dtype=float).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(prediction["scores"]).reshape(-1), np.asarray(prediction["labels"]).reshape(-1)):
            x0, y0, x1, y1 = box.tolist()
            detections.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": categories}
        truth.createIndex()
        if detections:
            found = truth.loadRes(detections)
        else:
            found = COCO()
            found.dataset = {"images": images, "annotations": [], "categories": categories}
            found.createIndex()
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    per_class = {}
    for k, name in enumerate(classes):
        all_ious = precision[:, :, k, 0, -1]
        at_50 = precision[0, :, k, 0, -1]
        per_class[str(name)] = {
            "ap": _mean_valid(all_ious),
            "ap_50": _mean_valid(at_50),
        }
    stats = evaluation.stats
    return {
        "map": _stat(stats[0]),
        "map_50": _stat(stats[1]),
        "map_75": _stat(stats[2]),
        "per_class": per_class,
        "images": len(images),
        "objects": sum(1 for a in annotations if not a["iscrowd"]),
    }


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _stat(value: float) -> float | None:
    return None if value < 0 else float(value)


def confusion_matrix(prediction: np.ndarray, target: np.ndarray, n_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Pixel confusion matrix (rows: true class, columns: predicted class), ignoring ``ignore_index`` pixels.

    Raises:
        ValueError: Shapes differ, or the target holds values that are neither classes nor ``ignore_index``.
    """
    prediction = np.asarray(prediction).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction has {prediction.size} pixels, but the target has {target.size}.")
    keep = target != ignore_index
    bad = keep & ((target < 0) | (target >= n_classes))
    if bad.any():
        raise ValueError(f"target values {sorted(set(np.unique(target[bad]).tolist()))[:5]} are neither classes (0..{n_classes - 1}) nor ignore {ignore_index}.")
    return np.bincount(target[keep] * n_classes + prediction[keep], minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def segmentation_metrics(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """mIoU, IoU per class, pixel accuracy and mean class accuracy from a confusion matrix.

    A class with no pixels in either the ground truth or the predictions has IoU None and is left
    out of the mean.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    support = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        recall = np.where(support > 0, true_positive / support, np.nan)
    total = confusion.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "pixel_accuracy": float(true_positive.sum() / total) if total else None,
        "mean_accuracy": float(np.nanmean(recall)) if np.isfinite(recall).any() else None,
        "per_class_iou": {str(name): (None if np.isnan(value) else float(value)) for name, value in zip(classes, iou)},
        "pixels": int(total),
    }
