"""A closed-form probe: leave-one-out accuracy of ridge regression onto one-hot labels.

The linear probe's cross-validated accuracy is the score that asks the ranking's question most
directly (how well does a linear head do on these features?), but five L-BFGS fits per candidate
cost seconds. Ridge regression onto the one-hot labels has an exact leave-one-out error in closed
form: with the hat matrix H = X (X^T X + lambda I)^-1 X^T, the prediction for sample i from a model
fitted without it is y_i - (y_i - yhat_i) / (1 - H_ii). One eigendecomposition of the smaller Gram
matrix serves every lambda of a grid and every class, so the whole score costs about what LogME
costs (one decomposition plus O(n r C) per lambda).

:func:`ridge_loo` returns the details (the accuracy, every sample's leave-one-out correctness, and
the chosen lambda) so that a ranking can say how far apart two candidates are on the same samples;
:func:`ridge` is the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headstart.select.scores.common import ScoreUndefined, check_inputs, check_magnitude

__all__ = ["RidgeLoo", "ridge", "ridge_loo"]

# lambda = ALPHA * mean nonzero eigenvalue of the centered Gram matrix, over this grid.
ALPHAS = np.logspace(-4, 1, 16)


@dataclass(frozen=True)
class RidgeLoo:
    """The leave-one-out result of ridge regression onto one-hot labels.

    Attributes:
        accuracy: Share of samples whose leave-one-out prediction is their own class.
        correct: Boolean array, one per sample: its leave-one-out prediction is right.
        alpha: The chosen ridge strength, relative to the mean eigenvalue of the Gram matrix.
        squared_error: The leave-one-out mean squared error at ``alpha`` (summed over classes).
    """

    accuracy: float
    correct: np.ndarray
    alpha: float
    squared_error: float


def ridge_loo(features: np.ndarray, labels: np.ndarray, alphas: np.ndarray = ALPHAS) -> RidgeLoo:
    """Exact leave-one-out accuracy of ridge regression from centered features to one-hot labels.

    The features are centered (an intercept that is not penalised, whose own leverage 1/n is
    counted); lambda is ``alpha`` times the mean nonzero eigenvalue of the centered Gram matrix, so
    the grid means the same whatever the features' scale and width. Lambda is chosen on the grid by leave-one-out accuracy, ties going to the lower leave-one-out
    squared error.

    Args:
        features: Array of shape (n_samples, n_features).
        labels: One class label per sample (at least 2 classes).
        alphas: Ridge strengths relative to the mean nonzero eigenvalue of the centered Gram matrix.

    Returns:
        A :class:`RidgeLoo`.

    Raises:
        DataError: If the inputs are malformed.
        ScoreUndefined: If the features are constant (no direction to regress on).
    """
    features, codes, counts = check_inputs(features, labels, "ridge")
    check_magnitude(features, 2, "ridge")
    n_samples, n_classes = codes.shape[0], counts.shape[0]
    # float32 features (what the store holds) are decomposed in float32: 3x faster, and the rounding
    # (about 1e-7 of the largest eigenvalue) is far below the smallest ridge, 1e-4 of the mean one.
    dtype = np.float32 if features.dtype == np.float32 else np.float64
    X = (features - features.mean(axis=0, dtype=np.float64)).astype(dtype)
    U, sigma = _left_singular(X)
    if sigma.size == 0:
        raise ScoreUndefined("ridge: the features are constant, so there is no direction to regress the labels on.")
    Y = np.zeros((n_samples, n_classes))
    Y[np.arange(n_samples), codes] = 1.0
    Y_mean = Y.mean(axis=0)
    projected = U.T @ (Y - Y_mean)  # r x C
    leverage_by_component = U * U  # n x r
    best: RidgeLoo | None = None
    for alpha in alphas:
        shrink = sigma / (sigma + alpha * sigma.mean())
        fitted = U @ (shrink[:, None] * projected) + Y_mean
        leverage = np.minimum(leverage_by_component @ shrink + 1.0 / n_samples, 1.0 - 1e-12)
        loo = Y - (Y - fitted) / (1.0 - leverage)[:, None]
        correct = np.argmax(loo, axis=1) == codes
        accuracy = float(correct.mean())
        squared_error = float(np.mean(np.sum((loo - Y) ** 2, axis=1)))
        if best is None or (accuracy, -squared_error) > (best.accuracy, -best.squared_error):
            best = RidgeLoo(accuracy, correct, float(alpha), squared_error)
    assert best is not None
    return best


def ridge(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of ridge regression onto one-hot labels (higher is better; in [0, 1]).

    A closed-form stand-in for the linear probe's cross-validated accuracy at about LogME's cost;
    see :func:`ridge_loo`.
    """
    return ridge_loo(features, labels).accuracy


def _left_singular(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and squared singular values of ``X`` for the nonzero ones (eigh of the smaller Gram)."""
    import scipy.linalg

    n, d = X.shape
    if n <= d:
        sigma, U = scipy.linalg.eigh(X @ X.T, driver="evd")
    else:
        sigma, V = scipy.linalg.eigh(X.T @ X, driver="evd")
    sigma = np.clip(sigma, 0.0, None)
    keep = sigma > (sigma.max() if sigma.size else 0.0) * max(n, d) * np.finfo(X.dtype).eps
    if not keep.any() or sigma.max() <= 0:
        return np.zeros((n, 0)), np.zeros(0)
    sigma = sigma[keep]
    if n <= d:
        U = U[:, keep]
    else:
        U = (X @ V[:, keep]) / np.sqrt(sigma)
    return U.astype(np.float64), sigma.astype(np.float64)
