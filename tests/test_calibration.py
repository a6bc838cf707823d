"""Calibration: the fitted temperature (fine-tuning, kNN and MLP probes), the class-prior correction, bundles, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax
from typer.testing import CliRunner

from headstart.bundles import Bundle, load_bundle
from headstart.cli import app
from headstart.data import load_data
from headstart.data.dataset import subsample_per_class
from headstart.errors import OptionError
from headstart.evaluate.calibration import Calibration, fit_temperature, nll, prior_shift
from headstart.finetune import finetune
from headstart.heads import LinearProbe
from headstart.workflows.calibration import head_calibration
from headstart.workflows.probe import probe, train_and_test

from conftest import TINY_BACKBONE, report_sections


# ----- the pure functions ------------------------------------------------------------------------


def _sampled(temperature: float, n: int = 4000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / temperature): the true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, classes))
    proba = softmax(logits / temperature, axis=1)
    labels = np.array([rng.choice(classes, p=p) for p in proba])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_temperature):
    logits, labels = _sampled(true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.12)
    assert nll(logits, labels, fitted) <= nll(logits, labels, 1.0)


def test_fit_temperature_stays_finite_when_every_held_out_row_is_right():
    """The NLL alone would fall towards T = 0 (certainty); the weak prior on log T keeps T moderate."""
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 3.0]] * 10)
    labels = np.array([0, 1, 2] * 10)
    assert fit_temperature(logits, labels, prior_scale=None) < 0.05
    fitted = fit_temperature(logits, labels)
    assert 0.3 < fitted < 1.0 and nll(logits, labels, fitted) < nll(logits, labels, 1.0)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64)) == 1.0


def test_temperature_keeps_the_argmax_and_the_shift_is_bayes_rule():
    rng = np.random.default_rng(0)
    proba = softmax(rng.normal(0, 2, size=(50, 3)), axis=1)
    scaled = Calibration(temperature=1.7).apply(proba)
    assert np.array_equal(scaled.argmax(1), proba.argmax(1)) and not np.allclose(scaled, proba)
    np.testing.assert_allclose(scaled.sum(1), 1.0)
    # p_full(y|x) is proportional to p_sample(y|x) * prior_full(y) / prior_sample(y).
    full, sample = np.array([600, 300, 100]), np.array([100, 100, 100])
    shifted = Calibration(log_prior_shift=tuple(prior_shift(full, sample)), prior="data").apply(proba)
    expected = proba * (full / full.sum()) / (sample / sample.sum())
    np.testing.assert_allclose(shifted, expected / expected.sum(1, keepdims=True), rtol=1e-10)
    # kNN vote shares: T divides the shares themselves, and a share of 0 gets a probability above 0.
    shares = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    knn = Calibration(temperature=0.2, scores="proba").apply(shares)
    np.testing.assert_allclose(knn, softmax(shares / 0.2, axis=1))
    assert (knn > 0).all()


def test_identity_and_zero_shift_leave_the_probabilities_untouched():
    proba = softmax(np.random.default_rng(1).normal(size=(20, 4)), axis=1)
    assert Calibration().apply(proba) is not None and np.array_equal(Calibration().apply(proba), proba)
    zero = prior_shift([50, 30, 20, 10], [50, 30, 20, 10])
    assert np.array_equal(zero, np.zeros(4))
    calibration = Calibration(log_prior_shift=tuple(zero), prior="data")
    assert calibration.is_identity and np.array_equal(calibration.apply(proba), proba)
    # A class absent from the sample gets no correction (the head has no column for it).
    assert prior_shift([10, 10, 5], [5, 5, 0])[2] == 0.0


def test_calibration_documents_round_trip_and_bad_ones_are_refused():
    calibration = Calibration(temperature=1.3, log_prior_shift=(0.2, -0.2), prior="data", note="x", extra={"n": 5})
    again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again == calibration and again.extra == {"n": 5}
    assert Calibration.from_dict(None).is_identity
    for bad in ({"temperature": 0}, {"temperature": "2"}, {"temperature": float("nan")}, {"log_prior_shift": ["a"]},
                {"prior": "balanced"}, {"scores": "logits"}):
        with pytest.raises(ValueError):
            Calibration.from_dict(bad)


# ----- the class prior -------------------------------------------------------------------------


def test_load_data_remembers_the_training_split_counts_from_before_per_class(tiny_arrays):
    images, labels = tiny_arrays
    keep = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)[::4]])  # 20 / 5 / 5
    data = load_data((images[keep], labels[keep]), per_class=4, seed=0)
    full = load_data((images[keep], labels[keep]), seed=0)
    assert np.array_equal(data.full_train_counts, full.train_counts()) and data.full_train_counts.tolist() == [16, 4, 4]
    assert data.train_counts().tolist() == [4, 4, 4]
    assert np.array_equal(data.get_split("train").full_train_counts, data.full_train_counts)  # subsets keep it
    assert data.summary()["full_train_counts"] == {"0": 16, "1": 4, "2": 4}
    assert full.full_train_counts is None and "full_train_counts" not in full.summary()
    assert load_data((images, labels), per_class=100, seed=0).full_train_counts is None  # nothing was dropped


def _imbalanced(seed: int = 0, n: int = 6000, per_class: int = 150):
    """Overlapping Gaussian classes 6:3:1, a balanced training sample of ``per_class`` each, a natural test split."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    means = np.array([[0.0, 0.0], [1.2, 0.0], [0.0, 1.2]])
    X = means[labels] + rng.normal(size=(n, 2))
    split = np.where(np.arange(n) < n // 2, "train", "test").astype(object)
    train = np.flatnonzero(split == "train")
    full_counts = np.bincount(labels[train], minlength=3)
    keep = np.concatenate([subsample_per_class(labels, train, per_class, seed), np.flatnonzero(split == "test")])
    return X[keep], labels[keep], split[keep], full_counts


def test_the_data_prior_raises_accuracy_on_a_naturally_imbalanced_test_split():
    X, labels, split, full_counts = _imbalanced()
    valid = np.ones(len(labels), dtype=bool)
    classes = ["a", "b", "c"]
    accuracy = {}
    for prior in ("data", "uniform"):
        fitted = train_and_test(LinearProbe(random_state=0), X, labels, split, valid, classes, head_name="linear", seed=0,
                                prior=prior, full_counts=full_counts)
        accuracy[prior] = fitted.test.accuracy
    assert accuracy["data"] > accuracy["uniform"] + 0.03  # 3,000 test rows: a standard error of about 0.9 points
    # uniform is what the probe did before the option: a plain LinearProbe's test probabilities, exactly.
    train, test = split == "train", split == "test"
    plain = LinearProbe(random_state=0).fit(X[train], labels[train])
    fitted = train_and_test(LinearProbe(random_state=0), X, labels, split, valid, classes, head_name="linear", seed=0,
                            prior="uniform", full_counts=full_counts)
    assert fitted.calibration.is_identity
    assert fitted.test.accuracy == np.mean(plain.predict(X[test]) == labels[test])
    assert fitted.test.log_loss == pytest.approx(
        -np.mean(np.log(plain.predict_proba(X[test])[np.arange(test.sum()), labels[test]])), rel=1e-12)


@pytest.mark.parametrize("head_name", ["knn", "mlp"])
def test_knn_and_mlp_get_a_temperature_from_out_of_fold_predictions_that_keeps_accuracy(head_name):
    X, labels, split, full_counts = _imbalanced(seed=1, per_class=100)
    valid = np.ones(len(labels), dtype=bool)
    params = {"max_epochs": 30} if head_name == "mlp" else {}
    from headstart.heads import make_head

    fitted = train_and_test(make_head(head_name, random_state=0, **params), X, labels, split, valid, ["a", "b", "c"], head_name=head_name,
                            seed=0, prior="uniform", full_counts=full_counts)
    record = fitted.record
    assert fitted.calibration.temperature != 1.0 and record["fitted_on"].endswith("out-of-fold predictions")
    assert record["nll_after"] <= record["nll_before"]
    assert record["test_accuracy_before"] == fitted.test.accuracy  # the temperature alone never moves the argmax
    # the linear probe keeps T = 1, and says why
    linear = head_calibration("linear", LinearProbe(random_state=0).fit(X[:300], labels[:300]), X[:300], labels[:300], seed=0,
                              calibrate=True, prior="uniform", full_counts=None)
    assert linear.temperature == 1.0 and "not fitted" in linear.note
    with pytest.raises(OptionError, match="--prior must be"):
        head_calibration("linear", LinearProbe(), X, labels, seed=0, calibrate=True, prior="balanced", full_counts=None)


# ----- probe, bundles and predict ---------------------------------------------------------------


@pytest.fixture(scope="module")
def skewed():
    """300 16x16 images, classes 4:1:1 told apart by where a noisy bright square sits."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 200 + [1] * 50 + [2] * 50)
    images = rng.integers(0, 90, size=(300, 16, 16)).astype(np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 4 * label
        images[i, top : top + 5, 3:13] = rng.integers(90, 220)
    return images, labels


def test_probe_saves_the_calibration_in_the_bundle_and_predict_applies_it(skewed, tmp_path):
    images, labels = skewed
    data = load_data((images, labels), per_class=30, seed=0)
    assert data.full_train_counts.tolist() == [160, 40, 40]
    out = tmp_path / "probe"
    report = probe(data, [TINY_BACKBONE], ["linear", "knn"], image_size=32, out=out, quiet=True)
    test_images = list(data.items[data.indices("test")])
    for run in report.runs:
        calibration = run.bundle.calibration
        expected = tuple(prior_shift([160, 40, 40], [30, 30, 30]).tolist())
        assert calibration.prior == "data" and calibration.log_prior_shift == pytest.approx(expected)
        loaded = load_bundle(run.bundle_path)
        assert loaded.calibration == calibration
        X, _, _ = loaded.features(test_images)
        np.testing.assert_allclose(loaded.predict_proba(test_images), calibration.apply(loaded.head.predict_proba(X)), atol=1e-9)
        assert [p.label for p in loaded.predict_batch(test_images[:5])] == loaded.predict(test_images[:5])
        saved = json.loads((run.bundle_path / "bundle.json").read_text())["calibration"]
        assert saved["temperature"] == calibration.temperature and saved["prior"] == "data"
    knn = next(r for r in report.runs if r.head == "knn")
    assert knn.calibration["temperature"] != 1.0 and knn.row()["temperature"] == round(knn.calibration["temperature"], 4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["calibration"]["prior"] for r in metrics["runs"]] == ["data", "data"]
    assert metrics["dataset"]["full_train_counts"] == {"0": 160, "1": 40, "2": 40}
    section = report_sections((out / "report.html").read_text())["calibration-fit"]
    assert "test ECE before T" in section and "knn" in section
    # prior="uniform" and calibrate=False: the bundles predict the heads' own probabilities.
    plain = probe(data, [TINY_BACKBONE], ["linear", "knn"], image_size=32, prior="uniform", calibrate=False, quiet=True)
    for run in plain.runs:
        assert run.bundle.calibration.is_identity
        X, _, _ = run.bundle.features(test_images)
        assert np.array_equal(run.bundle.predict_proba(test_images), run.bundle.head.predict_proba(X))


def test_cli_probe_prior_and_calibrate_options(skewed, tmp_path):
    images, labels = skewed
    npz = tmp_path / "skewed.npz"
    np.savez(npz, x=images, y=labels)
    runner = CliRunner()
    bad = runner.invoke(app, ["probe", str(npz), "--backbone", TINY_BACKBONE, "--prior", "balanced", "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, OptionError) and "--prior must be 'data'" in str(bad.exception)  # exit 2: tests/test_bad_inputs.py
    assert not (tmp_path / "bad").exists()  # refused before any work
    out = tmp_path / "run"
    result = runner.invoke(app, ["probe", str(npz), "--backbone", TINY_BACKBONE, "--head", "knn", "--per-class", "30", "--image-size", "32",
                                 "--prior", "uniform", "--no-calibrate", "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    calibration = json.loads((out / "bundle" / "bundle.json").read_text())["calibration"]
    assert calibration["temperature"] == 1.0 and calibration["log_prior_shift"] is None and calibration["prior"] == "uniform"
    assert "off" in calibration["note"]


# ----- fine-tuning --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs torch on one thread (tests/conftest.py's one_thread)."""


def test_finetune_fits_a_temperature_that_keeps_accuracy_and_lowers_val_nll(skewed, tmp_path):
    images, labels = skewed
    data = load_data((images, labels), seed=0)
    options = {"strategy": "full", "epochs": 2, "lr": 1e-3, "image_size": 32, "quiet": True, "val_fraction": 0.2}
    calibrated = finetune(data, TINY_BACKBONE, out=tmp_path / "on", **options)
    plain = finetune(data, TINY_BACKBONE, calibrate=False, **options)
    record = calibrated.calibration
    assert record["temperature"] != 1.0 and plain.calibration["temperature"] == 1.0 and plain.bundle.calibration.is_identity
    assert calibrated.test.accuracy == plain.test.accuracy == record["test_accuracy_before"]  # T never moves the argmax
    assert record["val_nll_after"] <= record["val_nll_before"]
    assert record["n_val"] == 48 and record["log_prior_shift"] is None  # nothing subsampled: no prior correction
    assert record["test_ece_after"] == calibrated.test.ece and record["test_ece_before"] == pytest.approx(plain.test.ece, abs=1e-9)
    saved = json.loads((tmp_path / "on" / "metrics.json").read_text())["calibration"]
    assert saved["temperature"] == record["temperature"] and "val_ece_before" in saved and "val_ece_after" in saved
    assert Bundle.load(tmp_path / "on" / "bundle").calibration.temperature == record["temperature"]
    section = report_sections((tmp_path / "on" / "report.html").read_text())["calibration-fit"]
    assert "before T" in section and "after T" in section and "test ECE" in section


def test_finetune_corrects_a_subsampled_prior_and_the_cli_turns_things_off(skewed, tmp_path):
    images, labels = skewed
    npz = tmp_path / "skewed.npz"
    np.savez(npz, x=images, y=labels)
    result = finetune(str(npz), TINY_BACKBONE, strategy="full", per_class=30, epochs=1, image_size=32, quiet=True)
    data = load_data(str(npz), per_class=30, seed=0)
    shift = result.bundle.calibration.log_prior_shift
    assert shift is not None and shift[0] > 0 > shift[1]  # the majority class gains, the others lose
    assert result.calibration["prior"] == "data" and len(shift) == len(data.classes)
    uniform = finetune(str(npz), TINY_BACKBONE, strategy="full", per_class=30, epochs=1, image_size=32, quiet=True, prior="uniform")
    assert uniform.bundle.calibration.log_prior_shift is None
    with pytest.raises(OptionError, match="prior must be"):
        finetune(str(npz), TINY_BACKBONE, epochs=1, prior="natural")
    runner = CliRunner()
    out = tmp_path / "cli"
    done = runner.invoke(app, ["finetune", str(npz), "--backbone", TINY_BACKBONE, "--strategy", "full", "--epochs", "1", "--image-size", "32",
                               "--no-calibrate", "--prior", "uniform", "--out", str(out), "--json", "--quiet"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["calibration"]["temperature"] == 1.0
    assert load_bundle(out).calibration.is_identity
    bad = runner.invoke(app, ["finetune", str(npz), "--backbone", TINY_BACKBONE, "--prior", "natural", "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, OptionError) and "--prior must be" in str(bad.exception) and not (tmp_path / "bad").exists()
