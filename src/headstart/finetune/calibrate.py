"""After training: fit the kept model's temperature on the validation split, and its class-prior correction.

The engine keeps the best epoch; :func:`fit_calibration` then runs the kept model once over the
validation split and fits one temperature ``T`` on its logits by minimising the NLL
(:func:`headstart.evaluate.calibration.fit_temperature`). Label smoothing trains a model to be
underconfident, and a long fine-tuning can make it overconfident: ``T`` undoes either, and since it
divides every logit of a row alike, the predicted class (and the accuracy) never changes.

With ``prior="data"`` and a training split that ``--per-class`` subsampled, the bundle also moves the
probabilities from the class frequencies of the training rows to those of the whole training split
(``Dataset.full_train_counts``). The validation split is drawn from the subsampled rows, so ``T`` is
fitted before that correction: the bundle predicts ``softmax(logits / T + shift)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headstart.data.dataset import Dataset
from headstart.evaluate import expected_calibration_error
from headstart.evaluate.calibration import Calibration, check_prior, fit_temperature, nll, prior_shift
from headstart.finetune.data import IGNORE


@torch.no_grad()
def predict_logits(model, accelerator, batcher, rows: np.ndarray, batch_size: int):
    """This process's logits (float32, CPU), rows and labels, in eval mode."""
    was_training = model.training
    model.eval()
    logits, order, labels = [], [], []
    for x, y, chunk in batcher.eval_batches(rows, batch_size):
        with accelerator.autocast():
            logits.append(model(x).float().cpu())
        order.append(chunk)
        labels.append(y.cpu())
    model.train(was_training)
    if not logits:
        return torch.zeros(0, model.head.out_features), np.zeros(0, np.int64), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), np.concatenate(order), torch.cat(labels)


def gather_logits(model, accelerator, batcher, rows: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every process's logits (float64), rows and labels, on every process (rows in the order they came)."""
    logits, order, labels = predict_logits(model, accelerator, batcher, rows, batch_size)
    parts = [(logits.double().numpy(), order, labels.numpy())]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object(parts)
    return (np.concatenate([p for p, _, _ in parts]), np.concatenate([o for _, o, _ in parts]),
            np.concatenate([l for _, _, l in parts]))


def data_prior_shift(data: Dataset, train_rows: np.ndarray, prior: str) -> tuple[float, ...] | None:
    """``log(prior_full) - log(prior_train)`` per class with ``prior="data"`` after subsampling; None when it is zero."""
    if check_prior(prior) != "data" or data.full_train_counts is None or data.multilabel:
        return None
    sample = np.bincount(data.labels[train_rows], minlength=len(data.classes))
    shift = prior_shift(data.full_train_counts, sample)
    return tuple(shift.tolist()) if np.any(shift != 0) else None


def fit_calibration(model, accelerator, batcher, data: Dataset, rows, batch_size: int, *, calibrate: bool,
                    prior: str) -> tuple[Calibration, dict[str, Any]]:
    """The kept model's calibration, and a record of it for metrics.json (val ECE and NLL before and after ``T``).

    Args:
        model: The kept model.
        rows: The run's (train, validation, test) rows.
        calibrate: Fit ``T``; False keeps ``T = 1``.
        prior: ``data`` or ``uniform``.
    """
    train_rows, val_rows, _ = rows
    shift = data_prior_shift(data, train_rows, prior)
    if not calibrate:
        calibration = Calibration(log_prior_shift=shift, prior=prior, note="off (calibrate=False, --no-calibrate)")
        return calibration, calibration.to_dict()
    if not len(val_rows):
        calibration = Calibration(log_prior_shift=shift, prior=prior, note="not fitted: no validation split (val_fraction=0)")
        return calibration, calibration.to_dict()
    logits, _, labels = gather_logits(model, accelerator, batcher, val_rows, batch_size)
    valid = labels != IGNORE
    logits, labels = logits[valid], labels[valid]
    if not len(labels):
        calibration = Calibration(log_prior_shift=shift, prior=prior, note="not fitted: no readable validation item")
        return calibration, calibration.to_dict()
    temperature = fit_temperature(logits, labels)
    calibration = Calibration(temperature=temperature, log_prior_shift=shift, prior=prior,
                              note=f"fitted on the validation split's {len(labels)} items")
    record = calibration.to_dict()
    record.update({
        "fitted_on": "validation split", "n_val": int(len(labels)),
        "val_nll_before": nll(logits, labels), "val_nll_after": nll(logits, labels, temperature),
        "val_ece_before": _ece(logits, labels, 1.0), "val_ece_after": _ece(logits, labels, temperature),
    })
    return calibration, record


def _ece(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """ECE of ``softmax(logits / temperature)`` (15 bins, as the test metrics)."""
    from scipy.special import softmax

    proba = softmax(logits / temperature, axis=1)
    top = proba.argmax(axis=1)
    return expected_calibration_error(proba[np.arange(len(top)), top], top == labels)


__all__ = ["data_prior_shift", "fit_calibration", "gather_logits", "predict_logits"]
