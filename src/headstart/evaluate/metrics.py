"""Metrics for a classifier's predicted probabilities, with every number labelled by its split.

``evaluate(y_true, proba, classes, split="test")`` returns an :class:`EvalResult`. Single-label
targets get accuracy, balanced accuracy, macro F1, per-class precision/recall/F1, the confusion
matrix, log loss and the expected calibration error (ECE). Multi-label targets (a 2-D 0/1 indicator
``y_true`` with one probability column per label) get subset accuracy, micro and macro F1, per-label
metrics, per-label confusion matrices, the mean binary log loss and the mean per-label ECE.

The counting is scikit-learn's; only the ECE, which scikit-learn lacks, is computed here.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

ECE_BINS = 15


@dataclass
class EvalResult:
    """The metrics of one split.

    Attributes:
        split: The split's name, for example ``"test"``; it prefixes every key of ``to_flat()``.
        n: The number of examples.
        accuracy: The share of examples predicted exactly (subset accuracy for multi-label).
        balanced_accuracy: The mean recall over the classes present in ``y_true``; ``None`` for
            multi-label targets.
        macro_f1: The unweighted mean F1 over classes (or labels).
        per_class: One dict per class (or label): ``class``, ``precision``, ``recall``, ``f1``,
            ``support``. Labels of ``y_true`` that the model does not know come last.
        confusion_matrix: Rows are true classes, columns predicted classes, in ``per_class``
            order. For multi-label targets, one ``[[tn, fp], [fn, tp]]`` matrix per label.
        log_loss: The mean negative log-likelihood of the true class (for multi-label, the mean
            binary log loss over labels). Examples whose label the model does not know are left
            out, since it gives them probability 0.
        ece: The expected calibration error over 15 equal-width bins of top-1 confidence (for
            multi-label, the mean over labels of the binary ECE).
        multilabel: Whether the targets were multi-label.
        micro_f1: The F1 over all (example, label) decisions; ``None`` for single-label targets.
        unseen_labels: Labels of ``y_true`` that are not among the model's classes.
    """

    split: str
    n: int
    accuracy: float
    balanced_accuracy: float | None
    macro_f1: float
    per_class: list[dict]
    confusion_matrix: list
    log_loss: float | None
    ece: float
    multilabel: bool = False
    micro_f1: float | None = None
    unseen_labels: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return the metrics as a nested JSON-able dict that carries ``"split"``."""
        return _jsonable(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """Return ``to_dict()`` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_flat(self) -> dict[str, float | int | None]:
        """Return every number under a key that names the split, like ``"test/accuracy"``.

        Per-class numbers have keys like ``"test/class/cat/recall"``.
        """
        prefix = self.split
        flat = {f"{prefix}/n": self.n}
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "log_loss", "ece"):
            value = getattr(self, name)
            if value is not None:
                flat[f"{prefix}/{name}"] = value
        for row in self.per_class:
            for name in ("precision", "recall", "f1", "support"):
                flat[f"{prefix}/class/{row['class']}/{name}"] = row[name]
        return _jsonable(flat)


def evaluate(y_true, proba, classes: Sequence, split: str = "test") -> EvalResult:
    """Compute classification metrics from predicted probabilities.

    Args:
        y_true: True labels, shape ``(n,)``; or a 0/1 indicator matrix ``(n, n_labels)`` for
            multi-label targets.
        proba: Predicted probabilities, shape ``(n, n_classes)`` with columns in ``classes``
            order (as from ``head.predict_proba``); for two classes, a vector of the second
            class's probability also works. For multi-label targets, shape ``(n, n_labels)``.
        classes: The model's classes (``head.classes_``), or the label names for multi-label.
        split: The name of the split, for example ``"val"`` or ``"test"``.

    Returns:
        The metrics.

    Raises:
        ValueError: If the shapes of ``y_true``, ``proba`` and ``classes`` do not agree.

    Warns:
        UserWarning: If ``y_true`` holds labels that are not in ``classes`` (unseen in training).
            They are still reported per class, with recall 0.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty 1-D sequence of labels, got shape {classes.shape}.")
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true.ravel()
    if proba.ndim == 1 and len(classes) == 2:
        proba = np.column_stack([1.0 - proba, proba])
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(
            f"proba must have one column per class: expected shape (n, {len(classes)}) for "
            f"{len(classes)} classes, got {proba.shape}."
        )
    if len(y_true) != len(proba):
        raise ValueError(
            f"y_true and proba must describe the same examples: y_true has {len(y_true)} rows, "
            f"proba has {len(proba)}."
        )
    if len(y_true) == 0:
        raise ValueError(f"There is nothing to evaluate: the {split!r} split has no examples.")
    if not np.all(np.isfinite(proba)):
        raise ValueError("proba contains NaN or infinity; expected probabilities in [0, 1].")
    if y_true.ndim == 2:
        return _evaluate_multilabel(y_true, proba, classes, split)
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be 1-D labels or a 2-D indicator matrix, got shape {y_true.shape}.")
    return _evaluate_single_label(y_true, proba, classes, split)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Return the ECE: the support-weighted mean gap between accuracy and confidence per bin.

    Args:
        confidence: The confidence of each prediction, in [0, 1].
        correct: Whether each prediction was right.
        n_bins: The number of equal-width bins over [0, 1]; bin ``i`` holds
            ``(i / n_bins, (i + 1) / n_bins]`` (the first also holds 0).

    Returns:
        The expected calibration error, in [0, 1].
    """
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner_edges, confidence, side="left")
    counts = np.bincount(bins, minlength=n_bins)
    confidence_sums = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sums = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    return float(np.abs(correct_sums - confidence_sums).sum() / len(confidence))


def _evaluate_single_label(
    y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, split: str
) -> EvalResult:
    known = np.isin(y_true, classes)
    unseen = list(np.unique(y_true[~known]))
    if unseen:
        warnings.warn(
            f"y_true of split {split!r} has labels the model never saw in training: "
            f"{[_scalar(label) for label in unseen]}. They are reported per class with recall 0, "
            "and left out of the log loss.",
            UserWarning,
            stacklevel=3,
        )
    labels = np.asarray(list(classes) + unseen) if unseen else classes
    top = np.argmax(proba, axis=1)
    y_pred = classes[top]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = [
        {"class": _scalar(label), "precision": p, "recall": r, "f1": f, "support": s}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]
    with warnings.catch_warnings():
        # A class that is predicted but absent from y_true is normal on a small split.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(y_true, y_pred)
    loss = None
    if known.any():
        # log_loss reads the columns of proba in sorted label order.
        order = np.argsort(classes)
        loss = log_loss(y_true[known], proba[known][:, order], labels=classes[order])
    correct = y_pred == y_true
    return EvalResult(
        split=split,
        n=len(y_true),
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(balanced),
        macro_f1=float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        per_class=per_class,
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        log_loss=None if loss is None else float(loss),
        ece=expected_calibration_error(proba[np.arange(len(top)), top], correct),
        unseen_labels=[_scalar(label) for label in unseen],
    )


def _evaluate_multilabel(
    y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, split: str
) -> EvalResult:
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError(
            "A 2-D y_true must be a 0/1 indicator matrix (one column per label), "
            f"but it holds the values {np.unique(y_true)[:10].tolist()}."
        )
    y_true = y_true.astype(np.int64)
    y_pred = (proba >= 0.5).astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    per_class = [
        {"class": _scalar(label), "precision": p, "recall": r, "f1": f, "support": s}
        for label, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]
    losses = [log_loss(y_true[:, j], proba[:, j], labels=[0, 1]) for j in range(len(classes))]
    confidence = np.maximum(proba, 1.0 - proba)
    correct = y_pred == y_true
    eces = [expected_calibration_error(confidence[:, j], correct[:, j]) for j in range(len(classes))]
    return EvalResult(
        split=split,
        n=len(y_true),
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=None,
        macro_f1=float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        per_class=per_class,
        confusion_matrix=multilabel_confusion_matrix(y_true, y_pred).tolist(),
        log_loss=float(np.mean(losses)),
        ece=float(np.mean(eces)),
        multilabel=True,
        micro_f1=float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
    )


def _scalar(value):
    """Return a numpy scalar as the matching Python value (for JSON); leave others alone."""
    return value.item() if isinstance(value, np.generic) else value


def _jsonable(value):
    """Convert numpy scalars to Python values and NaN to ``None``, recursively."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    value = _scalar(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
