"""The registry of transferability scores by name, and :func:`compute_scores`, which runs several."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import numpy as np

from headstart.errors import did_you_mean
from headstart.select.scores.class_separation import hscore, hscore_shrinkage, sfda
from headstart.select.scores.common import (
    NUMERICAL_FAILURES,
    ScoreUndefined,
    UnknownScoreError,
    check_inputs,
    check_source_logits,
    undefined_after,
)
from headstart.select.scores.label_entropy import leep, nce, nleep
from headstart.select.scores.linear_evidence import logme
from headstart.select.scores.ridge import ridge

__all__ = ["SCORES", "compute_scores", "score_needs_source_logits"]


SCORES: dict[str, Callable[..., float]] = {
    "logme": logme,
    "ridge": ridge,
    "leep": leep,
    "nleep": nleep,
    "nce": nce,
    "hscore": hscore,
    "hscore_shrinkage": hscore_shrinkage,
    "sfda": sfda,
}

_NEED_SOURCE_LOGITS = frozenset({"leep"})


def _check_name(name: str) -> None:
    if name not in SCORES:
        raise UnknownScoreError(
            f"Unknown transferability score {name!r}. Known scores: {', '.join(SCORES)}." + did_you_mean(name, SCORES)
        )


def score_needs_source_logits(name: str) -> bool:
    """Whether a score is undefined without the backbone's source-task logits.

    Args:
        name: A key of :data:`SCORES`.

    Returns:
        True for scores that need ``source_logits`` (``leep``); False for the others, including
        ``nce``, which uses them when given and clusters the features otherwise.

    Raises:
        UnknownScoreError: If ``name`` is not a registered score.
    """
    _check_name(name)
    return name in _NEED_SOURCE_LOGITS


def _accepts_source_logits(function: Callable[..., float]) -> bool:
    return "source_logits" in inspect.signature(function).parameters


def compute_scores(
    features: np.ndarray,
    labels: np.ndarray,
    source_logits: np.ndarray | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, float | ScoreUndefined]:
    """Compute several transferability scores; a score that fails does not stop the others.

    Inputs are validated once, up front, so malformed data raises instead of producing a table of
    failures. After that, each score's value is either a float or the :class:`ScoreUndefined` that
    explains why it is missing: a score undefined on these inputs (``leep`` without
    ``source_logits``, constant features...), or a numerical failure (a decomposition that does not
    converge, an overflow, no memory: :data:`~headstart.select.scores.common.NUMERICAL_FAILURES`),
    whose exception is kept as ``__cause__``. Any other exception is a bug and propagates.

    Args:
        features: Array of shape (n_samples, n_features).
        labels: One class label per sample.
        source_logits: Optional source-task logits, shape (n_samples, n_source_classes); passed to
            the scores that accept them.
        names: Which scores to compute, in order; all of :data:`SCORES` when None.

    Returns:
        A dict from score name to its value or its ScoreUndefined.

    Raises:
        UnknownScoreError: If a name is not a registered score.
        DataError: If features, labels or source logits are malformed.
    """
    names = list(SCORES) if names is None else list(names)
    for name in names:
        _check_name(name)
    features, codes, _ = check_inputs(features, labels, "compute_scores")
    if source_logits is not None:
        source_logits = check_source_logits(source_logits, features.shape[0], "compute_scores")

    results: dict[str, float | ScoreUndefined] = {}
    for name in names:
        function = SCORES[name]
        try:
            if _accepts_source_logits(function):
                results[name] = function(features, codes, source_logits=source_logits)
            else:
                results[name] = function(features, codes)
        except ScoreUndefined as undefined:
            results[name] = undefined
        except NUMERICAL_FAILURES as error:  # one numerical failure must not hide the other scores
            results[name] = undefined_after(name, error)
    return results
