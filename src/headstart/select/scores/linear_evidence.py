"""LogME (You et al., ICML 2021): the evidence of a Bayesian linear model from features to labels."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from headstart.select.scores.common import ScoreUndefined, check_inputs, check_magnitude, class_sums

__all__ = ["logme"]

# Rows of the feature matrix multiplied at a time when LogME builds its Gram matrix.
_GRAM_CHUNK_ROWS = 8192
# LogME multiplies float32 features in float32 from this many multiply-adds on (see _gram).
_FLOAT32_GRAM_MIN_FLOPS = 2e10
# The secant search for t = alpha / beta runs over [1 / _BRACKET, _BRACKET] x the largest eigenvalue.
# Every maximum is interior or a finite limit at a boundary, so the score does not depend on it.
_BRACKET = 1e15
# A class whose least-squares residual is below this fraction of |y_c|^2 (or below the rounding
# error, if that is smaller) is fitted exactly by the features.
_EXACT_FIT_RTOL = float(np.sqrt(np.finfo(np.float64).eps))

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
      when the labels can be fitted exactly, alpha / beta -> inf when the features cannot fit a
      class at all. Both limits are finite except in the degenerate case below, which is taken
      out first, so the score does not depend on where the search stops.
    - Degenerate features. Eigenvalues of the Gram matrix up to ``min(n, d) * eps`` times the
      largest count as zero (r is the number of the others, the numerical rank). When r < n and a
      class is fitted exactly (its least-squares residual is zero to rounding), the paper's
      evidence has no upper bound: the n - r directions outside the span of the features hold
      only noise, the labels are exactly 0 there, and beta -> inf sends the density to infinity.
      A duplicated sample with n < d does this: the two copies have equal features and labels.
      For such a class, equal rows have equal labels, and its evidence is computed on the
      distinct rows (one copy of each, divided by their number), so exact duplicates do not
      change the score. If the distinct rows are still linearly dependent but no more than d
      (near-duplicates), the evidence of the labels' projection onto the r-dimensional span of
      the features is used, divided by r. If more than d distinct rows are dependent, the labels
      are an exact linear function of the features (e.g. n > d and the features contain the
      one-hot labels): the evidence really is +inf, and :class:`ScoreUndefined` says so.

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
        ScoreUndefined: If the labels of some class are an exact linear function of the features
            on more than d distinct rows, so the evidence is unbounded (see above), or if the
            features are so large that their Gram matrix overflows float64.
        ValueError: If ``tol`` is not positive or ``max_iter`` is below 1.
    """
    features, codes, counts = check_inputs(features, labels, "logme")
    if not tol > 0 or max_iter < 1:
        raise ValueError(f"logme: tol must be > 0 and max_iter >= 1, but got tol={tol}, max_iter={max_iter}.")
    check_magnitude(features, 2, "logme")
    spectrum = _logme_spectrum(features, codes, counts)
    exact = _exact_fits(spectrum, counts)
    parts = [(~exact, spectrum)]
    if exact.any():
        parts.append((exact, _exact_fit_spectrum(features, codes, exact)))
    per_sample = np.empty(counts.size)
    for chosen, whole in parts:
        if chosen.any():
            part = _Spectrum(whole.sigma, whole.x2[:, chosen], whole.outside[chosen], whole.n_samples)
            ratio = _logme_fixed_point(part, tol, max_iter)
            per_sample[chosen] = _logme_log_evidence(ratio, part) / part.n_samples
    return float(np.mean(per_sample))


@dataclass(frozen=True)
class _Spectrum:
    """What LogME needs of F and the one-hot label columns Y, for all classes at once.

    With F = U diag(sqrt(sigma)) V^T (thin SVD, keeping the k = r directions whose eigenvalue is
    not zero to rounding), the evidence depends on F and y_c only through sigma, the squared
    coordinates x2[:, c] = (U^T y_c)^2, and the squared norm of the part of y_c outside the span
    of U.

    Attributes:
        sigma: The nonzero eigenvalues of F^T F, shape (k,).
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
    """Eigendecompose the smaller Gram matrix once and project every label column onto it.

    Eigenvalues at most ``min(n, d) * eps`` times the largest (the rounding error of the
    eigendecomposition) are zero: their directions are dropped, and the labels' part along them
    counts as outside the span of the features.
    """
    n_samples, n_features = features.shape
    n_classes = counts.size
    label_norm2 = counts.astype(np.float64)  # |y_c|^2 of a one-hot column is the class count
    if n_samples < n_features:
        # F F^T = U diag(sigma) U^T, with U a full basis of R^n.
        sigma, vectors = _symmetric_eigh(_gram(features.T))
        all_x2 = class_sums(vectors, codes, n_classes).T ** 2  # (U^T Y)^2, n x K
        usable = _nonzero(sigma)
        x2 = all_x2[usable]
        outside = all_x2[~usable].sum(axis=0)
    else:
        # F^T F = V diag(sigma) V^T; the i-th left singular vector is F v_i / sqrt(sigma_i), so
        # U^T y = V^T F^T y / sqrt(sigma).
        sigma, vectors = _symmetric_eigh(_gram(features))
        usable = _nonzero(sigma)
        projections = vectors[:, usable].T @ class_sums(features, codes, n_classes).T  # V^T F^T Y, r x K
        x2 = (projections / np.sqrt(sigma[usable])[:, None]) ** 2
        outside = np.maximum(label_norm2 - x2.sum(axis=0), 0.0)
    return _Spectrum(sigma=sigma[usable], x2=x2, outside=outside, n_samples=n_samples)


def _nonzero(sigma: np.ndarray) -> np.ndarray:
    """Which eigenvalues of a Gram matrix of size len(sigma) exceed its rounding error."""
    if sigma.size == 0:
        return np.zeros(0, dtype=bool)
    return sigma > sigma.max() * sigma.size * np.finfo(np.float64).eps


def _exact_fits(spectrum: _Spectrum, counts: np.ndarray) -> np.ndarray:
    """Which classes have unbounded evidence: fitted exactly while r < n directions span the features.

    The residual of such a class is zero to rounding, which leaves about eps x cond(F^T F) x |y|^2
    there; a residual below ``_EXACT_FIT_RTOL`` x |y|^2 is never trusted to be nonzero.
    """
    rank = spectrum.sigma.size
    if rank == 0 or rank >= spectrum.n_samples:
        return np.zeros(counts.size, dtype=bool)
    condition = spectrum.sigma.max() / spectrum.sigma.min()
    tolerance = min(_EXACT_FIT_RTOL, 1000 * np.finfo(np.float64).eps * condition) * counts
    return spectrum.outside <= tolerance


def _exact_fit_spectrum(features: np.ndarray, codes: np.ndarray, exact: np.ndarray) -> _Spectrum:
    """A spectrum with a finite maximum for the classes fitted exactly (see :func:`logme`).

    A class fitted exactly has equal labels on equal rows, so keeping one copy of each row is well
    defined for it. If the distinct rows are linearly independent, their spectrum has nothing
    outside the span; if they are dependent but no more than d (near-duplicates with n <= d),
    the labels' projection onto the span of the features, r dimensions, is used.

    Raises:
        ScoreUndefined: If more than d distinct rows are linearly dependent: then the labels of
            those classes are a linear function of the features, and LogME is +inf.
    """
    distinct, first = np.unique(features, axis=0, return_index=True)
    kept = codes[first]
    spectrum = _logme_spectrum(distinct, kept, np.bincount(kept, minlength=exact.size))
    n_distinct, rank = distinct.shape[0], spectrum.sigma.size
    if rank < n_distinct and n_distinct > features.shape[1]:
        raise ScoreUndefined(
            f"logme is unbounded on these features: the labels of {int(exact.sum())} of {exact.size} "
            f"classes are an exact linear function of them ({n_distinct} distinct samples, rank "
            f"{rank}), so the evidence grows without limit as the noise variance goes to 0. The "
            "features fit these labels perfectly; compare them with another score."
        )
    return _Spectrum(spectrum.sigma, spectrum.x2, np.zeros(exact.size), rank)


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
    mean_norm2 = np.sum((sigma / denominator) * (spectrum.x2 / denominator), axis=0)  # no overflow at large t
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
    [1 / _BRACKET, _BRACKET] x the largest eigenvalue, which needs about 10-20 evaluations of g. When
    g(t) > t at the top of the range the evidence keeps rising as t -> inf (the class is best
    modelled as noise) and t stays at the top; when g(t) < t at the bottom, it keeps rising as
    t -> 0 (the labels can be fitted exactly) and t stays at the bottom. Both limits are finite
    once :func:`_exact_fits` has taken the unbounded cases out, so the evidence at the
    boundary is within rounding of the limit, whatever the bracket.

    Returns:
        t per class; one more MacKay step would change it by less than ``tol`` (relative), or the
        bracket around it is narrower than that.
    """
    n_classes = spectrum.x2.shape[1]
    scale = spectrum.sigma.max() if spectrum.sigma.size else 1.0
    low = np.full(n_classes, math.log(scale / _BRACKET))
    high = np.full(n_classes, math.log(scale * _BRACKET))
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

