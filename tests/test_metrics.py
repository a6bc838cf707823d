"""Tests for headstart.evaluate: values checked by hand, unseen labels, multi-label, split-labelled output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss

from headstart.evaluate import EvalResult, evaluate, expected_calibration_error


def test_small_example_by_hand():
    y_true = np.array(["cat", "cat", "dog", "dog"])
    proba = np.array([[0.95, 0.05], [0.35, 0.65], [0.35, 0.65], [0.05, 0.95]])
    result = evaluate(y_true, proba, ["cat", "dog"])

    assert isinstance(result, EvalResult)
    assert result.split == "test"
    assert result.n == 4
    assert result.accuracy == 0.75
    assert result.balanced_accuracy == 0.75
    assert result.confusion_matrix == [[1, 1], [0, 2]]
    cat, dog = result.per_class
    assert cat == {"class": "cat", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert dog["precision"] == pytest.approx(2 / 3)
    assert dog["recall"] == 1.0
    assert result.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    expected_loss = -np.mean(np.log([0.95, 0.35, 0.65, 0.95]))
    assert result.log_loss == pytest.approx(expected_loss)
    # Confidences 0.95, 0.65, 0.65, 0.95 fall in two bins: {0.95, 0.95} all right, {0.65, 0.65} half right.
    assert result.ece == pytest.approx(0.5 * abs(1.0 - 0.95) + 0.5 * abs(0.5 - 0.65))


def test_expected_calibration_error_bins():
    confidence = np.array([0.95, 0.95, 0.65, 0.65])
    correct = np.array([True, False, True, True])
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    # With one bin, ECE is |accuracy - mean confidence|.
    assert expected_calibration_error(confidence, correct, n_bins=1) == pytest.approx(abs(0.75 - 0.8))
    # A confidence of exactly 1 lands in the last bin, not past it.
    assert expected_calibration_error(np.array([1.0]), np.array([True])) == 0.0


def test_perfect_predictions():
    y_true = np.array([0, 1, 2, 2])
    proba = np.eye(3)[y_true]
    result = evaluate(y_true, proba, [0, 1, 2])
    assert result.accuracy == result.balanced_accuracy == result.macro_f1 == 1.0
    assert result.log_loss == pytest.approx(0.0, abs=1e-9)
    assert result.ece == 0.0


def test_unseen_labels_warn_and_are_reported_with_zero_recall():
    y_true = np.array(["bear", "bird", "giraffe", "bear", "zebra"])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    with pytest.warns(UserWarning, match=r"never saw in training: \['giraffe', 'zebra'\]"):
        result = evaluate(y_true, proba, ["bear", "bird"])
    by_class = {row["class"]: row for row in result.per_class}
    assert list(by_class) == ["bear", "bird", "giraffe", "zebra"]
    assert by_class["giraffe"]["recall"] == 0.0
    assert by_class["giraffe"]["support"] == 1
    assert result.unseen_labels == ["giraffe", "zebra"]
    assert np.array(result.confusion_matrix).shape == (4, 4)
    assert result.accuracy == pytest.approx(3 / 5)
    # Balanced accuracy averages the recall of all four true classes: (1 + 1 + 0 + 0) / 4.
    assert result.balanced_accuracy == pytest.approx(0.5)
    # The log loss covers the three examples of known classes.
    assert result.log_loss == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.7])))


def test_class_order_of_proba_columns_is_respected():
    y_true = np.array(["dog", "cat", "dog"])
    proba_dog_first = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    result = evaluate(y_true, proba_dog_first, ["dog", "cat"])
    assert result.accuracy == 1.0
    assert result.log_loss == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.6])))


def test_binary_probability_vector_is_accepted():
    y_true = np.array([0, 1, 1])
    as_vector = evaluate(y_true, np.array([0.2, 0.9, 0.4]), [0, 1])
    as_matrix = evaluate(y_true, np.array([[0.8, 0.2], [0.1, 0.9], [0.6, 0.4]]), [0, 1])
    assert as_vector.to_dict() == as_matrix.to_dict()


def test_every_number_names_its_split():
    result = evaluate(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.1, 0.9], [0.6, 0.4]]), [0, 1], split="val")
    flat = result.to_flat()
    assert all(key.startswith("val/") for key in flat)
    assert flat["val/accuracy"] == pytest.approx(2 / 3)
    assert flat["val/class/1/recall"] == 0.5
    nested = json.loads(result.to_json())
    assert nested["split"] == "val"
    assert nested["accuracy"] == pytest.approx(2 / 3)
    assert nested == result.to_dict()


def test_multilabel():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(60, 3))
    proba = np.clip(y_true * 0.7 + rng.uniform(-0.3, 0.3, size=(60, 3)) + 0.15, 0.01, 0.99)
    predicted = (proba >= 0.5).astype(int)
    result = evaluate(y_true, proba, ["sky", "tree", "car"])

    assert result.multilabel
    assert result.balanced_accuracy is None
    assert result.accuracy == pytest.approx(np.mean(np.all(predicted == y_true, axis=1)))
    assert result.micro_f1 == pytest.approx(f1_score(y_true, predicted, average="micro"))
    assert result.macro_f1 == pytest.approx(f1_score(y_true, predicted, average="macro"))
    assert [row["class"] for row in result.per_class] == ["sky", "tree", "car"]
    assert [row["support"] for row in result.per_class] == y_true.sum(axis=0).tolist()
    assert np.array(result.confusion_matrix).shape == (3, 2, 2)
    expected_loss = np.mean([log_loss(y_true[:, j], proba[:, j]) for j in range(3)])
    assert result.log_loss == pytest.approx(expected_loss)
    confidence = np.maximum(proba, 1 - proba)
    expected_ece = np.mean(
        [expected_calibration_error(confidence[:, j], predicted[:, j] == y_true[:, j]) for j in range(3)]
    )
    assert result.ece == pytest.approx(expected_ece)
    assert "test/micro_f1" in result.to_flat()


def test_shape_errors_name_expected_and_received():
    with pytest.raises(ValueError, match=r"expected shape \(n, 3\) for 3 classes, got \(4, 2\)"):
        evaluate(np.zeros(4), np.full((4, 2), 0.5), [0, 1, 2])
    with pytest.raises(ValueError, match="y_true has 3 rows, proba has 4"):
        evaluate(np.zeros(3), np.full((4, 2), 0.5), [0, 1])
    with pytest.raises(ValueError, match="0/1 indicator"):
        evaluate(np.full((2, 2), 3), np.full((2, 2), 0.5), ["a", "b"])


def test_evaluate_a_fitted_head():
    from sklearn.datasets import make_classification

    from headstart.heads import KNNProbe

    X, y = make_classification(n_samples=200, n_features=10, n_informative=5, n_classes=3, random_state=0)
    head = KNNProbe().fit(X[:150], y[:150])
    result = evaluate(y[150:], head.predict_proba(X[150:]), head.classes_)
    assert result.accuracy == pytest.approx(head.score(X[150:], y[150:]))
    assert sum(row["support"] for row in result.per_class) == 50
