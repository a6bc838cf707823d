"""Scores from source or pseudo-source labels: LEEP, N-LEEP and NCE."""

from __future__ import annotations

import numpy as np
import scipy.special

from headstart.select.scores.common import ScoreUndefined, check_inputs, check_magnitude, check_source_logits, class_sums

__all__ = ["leep", "nce", "nleep"]


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
    features, codes, counts = check_inputs(features, labels, "leep")
    if source_logits is None:
        raise ScoreUndefined(
            "leep needs source_logits (the backbone's own classifier outputs on these samples), but "
            "none were given; a backbone without its classifier head has none. nleep and nce work "
            "without them."
        )
    logits = check_source_logits(source_logits, features.shape[0], "leep")
    probabilities = scipy.special.softmax(logits, axis=1)
    return _leep_from_probabilities(probabilities, codes, counts.size)


def _leep_from_probabilities(probabilities: np.ndarray, codes: np.ndarray, n_classes: int) -> float:
    """LEEP from source-class probabilities theta, shape (n_samples, n_source_classes)."""
    n_samples = codes.shape[0]
    joint = class_sums(probabilities, codes, n_classes) / n_samples  # P(y, z), K x Z
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
        ScoreUndefined: If every feature is constant, the features are so large that their
            covariance overflows float64, or the mixture has an ill-defined covariance.
        ValueError: If ``variance`` is outside (0, 1] or a count is below 1.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    features, codes, counts = check_inputs(features, labels, "nleep")
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"nleep: variance must be in (0, 1], but got {variance}.")
    if max_dims < 1 or components_per_class < 1:
        raise ValueError(
            f"nleep: max_dims and components_per_class must be at least 1, but got "
            f"{max_dims} and {components_per_class}."
        )
    if np.ptp(features, axis=0).max() == 0:
        raise ScoreUndefined("nleep is undefined for constant features: there is nothing to cluster.")
    check_magnitude(features, 2, "nleep")
    pca = PCA(n_components=variance if variance < 1.0 else None)
    reduced = pca.fit_transform(features.astype(np.float64))[:, :max_dims]
    n_components = min(components_per_class * counts.size, features.shape[0] // 2)
    mixture = GaussianMixture(n_components=n_components, covariance_type="diag", random_state=random_state)
    try:
        posteriors = mixture.fit(reduced).predict_proba(reduced)
    except ValueError as error:
        if "ill-defined empirical covariance" not in str(error):
            raise
        raise ScoreUndefined(f"nleep: the Gaussian mixture cannot be fitted to these features: {error}") from error
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
    features, codes, counts = check_inputs(features, labels, "nce")
    n_samples = features.shape[0]
    if source_logits is not None:
        source_labels = check_source_logits(source_logits, n_samples, "nce").argmax(axis=1)
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

