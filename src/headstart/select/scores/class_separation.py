"""Scores of how the classes separate in feature space: H-score, its shrinkage form, and SFDA."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.special

from headstart.select.scores.common import ScoreUndefined, check_inputs, check_magnitude, class_sums

__all__ = ["hscore", "hscore_shrinkage", "sfda"]


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
        ScoreUndefined: If the features are so large that their covariance overflows float64.
    """
    score_name = "hscore_shrinkage" if shrinkage else "hscore"
    features, codes, counts = check_inputs(features, labels, score_name)
    n_samples = features.shape[0]
    centered = features.astype(np.float64)
    centered -= centered.mean(axis=0)
    check_magnitude(centered, 4 if shrinkage else 2, score_name)  # Ledoit-Wolf sums squared covariances
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
    class_means = class_sums(centered, codes, counts.size) / counts[:, None]
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
        ScoreUndefined: If every feature is constant within every class, or the features are so
            large that their covariance overflows float64.
    """
    features, codes, counts = check_inputs(features, labels, "sfda")
    features = features.astype(np.float64)
    check_magnitude(features, 2, "sfda")
    n_samples, n_classes = codes.size, counts.size
    rows = np.arange(n_samples)
    class_means = class_sums(features, codes, n_classes) / counts[:, None]
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
    class_means = class_sums(features, codes, counts.size) / counts[:, None]
    within = _within_class_covariance(features, codes, class_means)
    n_features = within.shape[0]
    shrunk = (1.0 - shrinkage) * within
    shrunk.flat[:: n_features + 1] += shrinkage * np.trace(within) / n_features
    coefficients = scipy.linalg.solve(shrunk, class_means.T, assume_a="pos")  # S^-1 mu_c, d x K
    intercepts = -0.5 * np.sum(class_means * coefficients.T, axis=1) + np.log(priors)
    return scipy.special.softmax(features @ coefficients + intercepts, axis=1)

