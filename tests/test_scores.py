"""Tests for headstart.select.scores: transferability scores."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from headstart.errors import DataError, HeadstartError
from headstart.select.scores import linear_evidence
from headstart.select.scores import (
    SCORES,
    ScoreUndefined,
    UnknownScoreError,
    compute_scores,
    hscore,
    hscore_shrinkage,
    leep,
    logme,
    nce,
    nleep,
    score_needs_source_logits,
    sfda,
)


def reference_logme(features: np.ndarray, labels: np.ndarray, tol: float = 1e-10, max_iter: int = 100_000) -> float:
    """LogME as written in the paper (You et al., ICML 2021, Algorithm 1), plainly, in float64.

    One SVD of F^T F; per class, MacKay's updates of alpha and beta with explicit vectors, until
    the log evidence changes by less than ``tol`` (relative); the evidence uses the paper's
    formula with all d eigenvalues.
    """
    features = np.asarray(features, dtype=np.float64)
    n, d = features.shape
    v, s, vh = np.linalg.svd(features.T @ features)

    def log_evidence(alpha: float, beta: float, y: np.ndarray, projection: np.ndarray) -> float:
        m = v @ (projection * beta / (alpha + beta * s))
        return (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * s))
            - beta / 2 * np.sum((y - features @ m) ** 2)
            - alpha / 2 * (m @ m)
            - n / 2 * np.log(2 * np.pi)
        )

    evidences = []
    for label in np.unique(labels):
        y = (labels == label).astype(np.float64)
        projection = vh @ (features.T @ y)
        alpha, beta = 1.0, 1.0
        previous = log_evidence(alpha, beta, y, projection)
        for _ in range(max_iter):
            m = v @ (projection * beta / (alpha + beta * s))
            gamma = np.sum(beta * s / (alpha + beta * s))
            alpha = gamma / (m @ m)
            beta = (n - gamma) / np.sum((y - features @ m) ** 2)
            current = log_evidence(alpha, beta, y, projection)
            if abs(current - previous) <= tol * abs(current):
                break
            previous = current
        evidences.append(current / n)
    return float(np.mean(evidences))


def clustered(
    n_samples: int, n_features: int, n_classes: int, separation: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters: features = separation * class centre + unit noise. 0 means pure noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_samples) % n_classes
    rng.shuffle(labels)
    centres = rng.standard_normal((n_classes, n_features))
    features = separation * centres[labels] + rng.standard_normal((n_samples, n_features))
    return features, labels


def source_logits_for(features: np.ndarray, n_source_classes: int = 10, seed: int = 1) -> np.ndarray:
    """A fixed random linear 'source head' on the features."""
    weights = np.random.default_rng(seed).standard_normal((features.shape[1], n_source_classes))
    return 2.0 * features @ weights / math.sqrt(features.shape[1])


# --------------------------------------------------------------------------------------------------
# LogME
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_samples", "n_features", "n_classes", "separation"),
    [
        (60, 150, 3, 0.8),  # N < D, labels fit exactly: the evidence peaks as alpha / beta -> 0
        (60, 150, 3, 0.1),  # N < D, interior maximum
        (400, 40, 4, 0.5),  # N > D
        (400, 40, 4, 0.0),  # N > D, pure noise: flat evidence, slow plain iteration
        (2000, 64, 10, 0.3),  # N >> D
    ],
)
def test_logme_matches_float64_reference(n_samples, n_features, n_classes, separation):
    features, labels = clustered(n_samples, n_features, n_classes, separation)
    expected = reference_logme(features, labels)
    assert logme(features, labels) == pytest.approx(expected, rel=1e-6)


def test_logme_float32_gram_path_agrees_with_float64(monkeypatch):
    features, labels = clustered(3000, 96, 5, 0.3, seed=3)
    features = np.maximum(features + 0.5, 0.0).astype(np.float32)  # ReLU-like, with an offset
    exact = logme(features.astype(np.float64), labels)
    monkeypatch.setattr(linear_evidence, "_FLOAT32_GRAM_MIN_FLOPS", 0)  # force float32 block products
    assert logme(features, labels) == pytest.approx(exact, rel=1e-5)


def test_logme_of_all_zero_features_is_the_noise_only_evidence():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    features = np.zeros((labels.size, 4))
    n = labels.size
    counts = np.bincount(labels)
    # Best model is y ~ N(0, I / beta) with beta = n / n_c.
    per_class = 0.5 * np.log(n / counts) - 0.5 - 0.5 * np.log(2 * np.pi)
    assert logme(features, labels) == pytest.approx(per_class.mean(), rel=1e-9)


def _with_rows(features, labels, extra_features, extra_labels):
    return np.vstack([features, extra_features]), np.concatenate([labels, extra_labels])


def _degenerate_cases(seed):
    """30 x 80 random features, 3 classes (N < D), and variants with rank-deficient rows."""
    rng = np.random.default_rng(seed)
    features, labels = rng.standard_normal((30, 80)), np.arange(30) % 3
    return {
        "one duplicate": _with_rows(features, labels, features[:1], labels[:1]),
        "five duplicates": _with_rows(features, labels, features[:5], labels[:5]),
        "every row twice": _with_rows(features, labels, features, labels),
        "duplicate with another label": _with_rows(features, labels, features[:1], (labels[:1] + 1) % 3),
        "near-duplicate": _with_rows(features, labels, features[:1] + 1e-10 * rng.standard_normal((1, 80)), labels[:1]),
    }, (features, labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_ignores_exact_duplicate_rows_when_n_is_below_d(seed):
    # The evidence of a class fitted exactly on rank-deficient rows has no upper bound; before the
    # fix these scored -0.37, -0.26 and -0.60 against -0.87 without the duplicate.
    cases, (features, labels) = _degenerate_cases(seed)
    base = logme(features, labels)
    assert reference_logme(features, labels) == pytest.approx(base, rel=1e-6)
    for name in ("one duplicate", "five duplicates", "every row twice"):
        assert logme(*cases[name]) == pytest.approx(base, rel=1e-9), name
    # One more distinct sample moves the score about as little.
    rng = np.random.default_rng(100 + seed)
    assert logme(*_with_rows(features, labels, rng.standard_normal((1, 80)), labels[:1])) == pytest.approx(base, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_of_degenerate_features_does_not_depend_on_the_search_bracket(monkeypatch, seed):
    cases, _ = _degenerate_cases(seed)
    for name, (features, labels) in cases.items():
        values = []
        for bracket in (1e8, 1e15, 1e25):
            monkeypatch.setattr(linear_evidence, "_BRACKET", bracket)
            values.append(logme(features, labels))
        assert all(np.isfinite(values)), name
        assert values == pytest.approx([values[1]] * 3, rel=1e-9), name


def test_logme_of_near_duplicates_and_conflicting_duplicates_stays_near_the_distinct_rows():
    cases, (features, labels) = _degenerate_cases(1)
    base = logme(features, labels)
    assert logme(*cases["near-duplicate"]) == pytest.approx(base, abs=0.03)
    assert logme(*cases["duplicate with another label"]) == pytest.approx(base, abs=0.03)


def test_logme_with_more_features_than_samples_and_a_repeated_row_matches_the_reference_on_distinct_rows():
    features, labels = clustered(60, 150, 3, 0.8)
    doubled = _with_rows(features, labels, features[:7], labels[:7])
    assert logme(*doubled) == pytest.approx(reference_logme(features, labels), rel=1e-6)


def test_logme_is_undefined_when_the_labels_are_a_linear_function_of_the_features():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 3
    # n > d and three columns are a mix of the one-hot labels: the residual is 0 and the evidence +inf.
    features = np.hstack([np.eye(3)[labels] @ rng.standard_normal((3, 3)), rng.standard_normal((200, 20))])
    with pytest.raises(ScoreUndefined, match=r"exact linear function of them \(200 distinct samples, rank 23\)"):
        logme(features, labels)
    results = compute_scores(features, labels, names=["logme", "hscore"])
    assert isinstance(results["logme"], ScoreUndefined)
    assert results["hscore"] == hscore(features, labels)
    # Labels fitted to 1e-3 are not exact: a finite, high score.
    noisy = features.copy()
    noisy[:, :3] += 1e-3 * rng.standard_normal((200, 3))
    assert logme(noisy, labels) > 1.0


@pytest.mark.parametrize(("n_samples", "n_features", "dtype"), [(300, 40, np.float64), (500, 120, np.float32), (80, 200, np.float64)])
def test_logme_of_full_rank_features_is_the_plain_fixed_point(n_samples, n_features, dtype):
    # Ordinary features take none of the degenerate paths: the score is the paper's fixed point.
    features, labels = clustered(n_samples, n_features, 4, 0.4, seed=7)
    features = features.astype(dtype)
    assert logme(features, labels) == pytest.approx(reference_logme(features, labels), rel=1e-6)


def test_logme_does_not_depend_on_label_names():
    features, labels = clustered(120, 10, 3, 1.0)
    names = np.array(["cat", "dog", "emu"])[labels]
    assert logme(features, names) == pytest.approx(logme(features, labels), rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Every score: informative features rank above less informative ones
# --------------------------------------------------------------------------------------------------

SCORE_CASES = [pytest.param(name, True, id=name) for name in SCORES] + [pytest.param("nce", False, id="nce-kmeans")]


def evaluate(name: str, with_logits: bool, features: np.ndarray, labels: np.ndarray) -> float:
    if with_logits and "source_logits" in inspect.signature(SCORES[name]).parameters:
        return SCORES[name](features, labels, source_logits=source_logits_for(features))
    return SCORES[name](features, labels)


@pytest.mark.parametrize(("name", "with_logits"), SCORE_CASES)
def test_score_is_monotonic_in_class_information(name, with_logits):
    strong = evaluate(name, with_logits, *clustered(300, 16, 3, separation=2.0))
    partial = evaluate(name, with_logits, *clustered(300, 16, 3, separation=0.5))
    noise = evaluate(name, with_logits, *clustered(300, 16, 3, separation=0.0))
    assert strong > partial > noise, (strong, partial, noise)


# --------------------------------------------------------------------------------------------------
# LEEP, NLEEP, NCE, H-score: closed forms and conventions
# --------------------------------------------------------------------------------------------------


def test_leep_closed_form_on_three_samples():
    # theta = softmax(log p) = p. Joint P(y, z) * 3: y=0 -> (0.8 + 0.6, 0.2 + 0.4), y=1 -> (0.1, 0.9).
    # P(y | z): P(0 | z0) = 14/15, P(0 | z1) = 2/5, P(1 | z0) = 1/15, P(1 | z1) = 3/5.
    # Expected predictions: 0.8*14/15 + 0.2*2/5 = 62/75, 0.6*14/15 + 0.4*2/5 = 18/25, 0.1/15 + 0.9*3/5 = 41/75.
    probabilities = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 0, 1])
    expected = (math.log(62 / 75) + math.log(18 / 25) + math.log(41 / 75)) / 3
    features = np.zeros((3, 1))
    assert leep(features, labels, source_logits=np.log(probabilities)) == pytest.approx(expected, rel=1e-12)


def test_leep_matches_the_definition_written_as_loops():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 40)
    logits = rng.standard_normal((40, 4)) * 2
    theta = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    joint = np.zeros((3, 4))
    for i in range(40):
        joint[labels[i]] += theta[i] / 40
    conditional = joint / joint.sum(axis=0)
    expected = np.mean([np.log(sum(conditional[labels[i], z] * theta[i, z] for z in range(4))) for i in range(40)])
    assert leep(np.zeros((40, 2)), labels, source_logits=logits) == pytest.approx(expected, rel=1e-12)


def test_leep_without_source_logits_is_undefined_not_zero():
    features, labels = clustered(30, 4, 3, 1.0)
    with pytest.raises(ScoreUndefined, match="source_logits") as caught:
        leep(features, labels)
    assert "nleep" in caught.value.reason


def test_nce_is_zero_when_source_labels_determine_the_target():
    features, labels = clustered(60, 4, 3, 0.0)
    # Each target class splits into two source classes: Z still determines Y.
    source = labels * 2 + np.arange(labels.size) % 2
    logits = 5.0 * np.eye(6)[source]
    assert nce(features, labels, source_logits=logits) == 0.0


def test_nce_with_uninformative_source_is_minus_label_entropy():
    labels = np.array([0, 0, 0, 1, 1, 2])
    features = np.zeros((6, 2))
    logits = np.zeros((6, 4))  # argmax is source class 0 for everyone
    probabilities = np.array([3, 2, 1]) / 6
    assert nce(features, labels, source_logits=logits) == pytest.approx(np.sum(probabilities * np.log(probabilities)))


def test_hscore_closed_form_in_one_dimension():
    # Centred features (-3, -1, 1, 3): variance 20/3. Class means (-2, 2): between-class variance 16/3.
    features = np.array([[0.0], [2.0], [4.0], [6.0]])
    labels = np.array([0, 0, 1, 1])
    assert hscore(features, labels) == pytest.approx(16 / 20, rel=1e-12)


def test_hscores_match_the_papers_formulas_written_with_dense_matrices():
    from sklearn.covariance import LedoitWolf

    features, labels = clustered(80, 6, 3, 0.8)
    class_means = np.stack([features[labels == c].mean(axis=0) for c in range(3)])
    conditional_means = class_means[labels]  # E[f | y] for every sample
    cov_f = np.cov(features, rowvar=False)
    cov_g = np.cov(conditional_means, rowvar=False)
    assert hscore(features, labels) == pytest.approx(np.trace(np.linalg.pinv(cov_f) @ cov_g), rel=1e-9)
    shrunk = LedoitWolf().fit(features)
    expected = np.trace(np.linalg.pinv(shrunk.covariance_) @ ((1 - shrunk.shrinkage_) * cov_g))
    assert hscore_shrinkage(features, labels) == pytest.approx(expected, rel=1e-9)


def test_hscore_shrinkage_is_hscore_with_shrinkage():
    features, labels = clustered(100, 8, 3, 1.0)
    assert hscore_shrinkage(features, labels) == hscore(features, labels, shrinkage=True)
    assert hscore_shrinkage(features, labels) != hscore(features, labels)


def test_hscore_shrinkage_ranks_correctly_with_more_features_than_samples():
    informative = hscore_shrinkage(*clustered(40, 200, 4, separation=1.0))
    noise = hscore_shrinkage(*clustered(40, 200, 4, separation=0.0))
    assert np.isfinite(informative) and informative > noise


def reference_sfda(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA following the authors' code step by step: Fisher directions from eigh(S_b, S_w)."""
    import scipy.linalg

    n, d = features.shape
    classes = np.unique(labels)
    priors = np.array([np.mean(labels == c) for c in classes])

    def class_means(x):
        return np.stack([x[labels == c].mean(axis=0) for c in classes])

    def shrink(cov, amount):
        return (1 - amount) * cov + amount * np.trace(cov) / d * np.eye(d)

    def fisher_probabilities(x, amount):
        means = class_means(x)
        within = sum(p * np.cov(x[labels == c].T, bias=True) for p, c in zip(priors, classes))
        between = shrink(np.cov(x.T, bias=True), amount) - shrink(within, amount)
        values, vectors = scipy.linalg.eigh(between, shrink(within, amount))
        vectors = vectors[:, np.argsort(values)[::-1]]
        coef = means @ vectors @ vectors.T
        logits = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    within = sum(p * np.cov(features[labels == c].T, bias=True) for p, c in zip(priors, classes))
    amount = max(np.exp(-5 * np.linalg.eigvalsh(within).max()), 1e-10)
    probabilities = fisher_probabilities(features, amount)
    probabilities = np.exp(probabilities) / np.exp(probabilities).sum(axis=1, keepdims=True)
    means = class_means(features)
    mixed = features.copy()
    for index, c in enumerate(classes):
        rows = labels == c
        confidence = probabilities[rows, index][:, None]
        others = (means.sum(axis=0) - means[index]) / (len(classes) - 1)
        mixed[rows] = confidence * features[rows] + (1 - confidence) * others
    probabilities = fisher_probabilities(mixed, amount)
    return float(np.mean(probabilities[np.arange(n), np.searchsorted(classes, labels)]))


@pytest.mark.parametrize("scale", [1.0, 0.1], ids=["weak-shrinkage", "strong-shrinkage"])
def test_sfda_matches_the_authors_steps(scale):
    features, labels = clustered(150, 6, 3, 0.7, seed=4)
    features = features * scale  # small features make the adaptive shrinkage matter
    assert sfda(features, labels) == pytest.approx(reference_sfda(features, labels), rel=1e-7)


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", [nleep, nce], ids=["nleep", "nce-kmeans"])
def test_clustering_scores_are_deterministic_given_the_seed(score):
    features, labels = clustered(200, 12, 4, 0.7)
    first = score(features, labels, random_state=7)
    assert score(features, labels, random_state=7) == first
    assert score(features, labels, random_state=8) != first


# --------------------------------------------------------------------------------------------------
# Input errors
# --------------------------------------------------------------------------------------------------


def call_with_logits(name: str, features: object, labels: object) -> float:
    if score_needs_source_logits(name):
        return SCORES[name](features, labels, source_logits=np.zeros((len(labels), 3)))
    return SCORES[name](features, labels)


@pytest.mark.parametrize("name", list(SCORES))
def test_single_class_is_rejected(name):
    with pytest.raises(DataError, match=r"at least 2 distinct classes, but got 1"):
        call_with_logits(name, np.ones((10, 3)), np.zeros(10, dtype=int))


@pytest.mark.parametrize("name", list(SCORES))
def test_too_few_samples_is_rejected(name):
    with pytest.raises(DataError, match=r"got 3 samples for 3 classes; the minimum is 4"):
        call_with_logits(name, np.random.default_rng(0).standard_normal((3, 2)), np.array([0, 1, 2]))


@pytest.mark.parametrize("name", list(SCORES))
def test_mismatched_lengths_are_rejected(name):
    with pytest.raises(DataError, match=r"features have 10 rows and labels have 9 entries"):
        SCORES[name](np.ones((10, 3)), np.arange(9) % 2)


@pytest.mark.parametrize("name", list(SCORES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_rejected(name, bad):
    features, labels = clustered(20, 3, 2, 1.0)
    features[5, 1] = bad
    with pytest.raises(DataError, match=r"1 of 20 rows contain NaN or inf \(first bad row: 5\)"):
        call_with_logits(name, features, labels)


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.ones(10), np.arange(10) % 2, r"2-D array .* got an array with shape \(10,\)"),
        (np.ones((10, 2)), np.ones((10, 2)), r"labels must be a 1-D array"),
        (np.full((10, 2), "a"), np.arange(10) % 2, r"must be real numbers"),
        (np.ones((10, 2)), np.array([0.0, 1.0] * 4 + [np.nan, 1.0]), r"labels must not contain NaN"),
    ],
)
def test_malformed_arrays_are_rejected(features, labels, message):
    with pytest.raises(DataError, match=message):
        logme(features, labels)


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_source_logits_with_wrong_rows_are_rejected(name):
    features, labels = clustered(20, 3, 2, 1.0)
    with pytest.raises(DataError, match=r"got 19 rows for 20 samples"):
        SCORES[name](features, labels, source_logits=np.zeros((19, 4)))


def test_input_errors_are_headstart_value_errors():
    with pytest.raises(ValueError) as caught:
        logme(np.ones((10, 3)), np.zeros(10))
    assert isinstance(caught.value, HeadstartError)


# --------------------------------------------------------------------------------------------------
# Registry and compute_scores
# --------------------------------------------------------------------------------------------------


def test_only_leep_needs_source_logits():
    assert [name for name in SCORES if score_needs_source_logits(name)] == ["leep"]
    with pytest.raises(UnknownScoreError, match=r"Did you mean: logme"):
        score_needs_source_logits("logmee")


def test_compute_scores_reports_undefined_leep_beside_the_other_scores():
    features, labels = clustered(120, 8, 3, 1.0)
    results = compute_scores(features, labels)
    assert list(results) == list(SCORES)
    assert isinstance(results["leep"], ScoreUndefined)
    for name in SCORES:
        if name != "leep":
            assert isinstance(results[name], float) and np.isfinite(results[name]), name
    assert results["logme"] == logme(features, labels)


def test_compute_scores_passes_source_logits_to_scores_that_use_them():
    features, labels = clustered(120, 8, 3, 1.0)
    logits = source_logits_for(features)
    results = compute_scores(features, labels, source_logits=logits, names=["leep", "nce"])
    assert results == {"leep": leep(features, labels, logits), "nce": nce(features, labels, logits)}


def test_one_failing_score_does_not_stop_the_others(monkeypatch):
    def broken(features, labels):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setitem(SCORES, "hscore", broken)
    features, labels = clustered(60, 4, 3, 1.0)
    results = compute_scores(features, labels, names=["hscore", "logme"])
    assert isinstance(results["hscore"], ScoreUndefined)
    assert "LinAlgError: SVD did not converge" in results["hscore"].reason
    assert isinstance(results["hscore"].__cause__, np.linalg.LinAlgError)
    assert results["logme"] == logme(features, labels)


@pytest.mark.parametrize(
    "error", [TypeError("unsupported operand"), AttributeError("no attribute 'T'"), KeyError("x"), AssertionError(), ValueError("operands could not be broadcast")]
)
def test_a_programming_error_inside_a_score_propagates(monkeypatch, error):
    def buggy(features, labels):
        raise error

    monkeypatch.setitem(SCORES, "hscore", buggy)
    features, labels = clustered(60, 4, 3, 1.0)
    with pytest.raises(type(error)):
        compute_scores(features, labels, names=["hscore", "logme"])


@pytest.mark.parametrize("error", [FloatingPointError("overflow"), ZeroDivisionError("float division"), MemoryError()])
def test_numerical_failures_are_kept_as_undefined(monkeypatch, error):
    def failing(features, labels):
        raise error

    monkeypatch.setitem(SCORES, "sfda", failing)
    features, labels = clustered(60, 4, 3, 1.0)
    results = compute_scores(features, labels, names=["sfda", "hscore"])
    assert isinstance(results["sfda"], ScoreUndefined)
    assert results["sfda"].reason.startswith(f"sfda failed: {type(error).__name__}")
    assert results["sfda"].__cause__ is error
    assert results["hscore"] == hscore(features, labels)


@pytest.mark.parametrize("name", ["logme", "nleep", "hscore", "hscore_shrinkage", "sfda"])
def test_features_too_large_for_float64_are_undefined_with_a_reason(name):
    features, labels = clustered(60, 5, 3, 1.0)
    with pytest.raises(ScoreUndefined, match=rf"{name} overflows float64 .* Rescale the features"):
        SCORES[name](features * 1e160, labels)
    # Large but safe features still score (Ledoit-Wolf sums fourth powers).
    assert math.isfinite(SCORES[name](features * (1e60 if name == "hscore_shrinkage" else 1e100), labels))


def test_nleep_turns_an_ill_defined_mixture_into_a_reason(monkeypatch):
    from sklearn.mixture import GaussianMixture

    def ill_defined(self, X, y=None):
        raise ValueError("Fitting the mixture model failed because some components have ill-defined empirical covariance")

    monkeypatch.setattr(GaussianMixture, "fit", ill_defined)
    features, labels = clustered(60, 4, 3, 1.0)
    with pytest.raises(ScoreUndefined, match=r"nleep: the Gaussian mixture cannot be fitted"):
        nleep(features, labels)

    def buggy(self, X, y=None):
        raise ValueError("Expected 2D array, got 1D array instead")

    monkeypatch.setattr(GaussianMixture, "fit", buggy)
    with pytest.raises(ValueError, match="Expected 2D array"):
        nleep(features, labels)


def test_compute_scores_rejects_unknown_names_and_bad_inputs_up_front():
    features, labels = clustered(60, 4, 3, 1.0)
    with pytest.raises(UnknownScoreError, match=r"'hscor'.*Did you mean: hscore"):
        compute_scores(features, labels, names=["logme", "hscor"])
    with pytest.raises(DataError, match=r"at least 2 distinct classes"):
        compute_scores(features, np.zeros(60))


# ----- ridge: closed-form leave-one-out ridge accuracy ---------------------------------------------


def _brute_force_loo(X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Refit ridge (with an unpenalised intercept) without each sample in turn; True where it predicts it right."""
    classes = np.unique(y)
    correct = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        mean = X[keep].mean(axis=0)
        Y = (y[keep, None] == classes[None, :]).astype(float)
        W = np.linalg.solve((X[keep] - mean).T @ (X[keep] - mean) + lam * np.eye(X.shape[1]), (X[keep] - mean).T @ (Y - Y.mean(axis=0)))
        correct.append(classes[np.argmax((X[i] - mean) @ W + Y.mean(axis=0))] == y[i])
    return np.array(correct)


@pytest.mark.parametrize(("n_samples", "n_features"), [(40, 10), (30, 80)])
def test_ridge_leave_one_out_equals_refitting_without_each_sample(n_samples, n_features):
    from headstart.select.scores import ridge_loo

    rng = np.random.default_rng(n_samples)
    y = rng.integers(0, 3, n_samples)
    X = rng.normal(size=(n_samples, n_features))
    X[:, 0] += 1.5 * y
    result = ridge_loo(X, y)
    centered = X - X.mean(axis=0)
    gram = centered @ centered.T if n_samples <= n_features else centered.T @ centered
    eigenvalues = np.linalg.eigvalsh(gram)
    eigenvalues = eigenvalues[eigenvalues > eigenvalues.max() * max(X.shape) * np.finfo(float).eps]
    expected = _brute_force_loo(X, y, result.alpha * eigenvalues.mean())
    assert np.array_equal(result.correct, expected)
    assert result.accuracy == pytest.approx(expected.mean())


def test_ridge_does_not_depend_on_the_features_scale_or_label_names():
    from headstart.select.scores import ridge

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 80)
    X = rng.normal(size=(80, 20)) + y[:, None] * 0.4
    assert ridge(X, y) == pytest.approx(ridge(1000.0 * X + 7.0, np.array(["a", "b", "c", "d"])[y]))


def test_ridge_prefers_features_that_carry_the_labels():
    from headstart.select.scores import ridge

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 120)
    noise = rng.normal(size=(120, 30))
    informative = noise.copy()
    informative[:, :3] += 2.0 * np.eye(3)[y]
    assert ridge(informative, y) > ridge(noise, y) + 0.3


def test_ridge_of_constant_features_is_undefined():
    from headstart.select.scores import ScoreUndefined, ridge

    with pytest.raises(ScoreUndefined, match="constant"):
        ridge(np.ones((20, 5)), np.arange(20) % 2)
