"""Tests for the heads: the scikit-learn contract, what each head learns, errors and state round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs, make_classification, make_moons, make_multilabel_classification
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from headstart.errors import DataError, HeadstartError, NotFittedError
from headstart.heads import KNNProbe, LinearProbe, MLPHead, head_from_state, make_head
from headstart.heads.linear import DEFAULT_CS


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Use one torch thread: the problems are tiny, and the CI machine's 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_mlp(**kwargs) -> MLPHead:
    return MLPHead(hidden=(32,), max_epochs=50, device="cpu", **kwargs)


def all_heads() -> list:
    return [LinearProbe(device="cpu"), KNNProbe(), small_mlp()]


@parametrize_with_checks(all_heads())
def test_sklearn_contract(estimator, check):
    check(estimator)


def easy_problem(n_samples=300, n_features=20, n_classes=3, seed=0):
    return make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=5,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=4.0,
        random_state=seed,
    )


# LinearProbe


def test_linear_recovers_separable_problem_and_stops_early():
    X, y = make_blobs(n_samples=300, n_features=20, centers=3, cluster_std=1.0, random_state=0)
    probe = LinearProbe(device="cpu").fit(X[:200], y[:200])
    assert probe.score(X[200:], y[200:]) == 1.0
    # Validation accuracy is perfect early on the grid; once it has been perfect for `patience` more
    # points (a larger C may still lower the validation loss), the search stops, far before the end.
    scores = [score for _, score in probe.val_curve_]
    assert len(scores) < len(DEFAULT_CS)
    assert scores[-probe.patience - 1 :] == [1.0] * (probe.patience + 1)
    assert 1.0 not in scores[-probe.patience - 2 : -probe.patience - 1]  # it stopped at the first chance
    perfect = [i for i, score in enumerate(scores) if score == 1.0]
    best = min(perfect, key=lambda i: probe.val_loss_curve_[i])
    assert probe.C_ == probe.val_curve_[best][0]


def test_linear_chooses_interior_C_when_regularization_is_needed():
    # Few examples, many noise features: a large C overfits, a tiny C underfits.
    X, y = make_classification(
        n_samples=200, n_features=300, n_informative=8, n_redundant=0, n_classes=3, random_state=1
    )
    probe = LinearProbe(device="cpu").fit(X, y)
    Cs = [C for C, _ in probe.val_curve_]
    scores = [score for _, score in probe.val_curve_]
    assert DEFAULT_CS[0] < probe.C_ < DEFAULT_CS[-1]
    # The best accuracy wins; among equal accuracies, the lowest validation loss.
    tied = [i for i, score in enumerate(scores) if score == max(scores)]
    assert probe.C_ == Cs[min(tied, key=lambda i: probe.val_loss_curve_[i])]
    # The search stopped after `patience` points without a new best, not at the grid's end.
    assert len(Cs) < len(DEFAULT_CS)
    assert Cs[-probe.patience - 1] == probe.C_


def test_linear_without_patience_scans_the_whole_grid():
    X, y = make_classification(n_samples=120, n_features=30, flip_y=0.2, random_state=2)
    probe = LinearProbe(Cs=np.logspace(-3, 3, 9), patience=None, device="cpu").fit(X, y)
    assert [C for C, _ in probe.val_curve_] == pytest.approx(np.logspace(-3, 3, 9).tolist())


@pytest.mark.parametrize("n_classes", [2, 4])
def test_linear_matches_sklearn_logistic_regression_at_the_chosen_C(n_classes):
    X, y = make_classification(
        n_samples=300, n_features=15, n_informative=6, n_classes=n_classes, random_state=3
    )
    probe = LinearProbe(device="cpu", tol=1e-8).fit(X, y)
    reference = LogisticRegression(C=probe.C_, tol=1e-8, max_iter=5000)
    standardized = (X - probe.mean_) / probe.scale_
    reference.fit(standardized, y)
    np.testing.assert_allclose(probe.coef_, reference.coef_, atol=1e-3)
    np.testing.assert_allclose(probe.intercept_, reference.intercept_, atol=1e-3)
    np.testing.assert_allclose(probe.predict_proba(X), reference.predict_proba(standardized), atol=1e-4)


def test_linear_fixed_C_skips_the_search():
    X, y = easy_problem()
    probe = LinearProbe(Cs=0.5, val_fraction=0, device="cpu").fit(X, y)
    assert probe.C_ == 0.5
    assert probe.val_curve_ == []
    with pytest.raises(ValueError, match="val_fraction=0 leaves no validation data"):
        LinearProbe(val_fraction=0, device="cpu").fit(X, y)


def test_linear_class_with_one_example_names_class_and_fix():
    X, y = easy_problem()
    y = np.array(["cat", "dog", "cow"], dtype=object)[y]
    y[0] = "zebra"
    with pytest.raises(DataError, match=r"'zebra' \(1 example\).*val_fraction=0 with a fixed C") as info:
        LinearProbe(device="cpu").fit(X, y)
    assert isinstance(info.value, HeadstartError)
    # The suggested fix works.
    LinearProbe(Cs=1.0, val_fraction=0, device="cpu").fit(X, y)


def test_linear_balanced_class_weight_raises_minority_recall():
    X, y = make_classification(
        n_samples=600, n_features=10, weights=[0.93, 0.07], class_sep=0.5, flip_y=0, random_state=4
    )
    plain = LinearProbe(device="cpu").fit(X, y)
    balanced = LinearProbe(class_weight="balanced", device="cpu").fit(X, y)
    minority = y == 1
    recall_plain = np.mean(plain.predict(X[minority]) == 1)
    recall_balanced = np.mean(balanced.predict(X[minority]) == 1)
    assert recall_balanced > recall_plain + 0.2


def test_linear_multilabel_one_vs_rest():
    X, Y = make_multilabel_classification(n_samples=300, n_features=20, n_classes=4, random_state=5)
    probe = LinearProbe(device="cpu").fit(X[:240], Y[:240])
    assert probe.multilabel_
    assert probe.predict(X[240:]).shape == (60, 4)
    proba = probe.predict_proba(X[240:])
    assert proba.shape == (60, 4)
    assert not np.allclose(proba.sum(axis=1), 1.0)  # independent sigmoids, not a softmax
    np.testing.assert_array_equal(probe.predict(X[240:]), (proba > 0.5).astype(int))
    assert probe.val_curve_ and 0.6 < max(score for _, score in probe.val_curve_) <= 1.0
    predicted = probe.predict(X[240:])
    micro_f1 = 2 * np.sum(predicted * Y[240:]) / (np.sum(predicted) + np.sum(Y[240:]))
    assert micro_f1 > 0.6


def test_linear_rejects_bad_Cs():
    X, y = easy_problem()
    with pytest.raises(ValueError, match="Cs must be a positive number"):
        LinearProbe(Cs=[1.0, -2.0], device="cpu").fit(X, y)


# KNNProbe


def test_knn_chooses_larger_k_on_noisy_labels():
    X, y = make_blobs(n_samples=400, centers=[[0, 0], [2, 0]], cluster_std=1.0, random_state=6)
    probe = KNNProbe(metric="l2").fit(X, y)
    ks = [k for k, _ in probe.cv_curve_]
    scores = [score for _, score in probe.cv_curve_]
    assert ks == [1, 3, 5, 10, 20, 50]
    assert probe.n_neighbors_ == ks[int(np.argmax(scores))]
    assert probe.n_neighbors_ >= 10
    assert scores[ks.index(probe.n_neighbors_)] > scores[0] + 0.02


def test_knn_caps_k_by_the_training_fold_size():
    X, y = easy_problem(n_samples=12, n_features=5, n_classes=2)
    probe = KNNProbe(cv=3).fit(X, y)
    # Each training fold holds 8 examples, so 10, 20 and 50 are capped to 8.
    assert [k for k, _ in probe.cv_curve_] == [1, 3, 5, 8]


def test_knn_cosine_ignores_scale_and_weights_exact_duplicates():
    X, y = easy_problem()
    probe = KNNProbe(n_neighbors=10).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(X[:20] * 7.5), probe.predict_proba(X[:20]), atol=1e-12)
    # A training point's own vote (distance 0) dominates its distance-weighted tally.
    proba = probe.predict_proba(X[:20])
    assert np.all(proba[np.arange(20), np.searchsorted(probe.classes_, y[:20])] > 0.99)
    l2 = KNNProbe(n_neighbors=10, metric="l2").fit(X, y)
    assert not np.allclose(l2.predict_proba(X[:20] * 7.5), l2.predict_proba(X[:20]))


def test_knn_errors():
    X, y = easy_problem()
    with pytest.raises(ValueError, match="metric must be one of"):
        KNNProbe(metric="manhattan").fit(X, y)
    with pytest.raises(ValueError, match="only 300 training examples"):
        KNNProbe(n_neighbors=301).fit(X, y)
    y = y.copy()
    y[0] = 7
    with pytest.raises(DataError, match=r"7 \(1 example\).*n_neighbors"):
        KNNProbe().fit(X, y)
    KNNProbe(n_neighbors=3).fit(X, y)


# MLPHead


def test_mlp_is_deterministic_with_a_seed_and_leaves_torch_rng_alone():
    X, y = easy_problem()
    rng_before = torch.random.get_rng_state()
    first = small_mlp(random_state=7).fit(X, y)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    second = small_mlp(random_state=7).fit(X, y)
    other = small_mlp(random_state=8).fit(X, y)
    for a, b in zip(first.weights_, second.weights_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    assert not np.array_equal(first.weights_[0], other.weights_[0])


def test_mlp_learns_a_nonlinear_problem_and_stops_early():
    X, y = make_moons(n_samples=400, noise=0.1, random_state=9)
    mlp = MLPHead(hidden=(64,), lr=1e-2, batch_size=32, max_epochs=300, device="cpu").fit(X[:300], y[:300])
    linear = LinearProbe(device="cpu").fit(X[:300], y[:300])
    assert mlp.score(X[300:], y[300:]) > 0.95
    assert linear.score(X[300:], y[300:]) < 0.92
    assert mlp.n_epochs_ < 300
    assert mlp.n_epochs_ - mlp.best_epoch_ == 10
    assert len(mlp.val_loss_curve_) == mlp.n_epochs_


def test_mlp_multilabel():
    X, Y = make_multilabel_classification(n_samples=300, n_features=20, n_classes=4, random_state=5)
    mlp = small_mlp(lr=1e-2).fit(X[:240], Y[:240])
    assert mlp.multilabel_
    predicted = mlp.predict(X[240:])
    assert predicted.shape == (60, 4)
    micro_f1 = 2 * np.sum(predicted * Y[240:]) / (np.sum(predicted) + np.sum(Y[240:]))
    assert micro_f1 > 0.6


def test_mlp_without_validation_trains_all_epochs():
    X, y = easy_problem()
    mlp = MLPHead(hidden=(8,), max_epochs=7, val_fraction=0, device="cpu").fit(X, y)
    assert mlp.n_epochs_ == 7
    assert mlp.best_epoch_ == 7
    assert mlp.val_loss_curve_ == []


# Shared behaviour


@pytest.mark.parametrize("head", all_heads(), ids=lambda head: type(head).__name__)
def test_feature_count_mismatch_names_both_counts(head):
    X, y = easy_problem(n_features=12)
    head.fit(X, y)
    name = type(head).__name__
    with pytest.raises(DataError, match=f"X has 5 features, but {name} is expecting 12 features.*fitted on 12"):
        head.predict(X[:, :5])


@pytest.mark.parametrize("head", all_heads(), ids=lambda head: type(head).__name__)
def test_non_finite_features_are_rejected_with_their_position(head):
    X, y = easy_problem()
    bad = X.copy()
    bad[4, 2] = np.nan
    with pytest.raises(DataError, match="NaN or infinity.*row 4, column 2"):
        head.fit(bad, y)
    head.fit(X, y)
    bad[4, 2] = np.inf
    with pytest.raises(DataError, match="NaN or infinity.*row 4, column 2"):
        head.predict_proba(bad)


@pytest.mark.parametrize("head", all_heads(), ids=lambda head: type(head).__name__)
def test_predict_before_fit_raises_headstart_not_fitted(head):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        head.predict(np.zeros((2, 3)))


@pytest.mark.parametrize(
    "head, multilabel",
    [(LinearProbe(device="cpu"), False), (LinearProbe(device="cpu"), True), (KNNProbe(), False),
     (small_mlp(), False), (small_mlp(), True)],
    ids=["linear", "linear-multilabel", "knn", "mlp", "mlp-multilabel"],
)
def test_state_round_trip_gives_identical_predictions(head, multilabel, tmp_path):
    from safetensors.numpy import load_file, save_file

    if multilabel:
        X, y = make_multilabel_classification(n_samples=200, n_features=10, n_classes=3, random_state=0)
    else:
        X, y = easy_problem()
        y = np.array(["bear", "bird", "cat"])[y]
    head.fit(X, y)
    arrays, meta = head.to_state()
    # The state survives safetensors and JSON, as a saved bundle would store it.
    save_file(arrays, str(tmp_path / "head.safetensors"))
    (tmp_path / "head.json").write_text(json.dumps(meta))
    loaded_arrays = load_file(str(tmp_path / "head.safetensors"))
    loaded_meta = json.loads((tmp_path / "head.json").read_text())
    rebuilt = head_from_state(loaded_arrays, loaded_meta)

    assert type(rebuilt) is type(head)
    assert rebuilt.get_params() == head.get_params()
    np.testing.assert_array_equal(rebuilt.classes_, head.classes_)
    np.testing.assert_array_equal(rebuilt.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(rebuilt.predict(X), head.predict(X))
    assert meta["class"] == type(head).__name__


def test_state_keeps_tuple_and_dict_parameters():
    X, y = easy_problem()
    head = LinearProbe(Cs=(0.1, 1.0), class_weight={0: 2.0, 1: 1.0, 2: 1.0}, device="cpu").fit(X, y)
    arrays, meta = head.to_state()
    rebuilt = head_from_state(arrays, json.loads(json.dumps(meta)))
    assert rebuilt.get_params() == head.get_params()
    assert rebuilt.val_curve_ == head.val_curve_


def test_head_from_state_rejects_unknown_class():
    arrays, meta = KNNProbe(n_neighbors=1).fit(*easy_problem()).to_state()
    with pytest.raises(DataError, match="'RandomForest'.*KNNProbe"):
        head_from_state(arrays, {**meta, "class": "RandomForest"})
    with pytest.raises(NotFittedError):
        KNNProbe().to_state()


def test_make_head():
    head = make_head("knn", n_neighbors=3, metric="l2")
    assert isinstance(head, KNNProbe)
    assert head.get_params()["n_neighbors"] == 3
    assert isinstance(make_head("linear"), LinearProbe)
    assert isinstance(make_head("mlp", hidden=(16,)), MLPHead)
    expected = r"Unknown head 'lineer'; valid names are \['knn', 'linear', 'mlp'\].*Did you mean: linear"
    with pytest.raises(ValueError, match=expected):
        make_head("lineer")
