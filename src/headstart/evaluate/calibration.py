"""Calibration of a classifier's probabilities: one fitted temperature and a class-prior correction.

A bundle's probabilities are ``softmax(scores / T + shift)``:

* ``scores`` are the head's log-probabilities (the logits up to a constant per row: the linear probe,
  the MLP head, a fine-tuned model) or, for the kNN probe, its distance-weighted vote shares
  (``scores="proba"``: a log of a share that is 0 would be minus infinity).
* ``T`` (the temperature, > 0) is fitted by minimising the negative log-likelihood (NLL) of held-out
  predictions: a fine-tuning run's validation split, a probe head's out-of-fold predictions. ``T > 1``
  softens overconfident probabilities, ``T < 1`` sharpens underconfident ones. Dividing every score of
  a row by the same ``T`` never changes which class is largest, so accuracy stays as it was.
* ``shift`` corrects the class prior (Bayes' rule under a label shift):
  ``log(prior_full) - log(prior_sample)`` per class, where ``prior_sample`` is the class frequencies
  of the rows the head was fitted on (balanced by ``--per-class``) and ``prior_full`` those of the whole
  training split before it was subsampled. Without subsampling the two agree and the shift is zero.

A :class:`Calibration` with ``T = 1`` and no shift is the identity: :meth:`Calibration.apply` then
returns the head's probabilities untouched, so a bundle without calibration predicts as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import log_softmax, softmax

SCORES = ("log_proba", "proba")
PRIORS = ("data", "uniform")
TEMPERATURE_BOUNDS = (0.01, 100.0)
LOG_T_PRIOR_SCALE = 1.0  # the standard deviation of log T's prior in fit_temperature
TINY = 1e-300  # log(0) would be minus infinity; a probability of exactly 0 (an underflow) counts as this


@dataclass(frozen=True)
class Calibration:
    """How a head's probabilities are calibrated: a temperature and a log prior shift.

    Attributes:
        temperature: ``T`` > 0; 1 leaves the scores as they are.
        scores: What ``T`` divides: ``"log_proba"`` (the head's log-probabilities) or ``"proba"``
            (the kNN probe's vote shares).
        log_prior_shift: Per probability column of the head, ``log(prior_full) - log(prior_sample)``;
            None (or all zeros) leaves the prior the head learned.
        prior: ``"data"`` (the shift corrects to the training split's class frequencies) or
            ``"uniform"`` (no shift: the prior of the balanced training sample).
        note: How ``T`` was fitted, or why it was not.
    """

    temperature: float = 1.0
    scores: str = "log_proba"
    log_prior_shift: tuple[float, ...] | None = None
    prior: str = "uniform"
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number above 0, got {self.temperature!r}.")
        if self.scores not in SCORES:
            raise ValueError(f"scores must be one of {SCORES}, got {self.scores!r}.")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}.")
        if self.log_prior_shift is not None:
            shift = tuple(float(v) for v in self.log_prior_shift)
            if not all(math.isfinite(v) for v in shift):
                raise ValueError(f"log_prior_shift must hold finite numbers, got {list(self.log_prior_shift)!r}.")
            object.__setattr__(self, "log_prior_shift", shift)

    @property
    def has_shift(self) -> bool:
        return self.log_prior_shift is not None and any(v != 0.0 for v in self.log_prior_shift)

    @property
    def is_identity(self) -> bool:
        """Whether :meth:`apply` returns the probabilities unchanged."""
        return self.temperature == 1.0 and not self.has_shift

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of a head's ``predict_proba`` output ``(n, C)``.

        Raises:
            ValueError: The prior shift has another number of columns than ``proba``.
        """
        proba = np.asarray(proba, dtype=np.float64)
        if self.is_identity or proba.ndim != 2:
            return proba
        shift = self.shift_for(proba.shape[1])
        return softmax(to_scores(proba, self.scores) / self.temperature + shift, axis=1)

    def shift_for(self, columns: int) -> np.ndarray:
        """The shift as an array of ``columns`` entries (zeros without one)."""
        if not self.has_shift:
            return np.zeros(columns)
        shift = np.asarray(self.log_prior_shift, dtype=np.float64)
        if shift.shape != (columns,):
            raise ValueError(f"the log prior shift has {shift.size} entries, but the head gives {columns} probability columns.")
        return shift

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": float(self.temperature),
            "scores": self.scores,
            "prior": self.prior,
            "log_prior_shift": list(self.log_prior_shift) if self.log_prior_shift is not None else None,
            "note": self.note,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any] | None) -> Calibration:
        """The calibration a bundle.json records; None (a bundle saved before calibration existed) is the identity.

        Raises:
            ValueError: A field has a value outside what it accepts.
        """
        if document is None:
            return cls()
        if not isinstance(document, dict):
            raise ValueError(f"expected a dict, got {type(document).__name__}.")
        known = {"temperature", "scores", "prior", "log_prior_shift", "note"}
        shift = document.get("log_prior_shift")
        if shift is not None and not (isinstance(shift, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in shift)):
            raise ValueError(f"log_prior_shift must be a list of numbers or null, got {shift!r}.")
        temperature = document.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a number, got {temperature!r}.")
        return cls(
            temperature=float(temperature),
            scores=document.get("scores", "log_proba"),
            log_prior_shift=tuple(shift) if shift is not None else None,
            prior=document.get("prior", "uniform"),
            note=document.get("note"),
            extra={k: v for k, v in document.items() if k not in known},
        )


def check_prior(prior: str) -> str:
    """``prior`` when it is ``"data"`` or ``"uniform"``.

    Raises:
        ValueError: It is not (the callers raise an OptionError with the option's name).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be 'data' or 'uniform', got {prior!r}.")
    return prior


def to_scores(proba: np.ndarray, scores: str = "log_proba") -> np.ndarray:
    """What the temperature divides: the log-probabilities (a 0 counts as 1e-300), or the probabilities themselves."""
    proba = np.asarray(proba, dtype=np.float64)
    return np.log(np.maximum(proba, TINY)) if scores == "log_proba" else proba


def nll(scores: np.ndarray, labels: np.ndarray, temperature: float = 1.0, shift: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of ``labels`` (column indices) under ``softmax(scores / temperature + shift)``."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    if shift is not None:
        z = z + shift
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(labels)), labels]))


def fit_temperature(scores: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    prior_scale: float | None = LOG_T_PRIOR_SCALE) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(scores / T)`` for ``labels``.

    A bounded scalar search over ``log T`` (scipy's ``minimize_scalar``) of the summed NLL plus
    ``(log T / prior_scale)**2 / 2``: a weak normal prior on ``log T`` around 0 (a maximum a
    posteriori fit). With a few hundred held-out rows the prior hardly moves ``T``; it matters when
    every held-out row is right (a small validation split often is), where the NLL alone falls
    towards ``T = 0`` and would make the model certain of everything. Since the penalty is 0 at
    ``T = 1``, the NLL at the result is never above the NLL at ``T = 1``.

    Args:
        scores: Logits, log-probabilities or vote shares, shape ``(n, C)``.
        labels: The true column of each row, shape ``(n,)``.
        bounds: The range searched for ``T``.
        prior_scale: The prior's standard deviation of ``log T``; None fits the NLL alone.

    Returns:
        ``T`` > 0 (1.0 when there are no rows).
    """
    from scipy.optimize import minimize_scalar

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores must have shape (n, C) with one row per label; got {scores.shape} and {labels.shape}.")
    if len(labels) == 0 or scores.shape[1] < 2:
        return 1.0
    low, high = (math.log(b) for b in bounds)
    n = len(labels)
    weight = 0.0 if prior_scale is None else 0.5 / (prior_scale**2 * n)  # the penalty, per row as the mean NLL is

    def objective(log_t: float) -> float:
        return nll(scores, labels, math.exp(log_t)) + weight * log_t**2

    found = minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    temperature = float(math.exp(found.x))
    return temperature if objective(found.x) <= objective(0.0) else 1.0


def prior_shift(full_counts: Sequence[float], sample_counts: Sequence[float]) -> np.ndarray:
    """``log(prior_full) - log(prior_sample)`` per class: the correction of a head fitted on a resampled training set.

    Classes with no example on either side get 0 (the head has no column for a class it never saw).

    Args:
        full_counts: Examples per class in the whole training split (before subsampling).
        sample_counts: Examples per class in the rows the head was fitted on.
    """
    full = np.asarray(full_counts, dtype=np.float64)
    sample = np.asarray(sample_counts, dtype=np.float64)
    if full.shape != sample.shape:
        raise ValueError(f"full_counts and sample_counts must have the same length, got {full.shape} and {sample.shape}.")
    both = (full > 0) & (sample > 0)
    shift = np.zeros(full.shape)
    if both.any():
        shift[both] = np.log(full[both] / full[both].sum()) - np.log(sample[both] / sample[both].sum())
    return shift


__all__ = ["PRIORS", "Calibration", "check_prior", "fit_temperature", "nll", "prior_shift", "to_scores"]
