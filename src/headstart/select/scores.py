"""Transferability scores: how well a frozen backbone's features suit a new labelled task.

Each score is a pure function ``score(features, labels[, source_logits]) -> float`` that needs no
training of the backbone. Every score follows one sign convention: **higher means better
transferability**, so a ranking sorts candidates by descending score. Scores are comparable across
backbones on the same data, not across datasets.

``features`` is an array of shape (n_samples, n_features); ``labels`` holds one class label per
sample (integers, strings, anything ``numpy.unique`` can sort); ``source_logits``, where a score uses
them, has shape (n_samples, n_source_classes) and holds the backbone's own classifier outputs (before
softmax) for the same samples.

| name | paper | range | needs source logits |
|---|---|---|---|
| ``logme`` | You et al., ICML 2021 | any real (mean log evidence per sample) | no |
| ``leep`` | Nguyen et al., ICML 2020 | (-inf, 0] | yes |
| ``nleep`` | Li et al., CVPR 2021 | (-inf, 0] | no (a Gaussian mixture stands in) |
| ``nce`` | Tran et al., ICCV 2019 | [-log(n_classes), 0] | no (uses them when given) |
| ``hscore`` | Bao et al., ICIP 2019 | [0, n_classes - 1] when well conditioned | no |
| ``hscore_shrinkage`` | Ibrahim et al., 2022 | [0, n_classes - 1] | no |
| ``sfda`` | Shao et al., ECCV 2022 | (0, 1] | no |

A score that cannot be computed from the inputs raises :class:`ScoreUndefined` with the reason.
:func:`compute_scores` runs several scores and keeps such failures as values, so that one failing
score never hides the others.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.special

from headstart.errors import DataError, HeadstartError, did_you_mean

__all__ = [
    "SCORES",
    "ScoreUndefined",
    "UnknownScoreError",
    "compute_scores",
    "hscore",
    "hscore_shrinkage",
    "leep",
    "logme",
    "nce",
    "nleep",
    "score_needs_source_logits",
    "sfda",
]

# Rows of the feature matrix multiplied at a time when LogME builds its Gram matrix.
_GRAM_CHUNK_ROWS = 8192
# LogME multiplies float32 features in float32 from this many multiply-adds on (see _gram).
_FLOAT32_GRAM_MIN_FLOPS = 2e10


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


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _check_features(features: object, score: str) -> np.ndarray:
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


def _check_labels(labels: object, n_samples: int, score: str) -> tuple[np.ndarray, np.ndarray]:
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


def _check_inputs(features: object, labels: object, score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate features and labels together; return (features, label codes, class counts)."""
    features = _check_features(features, score)
    codes, counts = _check_labels(labels, features.shape[0], score)
    return features, codes, counts


def _check_source_logits(source_logits: object, n_samples: int, score: str) -> np.ndarray:
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


def _class_sums(matrix: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Sum the rows of ``matrix`` per class; returns float64 of shape (n_classes, n_columns)."""
    n_samples = codes.shape[0]
    one_hot = scipy.sparse.csr_matrix(
        (np.ones(n_samples, dtype=matrix.dtype), (codes, np.arange(n_samples))),
        shape=(n_classes, n_samples),
    )
    return np.asarray(one_hot @ matrix, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# LogME
# --------------------------------------------------------------------------------------------------


def logme(features: np.ndarray, labels: np.ndarray, *, tol: float = 1e-10, max_iter: int = 100) -> float:
    """LogME: the mean log evidence of a Bayesian linear model from features to one-hot labels.

    You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning", ICML 2021. For each class c, the one-hot column y_c is modelled as F m + noise with
    prior m ~ N(0, I / alpha) and noise ~ N(0, 1 / beta). The evidence p(y_c | F, alpha, beta) is
    maximized at the fixed point of MacKay's updates alpha = gamma / |m|^2 and
    beta = (n - gamma) / |y_c - F m|^2; the score is the mean over classes of the maximized log
    evidence divided by n_samples. Higher is better.

    How this differs from the authors' code, which runs an SVD per call and at most 11 plain
    iterations with a 1% stopping rule:

    - The smaller of the two Gram matrices F^T F (d x d) and F F^T (n x n) is eigendecomposed once,
      in float64, and shared by all classes; each class then costs O(min(n, d)) per step.
    - The fixed point t = alpha / beta is solved to ``tol`` (relative) for all classes at once, by a
      bracketed secant method on MacKay's fixed-point equation rather than by plain iteration,
      which needs hundreds of steps when the features carry little information (the evidence is
      then flat). The score is the converged evidence, so it can differ from the authors' code in
      the third digit.
    - When the evidence keeps rising toward a boundary, the score is its limit: alpha / beta -> 0
      when the labels can be fitted exactly (possible when n <= d), alpha / beta -> inf when the
      features cannot fit a class at all.

    Large float32 inputs (n * d * min(n, d) >= 2e10, such as 50,000 x 2,048) are multiplied in
    float32 blocks of 8192 rows whose products are summed in float64, which is 2.5x faster; on
    such inputs this changed the score by about 1e-8 relative in our checks, but more when F^T F is
    badly conditioned. Pass float64 features to compute the Gram matrix wholly in float64.

    Args:
        features: Array of shape (n_samples, n_features).
        labels: One class label per sample.
        tol: Stop when one more MacKay update would change alpha / beta by less than this (relative).
        max_iter: Limit on secant steps; a RuntimeWarning says when some class did not converge.

    Returns:
        The mean over classes of log evidence / n_samples.

    Raises:
        DataError: If the inputs are malformed (see the module docstring).
        ValueError: If ``tol`` is not positive or ``max_iter`` is below 1.
    """
    features, codes, counts = _check_inputs(features, labels, "logme")
    if not tol > 0 or max_iter < 1:
        raise ValueError(f"logme: tol must be > 0 and max_iter >= 1, but got tol={tol}, max_iter={max_iter}.")
    spectrum = _logme_spectrum(features, codes, counts)
    ratio = _logme_fixed_point(spectrum, tol, max_iter)
    evidence = _logme_log_evidence(ratio, spectrum)
    return float(np.mean(evidence) / spectrum.n_samples)


@dataclass(frozen=True)
class _Spectrum:
    """What LogME needs of F and the one-hot label columns Y, for all classes at once.

    With F = U diag(sqrt(sigma)) V^T (thin SVD, k = min(n, d) directions), the evidence depends on
    F and y_c only through sigma, the squared coordinates x2[:, c] = (U^T y_c)^2, and the squared
    norm of the part of y_c outside the span of U.

    Attributes:
        sigma: Eigenvalues of F^T F that can be nonzero, shape (k,).
        x2: Squared label coordinates along the k directions, shape (k, n_classes).
        outside: |y_c|^2 - sum x2[:, c], the least-squares residual of each class, shape (n_classes,).
        n_samples: n.
    """

    sigma: np.ndarray
    x2: np.ndarray
    outside: np.ndarray
    n_samples: int


def _gram(matrix: np.ndarray) -> np.ndarray:
    """Return the upper triangle of matrix^T matrix in float64, built from blocks of rows.

    Each block product is one symmetric rank-k update (BLAS syrk). Float32 input is multiplied in
    float32 when the product is large (at least ``_FLOAT32_GRAM_MIN_FLOPS`` multiply-adds, where
    float32 is about 2.5x faster), and in float64 otherwise; block products are always summed in
    float64. Only the upper triangle of the result is filled.
    """
    n_rows, n_columns = matrix.shape
    fast = matrix.dtype == np.float32 and n_rows * n_columns**2 >= _FLOAT32_GRAM_MIN_FLOPS
    gram = np.zeros((n_columns, n_columns), dtype=np.float64, order="F")
    for start in range(0, n_rows, _GRAM_CHUNK_ROWS):
        block = matrix[start : start + _GRAM_CHUNK_ROWS]
        if fast:
            block = np.ascontiguousarray(block)
            syrk = scipy.linalg.blas.ssyrk
        else:
            block = np.ascontiguousarray(block, dtype=np.float64)
            syrk = scipy.linalg.blas.dsyrk
        # block.T is Fortran-ordered, so syrk reads it without a copy; trans=0 gives block^T block.
        gram += syrk(1.0, block.T, trans=0, lower=0)
    return gram


def _symmetric_eigh(gram_upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of a Gram matrix given by its upper triangle."""
    sigma, vectors = scipy.linalg.eigh(gram_upper, lower=False, driver="evd", overwrite_a=True, check_finite=False)
    return np.clip(sigma, 0.0, None), vectors


def _logme_spectrum(features: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> _Spectrum:
    """Eigendecompose the smaller Gram matrix once and project every label column onto it."""
    n_samples, n_features = features.shape
    n_classes = counts.size
    label_norm2 = counts.astype(np.float64)  # |y_c|^2 of a one-hot column is the class count
    if n_samples < n_features:
        # F F^T = U diag(sigma) U^T, with U a full basis of R^n: nothing of y lies outside it.
        sigma, vectors = _symmetric_eigh(_gram(features.T))
        x2 = _class_sums(vectors, codes, n_classes).T ** 2  # (U^T Y)^2, n x K
        outside = np.zeros(n_classes)
    else:
        # F^T F = V diag(sigma) V^T; the i-th left singular vector is F v_i / sqrt(sigma_i), so
        # U^T y = V^T F^T y / sqrt(sigma). Directions with negligible sigma carry no fit.
        sigma, vectors = _symmetric_eigh(_gram(features))
        projections = vectors.T @ _class_sums(features, codes, n_classes).T  # V^T F^T Y, d x K
        usable = sigma > sigma.max() * n_features * np.finfo(np.float64).eps
        inverse_root = np.zeros_like(sigma)
        inverse_root[usable] = 1.0 / np.sqrt(sigma[usable])
        x2 = (projections * inverse_root[:, None]) ** 2
        outside = np.maximum(label_norm2 - x2.sum(axis=0), 0.0)
    return _Spectrum(sigma=sigma, x2=x2, outside=outside, n_samples=n_samples)


def _logme_terms(ratio: np.ndarray, spectrum: _Spectrum) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """gamma, n - gamma, |m|^2 and |y - F m|^2 per class at t = alpha / beta.

    With A = alpha I + beta F^T F, m = beta A^-1 F^T y and gamma = sum beta sigma / (alpha + beta sigma),
    each quantity is a sum of non-negative terms over the k directions, so no digits cancel:
    gamma = sum s / (t + s), n - gamma = (n - k) + sum t / (t + s),
    |m|^2 = sum s x2 / (t + s)^2, |y - F m|^2 = outside + sum x2 t^2 / (t + s)^2.
    """
    sigma = spectrum.sigma[:, None]
    t = ratio[None, :]
    denominator = t + sigma
    gamma = np.sum(sigma / denominator, axis=0)
    n_minus_gamma = (spectrum.n_samples - sigma.shape[0]) + np.sum(t / denominator, axis=0)
    mean_norm2 = np.sum(sigma * spectrum.x2 / denominator**2, axis=0)
    residual = spectrum.outside + np.sum(spectrum.x2 * (t / denominator) ** 2, axis=0)
    residual = np.maximum(residual, np.finfo(np.float64).tiny)
    return gamma, n_minus_gamma, mean_norm2, residual


def _mackay_log_step(log_ratio: np.ndarray, spectrum: _Spectrum) -> np.ndarray:
    """log g(t) - log t, where g is MacKay's update of t = alpha / beta, per class.

    MacKay's update is alpha = gamma / |m|^2 and beta = (n - gamma) / |y - F m|^2, so
    g(t) = gamma |y - F m|^2 / ((n - gamma) |m|^2). The sign of log g(t) - log t is the sign of
    d evidence / d log t (with beta at its optimum for each t), so it says on which side of t the
    fixed point, the evidence maximum, lies.
    """
    gamma, n_minus_gamma, mean_norm2, residual = _logme_terms(np.exp(log_ratio), spectrum)
    step = np.full_like(log_ratio, np.inf)  # |m|^2 = 0: the features cannot fit y; t grows without end
    fits = mean_norm2 > 0
    step[fits] = np.log(gamma[fits] * residual[fits]) - np.log(n_minus_gamma[fits] * mean_norm2[fits]) - log_ratio[fits]
    return step


def _logme_fixed_point(spectrum: _Spectrum, tol: float, max_iter: int) -> np.ndarray:
    """Solve MacKay's fixed-point equation t = g(t) for t = alpha / beta, per class.

    The paper iterates t <- g(t) from alpha = beta = 1. That takes a few steps on informative
    features but hundreds when the evidence is flat (uninformative features), so this finds the
    same fixed point with a bracketed secant method (Illinois) in log t over
    [1e-15, 1e15] x the largest eigenvalue, which needs about 10-20 evaluations of g. When g(t) > t
    at the top of the range the evidence keeps rising as t -> inf (the class is best modelled as
    noise) and t stays at the top; when g(t) < t at the bottom, it keeps rising as t -> 0 (the labels
    can be fitted exactly, possible when n <= d) and t stays at the bottom. Both limits are finite.

    Returns:
        t per class; one more MacKay step would change it by less than ``tol`` (relative), or the
        bracket around it is narrower than that.
    """
    n_classes = spectrum.x2.shape[1]
    scale = spectrum.sigma.max() if spectrum.sigma.max() > 0 else 1.0
    low = np.full(n_classes, math.log(1e-15 * scale))
    high = np.full(n_classes, math.log(1e15 * scale))
    step_low = _mackay_log_step(low, spectrum)
    step_high = _mackay_log_step(high, spectrum)
    log_ratio = np.where(step_high >= 0, high, low)  # the boundary cases
    active = np.flatnonzero((step_low > 0) & (step_high < 0))

    # Illinois: a secant step inside the bracket; the end that stays twice in a row has its step halved.
    last_moved = np.zeros(n_classes, dtype=int)  # -1: low moved last, +1: high moved last
    for _ in range(max_iter):
        if active.size == 0:
            return np.exp(log_ratio)
        sub = _Spectrum(spectrum.sigma, spectrum.x2[:, active], spectrum.outside[active], spectrum.n_samples)
        lo, hi, step_lo, step_hi = low[active], high[active], step_low[active], step_high[active]
        guess = hi - step_hi * (hi - lo) / (step_hi - step_lo)
        step = _mackay_log_step(guess, sub)
        log_ratio[active] = guess
        below = step > 0  # the fixed point lies above the guess
        low[active] = np.where(below, guess, lo)
        high[active] = np.where(below, hi, guess)
        moved = np.where(below, -1, 1)
        step_low[active] = np.where(below, step, np.where(last_moved[active] == 1, step_lo / 2, step_lo))
        step_high[active] = np.where(below, np.where(last_moved[active] == -1, step_hi / 2, step_hi), step)
        last_moved[active] = moved
        unsettled = (np.abs(step) > tol) & (high[active] - low[active] > tol)
        active = active[unsettled]
    warnings.warn(
        f"logme: MacKay's fixed point was not found to relative tolerance {tol} in {max_iter} "
        f"steps for {active.size} of {n_classes} classes; the score uses the last estimate.",
        RuntimeWarning,
        stacklevel=3,
    )
    return np.exp(log_ratio)


def _logme_log_evidence(ratio: np.ndarray, spectrum: _Spectrum) -> np.ndarray:
    """Log evidence log p(y_c | F, alpha, beta) per class, at MacKay's alpha and beta for t = ratio.

    The evidence is the Gaussian density N(y_c; 0, F F^T / alpha + I / beta). Along the k directions
    of U its covariance has eigenvalues sigma / alpha + 1 / beta; along the n - k directions outside
    (only when n > d) it has 1 / beta. This equals the paper's formula with m the posterior mean,
    and it stays finite at the boundaries (beta -> inf when the labels can be fitted exactly,
    alpha -> inf when a class is orthogonal to every feature).
    """
    gamma, n_minus_gamma, mean_norm2, residual = _logme_terms(ratio, spectrum)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(mean_norm2 > 0, gamma / mean_norm2, np.inf)
    beta = n_minus_gamma / residual
    n_samples = spectrum.n_samples
    n_inside = spectrum.sigma.shape[0]
    variance = spectrum.sigma[:, None] / alpha[None, :] + 1.0 / beta[None, :]
    log_det = np.sum(np.log(variance), axis=0) - (n_samples - n_inside) * np.log(beta)
    quadratic = np.sum(spectrum.x2 / variance, axis=0) + beta * spectrum.outside
    return -0.5 * (log_det + quadratic + n_samples * math.log(2 * math.pi))


# --------------------------------------------------------------------------------------------------
# LEEP and NLEEP
# --------------------------------------------------------------------------------------------------


def leep(features: np.ndarray, labels: np.ndarray, source_logits: np.ndarray | None = None) -> float:
    """LEEP: log expected empirical prediction of the source classifier, re-mapped to target labels.

    Nguyen, Hassner, Seeger and Archambeau, "LEEP: A New Measure to Evaluate Transferability of
    Learned Representations", ICML 2020. With theta_i = softmax(source_logits_i), the empirical joint
    P(y, z) = 1/n sum_{i: y_i = y} theta_i(z) gives P(y | z) = P(y, z) / P(z), and
    LEEP = 1/n sum_i log sum_z P(y_i | z) theta_i(z). It lies in (-inf, 0]; higher is better.

    Args:
        features: Array of shape (n_samples, n_features). LEEP does not use it beyond validation;
            it is accepted so that every score has the same signature.
        labels: One class label per sample.
        source_logits: The backbone's source-task logits, shape (n_samples, n_source_classes).

    Returns:
        The LEEP score.

    Raises:
        ScoreUndefined: If ``source_logits`` is None; LEEP needs a source classifier head.
        DataError: If the inputs are malformed.
    """
    features, codes, counts = _check_inputs(features, labels, "leep")
    if source_logits is None:
        raise ScoreUndefined(
            "leep needs source_logits (the backbone's own classifier outputs on these samples), but "
            "none were given; a backbone without its classifier head has none. nleep and nce work "
            "without them."
        )
    logits = _check_source_logits(source_logits, features.shape[0], "leep")
    probabilities = scipy.special.softmax(logits, axis=1)
    return _leep_from_probabilities(probabilities, codes, counts.size)


def _leep_from_probabilities(probabilities: np.ndarray, codes: np.ndarray, n_classes: int) -> float:
    """LEEP from source-class probabilities theta, shape (n_samples, n_source_classes)."""
    n_samples = codes.shape[0]
    joint = _class_sums(probabilities, codes, n_classes) / n_samples  # P(y, z), K x Z
    marginal = joint.sum(axis=0)  # P(z)
    # A source class with P(z) = 0 has theta_i(z) = 0 for every sample, so its column never counts.
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected_prediction = np.sum(probabilities * conditional[codes], axis=1)
    return float(np.mean(np.log(expected_prediction)))


def nleep(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    variance: float = 0.8,
    max_dims: int = 256,
    components_per_class: int = 5,
    random_state: int = 0,
) -> float:
    """N-LEEP: LEEP with a Gaussian mixture on the features standing in for the source classifier.

    Li, Hong, Zhang, Yang, Sun and Zheng (Google), "Ranking Neural Checkpoints", CVPR 2021. The
    features are reduced by PCA to the fewest components that keep ``variance`` of the variance
    (at most ``max_dims``); a diagonal-covariance Gaussian mixture with
    ``components_per_class * n_classes`` components (at most n_samples // 2) is fitted; its
    component posteriors replace softmax(source_logits) in LEEP. It lies in (-inf, 0]; higher is
    better. The result depends on ``random_state`` (mixture initialization).

    Args:
        features: Array of shape (n_samples, n_features).
        labels: One class label per sample.
        variance: Fraction of the variance the PCA keeps, in (0, 1].
        max_dims: Most PCA dimensions kept.
        components_per_class: Mixture components per target class.
        random_state: Seed of the mixture's initialization.

    Returns:
        The N-LEEP score.

    Raises:
        DataError: If the inputs are malformed.
        ScoreUndefined: If every feature is constant.
        ValueError: If ``variance`` is outside (0, 1] or a count is below 1.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    features, codes, counts = _check_inputs(features, labels, "nleep")
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"nleep: variance must be in (0, 1], but got {variance}.")
    if max_dims < 1 or components_per_class < 1:
        raise ValueError(
            f"nleep: max_dims and components_per_class must be at least 1, but got "
            f"{max_dims} and {components_per_class}."
        )
    if np.ptp(features, axis=0).max() == 0:
        raise ScoreUndefined("nleep is undefined for constant features: there is nothing to cluster.")
    pca = PCA(n_components=variance if variance < 1.0 else None)
    reduced = pca.fit_transform(features.astype(np.float64))[:, :max_dims]
    n_components = min(components_per_class * counts.size, features.shape[0] // 2)
    mixture = GaussianMixture(n_components=n_components, covariance_type="diag", random_state=random_state)
    posteriors = mixture.fit(reduced).predict_proba(reduced)
    return _leep_from_probabilities(posteriors, codes, counts.size)


# --------------------------------------------------------------------------------------------------
# NCE
# --------------------------------------------------------------------------------------------------


def nce(
    features: np.ndarray,
    labels: np.ndarray,
    source_logits: np.ndarray | None = None,
    *,
    clusters_per_class: int = 5,
    random_state: int = 0,
) -> float:
    """NCE: negative conditional entropy -H(Y | Z) of target labels Y given source labels Z.

    Tran, Nguyen and Hassner, "Transferability and Hardness of Supervised Classification Tasks",
    ICCV 2019. Z is the argmax of ``source_logits`` when they are given; otherwise it is the
    cluster assignment of k-means on the features, with ``clusters_per_class * n_classes`` clusters
    (at most n_samples // 2), seeded by ``random_state``. NCE lies in [-log(n_classes), 0]; 0 means
    Z determines Y exactly, and higher is better. More clusters lower H(Y | Z) by themselves, so
    compare backbones at the same cluster count and sample size.

    Args:
        features: Array of shape (n_samples, n_features); clustered when there are no source logits.
        labels: One class label per sample.
        source_logits: Optional source-task logits, shape (n_samples, n_source_classes).
        clusters_per_class: Clusters per target class when clustering.
        random_state: Seed of k-means.

    Returns:
        The NCE score, in nats.

    Raises:
        DataError: If the inputs are malformed.
        ValueError: If ``clusters_per_class`` is below 1.
    """
    features, codes, counts = _check_inputs(features, labels, "nce")
    n_samples = features.shape[0]
    if source_logits is not None:
        source_labels = _check_source_logits(source_logits, n_samples, "nce").argmax(axis=1)
    else:
        from sklearn.cluster import KMeans

        if clusters_per_class < 1:
            raise ValueError(f"nce: clusters_per_class must be at least 1, but got {clusters_per_class}.")
        n_clusters = min(clusters_per_class * counts.size, n_samples // 2)
        kmeans = KMeans(n_clusters=n_clusters, n_init=1, random_state=random_state)
        source_labels = kmeans.fit_predict(features)
    return -_conditional_entropy(codes, source_labels)


def _conditional_entropy(target: np.ndarray, source: np.ndarray) -> float:
    """H(target | source) in nats, from the empirical joint distribution of two label arrays."""
    _, source_codes = np.unique(source, return_inverse=True)
    source_codes = source_codes.reshape(-1)
    n_target = target.max() + 1
    n_source = source_codes.max() + 1
    joint_counts = np.bincount(source_codes * n_target + target, minlength=n_source * n_target)
    joint = joint_counts.reshape(n_source, n_target) / target.shape[0]  # P(z, y)
    source_marginal = joint.sum(axis=1, keepdims=True)  # P(z) > 0 for every z that occurs
    conditional = np.divide(joint, source_marginal, out=np.ones_like(joint), where=joint > 0)
    return float(-np.sum(joint * np.log(conditional)))


# --------------------------------------------------------------------------------------------------
# H-score
# --------------------------------------------------------------------------------------------------


def hscore(features: np.ndarray, labels: np.ndarray, *, shrinkage: bool = False) -> float:
    """H-score: tr(cov(f)^-1 cov(E[f | y])), how much of the feature variance is between classes.

    Bao, Li, Huang, Liang, Zheng and Tao, "An Information-Theoretic Approach to Transferability in
    Task Transfer Learning", ICIP 2019. The inverse is the pseudo-inverse with rcond 1e-15, as in
    the paper's code; with more features than samples, or nearly collinear features, the estimate is
    unstable, and ``shrinkage=True`` (or :func:`hscore_shrinkage`) is the better choice. Higher is
    better; with n_classes classes it is at most n_classes - 1 when cov(f) is well conditioned.

    Args:
        features: Array of shape (n_samples, n_features).
        labels: One class label per sample.
        shrinkage: Use the Ledoit-Wolf shrinkage estimate (see :func:`hscore_shrinkage`).

    Returns:
        The H-score.

    Raises:
        DataError: If the inputs are malformed.
    """
    score_name = "hscore_shrinkage" if shrinkage else "hscore"
    features, codes, counts = _check_inputs(features, labels, score_name)
    n_samples = features.shape[0]
    centered = features.astype(np.float64)
    centered -= centered.mean(axis=0)
    if shrinkage:
        from sklearn.covariance import LedoitWolf

        estimator = LedoitWolf(assume_centered=True).fit(centered)
        feature_cov = estimator.covariance_
        between_weight = 1.0 - estimator.shrinkage_
    else:
        feature_cov = centered.T @ centered / (n_samples - 1)
        between_weight = 1.0
    # cov(E[f | y]) = sum_c n_c mu_c mu_c^T / (n - 1) for centered class means mu_c; with
    # w_c = sqrt(n_c / (n - 1)) mu_c, tr(P cov_g) = sum_c w_c^T P w_c.
    class_means = _class_sums(centered, codes, counts.size) / counts[:, None]
    weighted_means = class_means * np.sqrt(counts / (n_samples - 1))[:, None]
    precision = scipy.linalg.pinvh(feature_cov, rtol=1e-15)
    return float(between_weight * np.sum((weighted_means @ precision) * weighted_means))


def hscore_shrinkage(features: np.ndarray, labels: np.ndarray) -> float:
    """Shrinkage-regularized H-score: tr(cov_a(f)^-1 (1 - a) cov(E[f | y])).

    Ibrahim, Ponomareva and Mazumder, "Newer is not always better: Rethinking transferability
    metrics, their peculiarities, stability and performance", ICLR 2022 submission,
    https://openreview.net/forum?id=iz_Wwmfquno. cov_a(f) is the Ledoit-Wolf estimate, which
    shrinks the feature covariance toward a scaled identity by the factor a; the between-class
    covariance is scaled by 1 - a to match. Stable with more features than samples. Higher is
    better.

    Args:
        features: Array of shape (n_samples, n_features).
        labels: One class label per sample.

    Returns:
        The regularized H-score.

    Raises:
        DataError: If the inputs are malformed.
    """
    return hscore(features, labels, shrinkage=True)


# --------------------------------------------------------------------------------------------------
# SFDA
# --------------------------------------------------------------------------------------------------


def sfda(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA: how well a regularized Fisher discriminant classifies samples made harder on purpose.

    Shao, Zhao, Wang, Zhang, Han and Luo, "Not All Models Are Equal: Predicting Model
    Transferability in a Self-challenging Fisher Space", ECCV 2022, following the authors' code:

    1. Fit a Fisher discriminant (shared within-class covariance S_w, shrunk toward a scaled
       identity by lambda = max(exp(-5 * largest eigenvalue of S_w), 1e-10)) and take its class
       probabilities p(y | x).
    2. ConfMix: soften them once more with a softmax, then move each sample toward the mean of the
       other classes' means, x <- p(y | x) x + (1 - p(y | x)) mean_of_other_classes.
    3. Refit on the mixed samples with the same lambda; the score is the mean probability of the
       true class (no log, as in the authors' code). It lies in (0, 1]; higher is better.

    With all Fisher directions kept, as in the authors' code, the discriminant's class scores are
    x^T S^-1 mu_c - mu_c^T S^-1 mu_c / 2 + log prior_c with S the shrunk S_w; this computes them
    with one linear solve. The authors estimate the largest eigenvalue with 3 power iterations;
    this uses the exact one.

    Args:
        features: Array of shape (n_samples, n_features).
        labels: One class label per sample.

    Returns:
        The SFDA score.

    Raises:
        DataError: If the inputs are malformed.
        ScoreUndefined: If every feature is constant within every class.
    """
    features, codes, counts = _check_inputs(features, labels, "sfda")
    features = features.astype(np.float64)
    n_samples, n_classes = codes.size, counts.size
    rows = np.arange(n_samples)
    class_means = _class_sums(features, codes, n_classes) / counts[:, None]
    within = _within_class_covariance(features, codes, class_means)
    if np.trace(within) == 0:
        raise ScoreUndefined("sfda is undefined when every feature is constant within every class.")
    largest = scipy.linalg.eigh(within, eigvals_only=True, subset_by_index=[within.shape[0] - 1] * 2)[0]
    shrinkage = max(math.exp(-5.0 * largest), 1e-10)
    priors = counts / n_samples

    probabilities = _fisher_probabilities(features, codes, counts, priors, shrinkage)
    confidence = scipy.special.softmax(probabilities, axis=1)[rows, codes][:, None]
    other_class_means = (class_means.sum(axis=0) - class_means) / (n_classes - 1)
    mixed = confidence * features + (1.0 - confidence) * other_class_means[codes]
    probabilities = _fisher_probabilities(mixed, codes, counts, priors, shrinkage)
    return float(np.mean(probabilities[rows, codes]))


def _within_class_covariance(features: np.ndarray, codes: np.ndarray, class_means: np.ndarray) -> np.ndarray:
    """sum_c prior_c cov_c, with each class covariance normalized by its count (bias=True)."""
    centered = features - class_means[codes]
    return centered.T @ centered / features.shape[0]


def _fisher_probabilities(
    features: np.ndarray, codes: np.ndarray, counts: np.ndarray, priors: np.ndarray, shrinkage: float
) -> np.ndarray:
    """Class probabilities of a Fisher discriminant with shrunk within-class covariance."""
    class_means = _class_sums(features, codes, counts.size) / counts[:, None]
    within = _within_class_covariance(features, codes, class_means)
    n_features = within.shape[0]
    shrunk = (1.0 - shrinkage) * within
    shrunk.flat[:: n_features + 1] += shrinkage * np.trace(within) / n_features
    coefficients = scipy.linalg.solve(shrunk, class_means.T, assume_a="pos")  # S^-1 mu_c, d x K
    intercepts = -0.5 * np.sum(class_means * coefficients.T, axis=1) + np.log(priors)
    return scipy.special.softmax(features @ coefficients + intercepts, axis=1)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

SCORES: dict[str, Callable[..., float]] = {
    "logme": logme,
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
    explains why it is missing (a score needing ``source_logits`` without them, or an unexpected
    numerical failure, whose exception is kept as ``__cause__``).

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
    features, codes, _ = _check_inputs(features, labels, "compute_scores")
    if source_logits is not None:
        source_logits = _check_source_logits(source_logits, features.shape[0], "compute_scores")

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
        except Exception as error:  # noqa: BLE001 - one failing score must not hide the others
            undefined = ScoreUndefined(f"{name} failed: {type(error).__name__}: {error}")
            undefined.__cause__ = error
            results[name] = undefined
    return results
