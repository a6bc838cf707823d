"""Calibrating a probe's head: a temperature from out-of-fold predictions, and the class-prior correction.

:func:`head_calibration` gives the :class:`~headstart.evaluate.calibration.Calibration` that a probe's
bundle applies to its head's probabilities:

* **Temperature.** The kNN and MLP heads get one fitted on out-of-fold predictions of their own
  training rows: the head is refitted on each training part of a stratified k-fold split (the kNN
  probe with the ``k`` it chose, the MLP with its own settings), predicts the held-out part, and ``T``
  minimises the NLL of those predictions. The kNN probe's temperature divides its vote shares
  (``softmax(shares / T)``; a log of a zero share would be minus infinity), the MLP's its
  log-probabilities. The linear probe (and ``sk:tfidf``'s logistic regression) keeps ``T = 1``: its C
  is chosen on held-out data, and a temperature fitted this way did not make it better calibrated
  (benchmarks/calibration.py, section "Calibration" of benchmarks/RESULTS.md, says what was measured).
* **Prior.** With ``prior="data"``, the head's probabilities are moved from the class frequencies of
  the rows it was fitted on to those of the whole training split before ``--per-class`` balanced it
  (``Dataset.full_train_counts``); without subsampling the shift is zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.evaluate.calibration import Calibration, check_prior, fit_temperature, nll, prior_shift, to_scores
from headstart.errors import OptionError

# Folds of the out-of-fold predictions each head's temperature is fitted on (heads not listed keep T = 1).
CALIBRATION_FOLDS = {"knn": 5, "mlp": 3}
SCORES = {"knn": "proba", "mlp": "log_proba"}
NOT_FITTED = {
    "linear": "not fitted: the linear probe chooses C on held-out data and is calibrated without one (see benchmarks/RESULTS.md, Calibration)",
    "sk:tfidf": "not fitted: logistic regression with C chosen by cross-validation, calibrated as the linear probe is",
}


def check_calibration_options(prior: str) -> str:
    """``prior`` when it is ``data`` or ``uniform``.

    Raises:
        OptionError: It is not; the message names ``--prior`` and its values.
    """
    try:
        return check_prior(prior)
    except ValueError:
        raise OptionError(f"--prior must be 'data' (correct to the training split's class frequencies) or 'uniform', got {prior!r}.") from None


def head_calibration(head_name: str, head: Any, X, y: np.ndarray, *, seed: int, calibrate: bool, prior: str,
                     full_counts: np.ndarray | None) -> Calibration:
    """The calibration of a fitted probe head.

    Args:
        head_name: ``linear``, ``knn``, ``mlp`` or ``sk:tfidf``.
        head: The head, fitted on ``X`` and ``y``.
        X: The rows it was fitted on (features, or texts for ``sk:tfidf``).
        y: Their class ids (the dataset's label indices).
        seed: Seed of the folds (and of the refitted heads, through their ``random_state``).
        calibrate: Fit a temperature where the head gets one.
        prior: ``data`` (correct to ``full_counts``) or ``uniform`` (no correction).
        full_counts: Items per class of the training split before subsampling (indexed by class id);
            None when nothing was subsampled.
    """
    prior = check_calibration_options(prior)
    columns = np.asarray(head.classes_)
    if getattr(head, "multilabel_", False) or y.ndim != 1:
        return Calibration(prior=prior, note="not fitted: multi-label heads give one probability per label")
    shift = None
    if prior == "data" and full_counts is not None:
        sample = np.bincount(y, minlength=len(full_counts))[columns]
        correction = prior_shift(np.asarray(full_counts)[columns], sample)
        shift = tuple(correction.tolist()) if np.any(correction != 0) else None
    scores = SCORES.get(head_name, "log_proba")
    if not calibrate:
        return Calibration(scores=scores, log_prior_shift=shift, prior=prior, note="off (calibrate=False, --no-calibrate)")
    if head_name not in CALIBRATION_FOLDS:
        return Calibration(log_prior_shift=shift, prior=prior, note=NOT_FITTED.get(head_name, "not fitted for this head"))
    folds, reason = calibration_folds(y, CALIBRATION_FOLDS[head_name], seed)
    if folds is None:
        return Calibration(scores=scores, log_prior_shift=shift, prior=prior, note=f"not fitted: {reason}")
    held = out_of_fold_scores(head_name, head, X, y, folds, scores)
    target = np.searchsorted(columns, y)
    temperature = fit_temperature(held, target)
    extra = {"fitted_on": f"{len(folds)}-fold out-of-fold predictions", "n": int(len(y)),
             "nll_before": round(nll(held, target), 6), "nll_after": round(nll(held, target, temperature), 6)}
    return Calibration(temperature=temperature, scores=scores, log_prior_shift=shift, prior=prior,
                       note=f"fitted on {len(folds)}-fold out-of-fold predictions of the {len(y)} training rows", extra=extra)


def calibration_folds(y: np.ndarray, wanted: int, seed: int):
    """Stratified folds of ``y`` (at most ``wanted``, at most the smallest class's count), or None and why not."""
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(y)[np.unique(y)].min())
    if smallest < 2:
        return None, "a class has fewer than 2 training rows, so no out-of-fold predictions exist"
    splitter = StratifiedKFold(min(wanted, smallest), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y)), None


def out_of_fold_scores(head_name: str, head: Any, X, y: np.ndarray, folds, scores: str) -> np.ndarray:
    """Each row's scores (log-probabilities or vote shares) from a copy of ``head`` fitted without its fold."""
    from sklearn.base import clone

    columns = np.asarray(head.classes_)
    held = np.zeros((len(y), len(columns)))
    for train, test in folds:
        model = clone(head)
        if head_name == "knn":
            model.set_params(n_neighbors=min(int(head.n_neighbors_), len(train)))  # the k the head chose, not a new search
        model.fit(X[train], y[train])
        proba = model.predict_proba(X[test])
        held[np.ix_(test, np.searchsorted(columns, model.classes_))] = proba
    return to_scores(held, scores)


__all__ = ["CALIBRATION_FOLDS", "calibration_folds", "check_calibration_options", "head_calibration", "out_of_fold_scores"]
