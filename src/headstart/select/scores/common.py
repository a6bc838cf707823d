"""What every transferability score shares: its exceptions, input checks and per-class sums."""

from __future__ import annotations

import numpy as np
import scipy.sparse

from headstart.errors import DataError, HeadstartError

__all__ = [
    "NUMERICAL_FAILURES",
    "ScoreUndefined",
    "UnknownScoreError",
    "check_features",
    "check_inputs",
    "check_labels",
    "check_source_logits",
    "class_sums",
    "check_magnitude",
    "undefined_after",
]


class ScoreUndefined(HeadstartError):
    """A score cannot be computed from the given inputs; rankings show it as n/a, never as 0.

    Args:
        reason: Why the score is undefined, and what would make it defined.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UnknownScoreError(HeadstartError, ValueError):
    """A score name is not in :data:`SCORES`."""


# What a score may raise when the numbers, not the code, are at fault: a decomposition that does
# not converge, an overflow or a division by zero, no memory for a Gram matrix. compute_scores and
# the ranking keep these as ScoreUndefined with the reason; any other exception is a bug and
# propagates. Undefined inputs raise ScoreUndefined itself.
NUMERICAL_FAILURES: tuple[type[BaseException], ...] = (np.linalg.LinAlgError, ArithmeticError, MemoryError)


def undefined_after(name: str, error: BaseException) -> ScoreUndefined:
    """The ScoreUndefined that stands for a numerical failure of score ``name``, caused by ``error``."""
    undefined = ScoreUndefined(f"{name} failed: {type(error).__name__}: {error}")
    undefined.__cause__ = error
    return undefined


def check_magnitude(features: np.ndarray, power: int, score: str) -> None:
    """Raise ScoreUndefined if sums of ``power``-th powers of the features overflow float64.

    A score that sums products of ``power`` features over n samples and d features overflows when
    max|x| ** power * n * d reaches the largest float64; the features are finite but too large.
    """
    largest = float(np.abs(features).max()) if features.size else 0.0
    if largest == 0.0:
        return
    n_samples, n_features = features.shape
    log_size = power * np.log(largest) + np.log(n_samples) + np.log(n_features)
    if log_size >= np.log(np.finfo(np.float64).max):
        raise ScoreUndefined(
            f"{score} overflows float64 on these features: the largest |value| is {largest:.3g}. "
            "Rescale the features (for example divide them by their largest value)."
        )


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def check_features(features: object, score: str) -> np.ndarray:
    """Return the features as a finite 2-D float32 or float64 array, or raise DataError."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise DataError(
            f"{score}: features must be a 2-D array of shape (n_samples, n_features), "
            f"but got an array with shape {array.shape}. Reshape or stack the feature vectors."
        )
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{score}: features must be real numbers, but got dtype {array.dtype}. "
            "Convert them with np.asarray(features, dtype=np.float32)."
        )
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    if array.shape[1] == 0:
        raise DataError(f"{score}: features must have at least 1 column, but got shape {array.shape}.")
    # min and max propagate NaN and expose inf without allocating an n_samples x n_features mask.
    if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
        bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
        raise DataError(
            f"{score}: features must be finite, but {bad_rows.size} of {array.shape[0]} rows "
            f"contain NaN or inf (first bad row: {bad_rows[0]}). Drop or repair those samples."
        )
    return array


def check_labels(labels: object, n_samples: int, score: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes, counts): labels as class indices 0..n_classes-1 and samples per class."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise DataError(
            f"{score}: labels must be a 1-D array with one label per sample, but got shape "
            f"{array.shape}. For one-hot labels pass labels.argmax(axis=1)."
        )
    if array.shape[0] != n_samples:
        raise DataError(
            f"{score}: features and labels must have the same number of samples, but features "
            f"have {n_samples} rows and labels have {array.shape[0]} entries."
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{score}: labels must not contain NaN or inf.")
    classes, codes = np.unique(array, return_inverse=True)
    codes = codes.reshape(-1)
    n_classes = classes.size
    if n_classes < 2:
        raise DataError(
            f"{score}: labels must contain at least 2 distinct classes, but got {n_classes} "
            f"({classes.tolist()!r}). A transferability score compares how features separate classes."
        )
    if n_samples <= n_classes:
        raise DataError(
            f"{score}: needs more samples than classes, but got {n_samples} samples for "
            f"{n_classes} classes; the minimum is {n_classes + 1} samples. Add labelled samples."
        )
    counts = np.bincount(codes, minlength=n_classes)
    return codes, counts


def check_inputs(features: object, labels: object, score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate features and labels together; return (features, label codes, class counts)."""
    features = check_features(features, score)
    codes, counts = check_labels(labels, features.shape[0], score)
    return features, codes, counts


def check_source_logits(source_logits: object, n_samples: int, score: str) -> np.ndarray:
    """Return source logits as a finite float64 array of shape (n_samples, n_source_classes)."""
    array = np.asarray(source_logits)
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise DataError(
            f"{score}: source_logits must be a real 2-D array of shape (n_samples, "
            f"n_source_classes), but got dtype {array.dtype} and shape {array.shape}."
        )
    if array.shape[0] != n_samples:
        raise DataError(
            f"{score}: source_logits must have one row per sample, but got {array.shape[0]} rows "
            f"for {n_samples} samples."
        )
    if array.shape[1] < 1:
        raise DataError(f"{score}: source_logits must have at least 1 column, but got shape {array.shape}.")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise DataError(f"{score}: source_logits must be finite, but they contain NaN or inf.")
    return array


def class_sums(matrix: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Sum the rows of ``matrix`` per class; returns float64 of shape (n_classes, n_columns)."""
    n_samples = codes.shape[0]
    one_hot = scipy.sparse.csr_matrix(
        (np.ones(n_samples, dtype=matrix.dtype), (codes, np.arange(n_samples))),
        shape=(n_classes, n_samples),
    )
    return np.asarray(one_hot @ matrix, dtype=np.float64)

