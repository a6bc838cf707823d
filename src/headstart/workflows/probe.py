"""Probe: extract features through the store, fit heads on them, evaluate, and save bundles.

This is step 3 of transfer learning as one call: ``probe(data, backbones, heads)``. Several
backbones and heads give one comparison; every (backbone, head) pair is saved as a bundle.

Every name and option is checked before any work: the heads, each backbone (loaded, so a name that
does not resolve fails first), its layer, pooling and input size, and its modality against the
data's. A bad one anywhere in the list stops the run before the first extraction.

``sk:tfidf`` (text data only) is a backbone without a network: TF-IDF + logistic regression fitted
on the raw texts (:class:`~headstart.heads.tfidf.TfidfLogReg`, the same model ``rank`` scores). It
trains with the ``linear`` head, its own logistic regression; the kNN and MLP heads need a fixed
dense feature space, so those pairs are skipped and listed (``ProbeReport.skipped_runs``), and a
probe of ``sk:tfidf`` alone without ``linear`` is refused. Its bundle is a ``tfidf`` bundle
(:class:`~headstart.bundles.tfidf.TfidfBundle`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.bundles import Bundle
from headstart.bundles.tfidf import TfidfBundle
from headstart.data.dataset import Dataset
from headstart.errors import DataError, OptionError
from headstart.evaluate import EvalResult, evaluate
from headstart.evaluate.calibration import Calibration
from headstart.features import FeatureStore, Features, extract
from headstart.heads import check_head_name, make_head
from headstart.heads import tfidf as tfidf_baseline
from headstart.io import atomic_write_bytes, atomic_write_json, check_out_dir
from headstart.workflows.calibration import check_calibration_options, head_calibration


@dataclass
class ProbeRun:
    """One (backbone, head) result on the test split."""

    backbone: str
    head: str
    image_size: int
    layer: str
    pool: str
    test: EvalResult
    extract_seconds: float
    fit_seconds: float
    store_hit: bool
    store_key: str | None
    bundle: Bundle | TfidfBundle = field(repr=False)
    bundle_path: Path | None = None
    test_predictions: dict[str, np.ndarray] | None = field(default=None, repr=False)
    calibration: dict[str, Any] | None = None
    runtime: str = "torch fp32"

    def row(self) -> dict[str, Any]:
        """A flat summary for tables and CSV logs."""
        return {
            "backbone": self.backbone,
            "head": self.head,
            "image_size": self.image_size,
            "layer": self.layer,
            "test/accuracy": round(self.test.accuracy, 4),
            "test/balanced_accuracy": round(self.test.balanced_accuracy, 4) if self.test.balanced_accuracy is not None else None,
            "test/macro_f1": round(self.test.macro_f1, 4),
            "test/ece": round(self.test.ece, 4),
            "temperature": round(self.calibration["temperature"], 4) if self.calibration else None,
            "extract_s": round(self.extract_seconds, 2),
            "fit_s": round(self.fit_seconds, 2),
            "store_hit": self.store_hit,
            "runtime": self.runtime,
            "bundle": str(self.bundle_path) if self.bundle_path else None,
        }


@dataclass
class ProbeReport:
    """All runs of one probe call, with the dataset summary."""

    runs: list[ProbeRun]
    dataset: dict[str, Any]
    out: Path | None = None
    data: Dataset | None = field(default=None, repr=False)
    skipped_runs: list[dict[str, str]] = field(default_factory=list)

    @property
    def best(self) -> ProbeRun:
        """The run with the highest test accuracy (ties: the first)."""
        return max(self.runs, key=lambda run: run.test.accuracy)

    def to_dict(self) -> dict[str, Any]:
        document = {
            "dataset": self.dataset,
            "runs": [{**run.row(), "metrics": run.test.to_dict(), "calibration": run.calibration} for run in self.runs],
            "best": self.best.row(),
            "out": str(self.out) if self.out else None,
        }
        if self.skipped_runs:
            document["skipped_runs"] = self.skipped_runs
        return document


def slug(text: str) -> str:
    """A filesystem-safe name for a backbone or run."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


@dataclass
class Fitted:
    """A head fitted by :func:`train_and_test`: the head, its calibration, its test metrics (calibrated) and fit time."""

    head: Any
    calibration: Calibration
    test: EvalResult
    fit_seconds: float
    record: dict[str, Any]  # the calibration with the test ECE before and after it, for metrics.json


def fit_and_evaluate(features: Features, head_name: str, seed: int, head_params: dict[str, Any] | None = None, *,
                     calibrate: bool = True, prior: str = "data", full_counts: np.ndarray | None = None) -> Fitted:
    """Fit a head on the train (and val) rows of ``features``, calibrate it, and evaluate it on the test rows."""
    params = {"random_state": seed, **(head_params or {})}
    head = make_head(head_name, **params)
    return train_and_test(head, features.X, features.labels, features.split, features.valid, features.classes,
                          head_name=head_name, seed=seed, calibrate=calibrate, prior=prior, full_counts=full_counts)


def train_and_test(head: Any, X, labels: np.ndarray, split: np.ndarray, valid: np.ndarray, classes: list[str], *, head_name: str, seed: int,
                   calibrate: bool = True, prior: str = "data", full_counts: np.ndarray | None = None) -> Fitted:
    """Fit ``head`` on the valid train and val rows of ``X``, calibrate it, and evaluate it on the valid test rows.

    ``X`` is a feature matrix, or (for ``sk:tfidf``) an object array of texts. The calibration
    (:func:`~headstart.workflows.calibration.head_calibration`) is fitted on the training rows alone;
    the test metrics are those of the calibrated probabilities, and the record keeps the test ECE
    before and after it.
    """
    train = np.isin(split, ("train", "val")) & valid
    test = (split == "test") & valid
    # Train rows first, then val rows, as they were always concatenated.
    order = np.concatenate([np.flatnonzero((split == "train") & valid), np.flatnonzero((split == "val") & valid)])
    if not train.any():
        raise DataError("The training split is empty after skipping unreadable items; nothing to fit.")
    if not test.any():
        raise DataError("The test split is empty; give a test/ folder or a larger dataset.")
    started = time.perf_counter()
    head.fit(X[order], labels[order])
    calibration = head_calibration(head_name, head, X[order], labels[order], seed=seed, calibrate=calibrate, prior=prior, full_counts=full_counts)
    fit_seconds = time.perf_counter() - started
    names = np.array(classes, dtype=object)
    column_names = [classes[int(c)] for c in head.classes_]
    raw = head.predict_proba(X[test])
    result = evaluate(names[labels[test]], calibration.apply(raw), column_names, split="test")
    record = calibration.to_dict()
    if calibration.temperature != 1.0:
        # Before and after the temperature, with the same prior: the temperature's own effect.
        before = evaluate(names[labels[test]], dataclasses.replace(calibration, temperature=1.0).apply(raw), column_names, split="test")
        record.update({"test_ece_before": before.ece, "test_accuracy_before": before.accuracy, "test_ece_after": result.ece})
    return Fitted(head, calibration, result, fit_seconds, record)


def predict_test_rows(features: Features, head: Any, calibration: Calibration | None = None) -> dict[str, np.ndarray] | None:
    """Dataset index, true and predicted class, and (calibrated) confidence of each test row (single-label only)."""
    return test_row_predictions(features.X, features.labels, features.split, features.valid, features.classes, head, calibration)


def test_row_predictions(X, labels: np.ndarray, split: np.ndarray, valid: np.ndarray, classes: list[str], head: Any,
               calibration: Calibration | None = None) -> dict[str, np.ndarray] | None:
    if labels.ndim != 1:
        return None
    rows = np.flatnonzero((split == "test") & valid)
    proba = (calibration or Calibration()).apply(head.predict_proba(X[rows]))
    top = proba.argmax(axis=1)
    names = np.array(classes, dtype=object)
    return {
        "index": rows,
        "true": names[labels[rows]],
        "predicted": names[np.asarray(head.classes_)[top]],
        "confidence": proba[np.arange(len(rows)), top],
    }


def probe(
    data: Dataset,
    backbones: list[str],
    heads: list[str] | tuple[str, ...] = ("linear",),
    *,
    layer: str | None = None,
    pool: str = "avg",
    image_size: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    store: FeatureStore | None = None,
    quiet: bool = False,
    head_params: dict[str, dict[str, Any]] | None = None,
    trust_remote_code: bool = False,
    allow_torchscript: bool = False,
    prior: str = "data",
    calibrate: bool = True,
    runtime: str | None = None,
    precision: str | None = None,
) -> ProbeReport:
    """Extract, fit every head on every backbone's features, calibrate, evaluate on test, save bundles.

    Args:
        data: A dataset with train and test splits (see :func:`headstart.load_data`).
        backbones: Backbone names; each is extracted through the store (or read back). ``sk:tfidf``
            (text data) fits TF-IDF + logistic regression on the raw texts instead.
        heads: Head names: ``linear``, ``knn``, ``mlp``. ``sk:tfidf`` trains with ``linear`` only;
            its other pairs are skipped and listed in ``skipped_runs``.
        layer: Layer to probe (default: the pooled penultimate layer); checked for every network
            before any work. ``sk:tfidf`` has no layers: ``layer`` and ``pool`` do not apply to it.
        pool: Pooling for intermediate layers.
        image_size: Input size override.
        seed: Seed for the heads.
        out: Run directory. Bundles go to ``out/bundles/<backbone>-<head>``, the best one also to
            ``out/bundle``; ``metrics.json``, ``manifest.json``, ``results.csv``, the best run's
            ``test_predictions.csv`` and ``report.html`` beside them.
        store: Feature store (default: ``$HEADSTART_CACHE``).
        quiet: No progress bars.
        head_params: Per-head constructor arguments, e.g. ``{"mlp": {"max_epochs": 50}}``;
            ``{"sk:tfidf": {...}}`` gives :class:`~headstart.heads.tfidf.TfidfLogReg`'s.
        trust_remote_code: Let ``hf:``/``st:`` backbone folders run the code they ship.
        allow_torchscript: Let ``file:`` TorchScript backbones load (they run the code they hold).
        prior: ``"data"``: correct each head's probabilities from the class frequencies of its
            training sample (balanced by ``load_data(..., per_class=N)``) to those of the whole
            training split (``Dataset.full_train_counts``); zero without subsampling. ``"uniform"``:
            keep the sample's prior (the behaviour before this option).
        calibrate: Fit a temperature on out-of-fold predictions for the kNN and MLP heads (the linear
            probe needs none); see :mod:`headstart.workflows.calibration`.
        runtime: ``torch``, ``onnx`` or ``auto`` for extraction on the CPU (see :func:`headstart.features.extract`).
        precision: ``fp32`` or ``bf16``; None lets the runtime choose.

    Returns:
        A :class:`ProbeReport`.

    Raises:
        OptionError: A head name or option is unknown or does not fit a backbone (before any work).
        UnknownBackboneError: A backbone name does not resolve (before any work).
        DataError: A backbone's modality is not the data's (before any work), or a split is empty.
    """
    if not backbones:
        raise DataError("Name at least one backbone, e.g. --backbone tv:mobilenet_v2.IMAGENET1K_V1.")
    check_out_dir(out)
    check_calibration_options(prior)
    started = time.perf_counter()
    heads = list(heads)
    prepared = prepare_backbones(
        data, backbones, heads, layer=layer, pool=pool, image_size=image_size, trust_remote_code=trust_remote_code,
        allow_torchscript=allow_torchscript, runtime=runtime, precision=precision,
    )
    store = store or FeatureStore()
    runs: list[ProbeRun] = []
    skipped_runs: list[dict[str, str]] = []
    skipped: dict[tuple[str, str], None] = dict.fromkeys(data.skipped)
    for name, backbone in prepared:
        if backbone is None:
            baseline_runs, baseline_skips, item_skips = probe_tfidf(data, heads, seed, (head_params or {}).get(name), prior=prior, calibrate=calibrate)
            runs += baseline_runs
            skipped_runs += baseline_skips
            skipped.update(dict.fromkeys(item_skips))
            continue
        features = extract(
            backbone, data, layer=layer, pool=pool, image_size=image_size, store=store, quiet=quiet, runtime=runtime, precision=precision
        )
        skipped.update(dict.fromkeys(features.skipped))
        for head_name in heads:
            fitted = fit_and_evaluate(features, head_name, seed, (head_params or {}).get(head_name), calibrate=calibrate, prior=prior,
                                      full_counts=data.full_train_counts)
            head, result = fitted.head, fitted.test
            bundle = Bundle(
                spec=features.spec,
                head=head,
                classes=features.classes,
                layer=features.layer,
                pool=features.pool,
                metrics=result.to_dict(),
                manifest={
                    "seed": seed, "data_fingerprint": features.fingerprint, "store_key": features.key, "data_source": data.source,
                    "runtime": features.runtime.label,
                },
                backbone=backbone,
                calibration=fitted.calibration,
            )
            runs.append(
                ProbeRun(
                    backbone=features.spec.name, head=head_name, image_size=features.spec.input_size, layer=features.layer,
                    pool=features.pool, test=result, extract_seconds=features.seconds, fit_seconds=fitted.fit_seconds,
                    store_hit=features.hit, store_key=features.key, bundle=bundle, runtime=features.runtime.label,
                    test_predictions=predict_test_rows(features, head, fitted.calibration), calibration=fitted.record,
                )
            )
    dataset = data.summary()
    # Items that failed to decode during extraction were skipped too: list them with the listing's.
    dataset["skipped"] = [{"item": item, "reason": reason} for item, reason in skipped]
    report = ProbeReport(runs=runs, dataset=dataset, data=data, skipped_runs=skipped_runs)
    if out is not None:
        write_run(report, Path(out), seconds=time.perf_counter() - started)
    return report


def prepare_backbones(
    data: Dataset, backbones: list[str], heads: list[str], *, layer: str | None = None, pool: str = "avg",
    image_size: int | None = None, trust_remote_code: bool = False, allow_torchscript: bool = False,
    runtime: str | None = None, precision: str | None = None,
) -> list[tuple[str, Any]]:
    """Check every head, backbone name and option, and load the networks, before any extraction.

    Names are checked first for all backbones (a typo's prefix, an unknown ``sk:`` name), then each
    network is loaded and checked against the data's modality, the layer, pooling and input size.

    Returns:
        ``(name, backbone)`` per backbone, in order: the loaded network, or None for ``sk:tfidf``.

    Raises:
        OptionError: A head is unknown, or an option does not apply.
        UnknownBackboneError: A backbone name does not resolve.
        DataError: A backbone's modality is not the data's.
    """
    from headstart.backbones import load_backbone
    from headstart.backbones.registry import allows_remote_code
    from headstart.features.extract import check_modality, check_options, pick_device
    from headstart.features.runtime import check_runtime, paths

    check_runtime(runtime, precision)
    if not heads:
        raise OptionError("Name at least one head: --head linear, knn or mlp.")
    for head_name in heads:
        check_head_name(head_name)
    remote: dict[str, bool] = {}
    for name in backbones:
        if tfidf_baseline.is_baseline(name):
            tfidf_baseline.check_baseline(name, data.modality, data.source)
        else:
            remote[name] = allows_remote_code(name)  # an unknown prefix fails here, for every name, before any load
    prepared: list[tuple[str, Any]] = []
    for name in backbones:
        if tfidf_baseline.is_baseline(name):
            name = name.strip()
            if not any(head_name in tfidf_baseline.BASELINE_HEADS for head_name in heads):
                raise OptionError(
                    f"{name} trains with --head linear only (its own logistic regression on TF-IDF vectors); "
                    f"{' and '.join(heads)} {'needs' if len(heads) == 1 else 'need'} dense features of a network. Add --head linear."
                )
            if image_size is not None:
                raise OptionError(f"--image-size applies to image backbones; {name} reads raw texts.")
            prepared.append((name, None))
            continue
        backbone = load_backbone(name, trust_remote_code=trust_remote_code and remote[name], allow_torchscript=allow_torchscript)
        check_modality(backbone.spec, data)
        check_options(backbone, backbone.check_layer(layer), pool, image_size, "auto")
        paths(backbone.spec, pick_device(None).type, runtime, precision)  # a runtime that cannot run here fails now
        prepared.append((name, backbone))
    return prepared


def probe_tfidf(data: Dataset, heads: list[str], seed: int, params: dict[str, Any] | None = None, *, prior: str = "data",
                calibrate: bool = True) -> tuple[list[ProbeRun], list[dict[str, str]], list[tuple[str, str]]]:
    """The ``sk:tfidf`` runs: TF-IDF + logistic regression fitted on the raw training texts.

    Returns:
        The runs (one, for the ``linear`` head), the skipped (backbone, head) pairs with their reason,
        and the items skipped (empty texts).
    """
    name = tfidf_baseline.CANDIDATE
    texts = np.empty(len(data), dtype=object)
    texts[:] = list(data.items)
    valid = np.array([isinstance(text, str) and bool(text.strip()) for text in texts])
    item_skips = [(f"item {i}", "empty text" if isinstance(texts[i], str) else f"not a text ({type(texts[i]).__name__})") for i in np.flatnonzero(~valid)]
    runs: list[ProbeRun] = []
    skips: list[dict[str, str]] = []
    fingerprint = data.fingerprint()
    for head_name in heads:
        if head_name not in tfidf_baseline.BASELINE_HEADS:
            reason = f"{name} trains with the linear head only (its logistic regression); {head_name} needs dense features of a network."
            skips.append({"backbone": name, "head": head_name, "reason": reason})
            continue
        model = tfidf_baseline.TfidfLogReg(**{"random_state": seed, **(params or {})})
        fitted = train_and_test(model, texts, data.labels, data.split, valid, data.classes, head_name=name, seed=seed, calibrate=calibrate,
                                prior=prior, full_counts=data.full_train_counts)
        model, result = fitted.head, fitted.test
        bundle = TfidfBundle(
            model, data.classes, metrics=result.to_dict(),
            manifest={"seed": seed, "data_fingerprint": fingerprint, "store_key": None, "data_source": data.source},
            calibration=fitted.calibration,
        )
        runs.append(
            ProbeRun(
                backbone=name, head=head_name, image_size=0, layer=bundle.layer, pool=bundle.pool, test=result,
                extract_seconds=0.0, fit_seconds=fitted.fit_seconds, store_hit=False, store_key=None, bundle=bundle,
                test_predictions=test_row_predictions(texts, data.labels, data.split, valid, data.classes, model, fitted.calibration),
                calibration=fitted.record,
            )
        )
    return runs, skips, item_skips


def write_run(report: ProbeReport, out: Path, seconds: float | None = None) -> None:
    """Save every bundle, the best one as ``out/bundle``, the run's metrics, manifest and CSV, and its report."""
    import csv
    import io

    from headstart.runs import write_manifest

    out.mkdir(parents=True, exist_ok=True)
    for run in report.runs:
        run.bundle_path = run.bundle.save(out / "bundles" / slug(f"{run.backbone}-{run.layer}-{run.head}"))
    report.best.bundle.save(out / "bundle")
    report.out = out
    atomic_write_json(out / "metrics.json", report.to_dict())
    best = report.best.bundle.manifest
    write_manifest(
        out,
        seed=best.get("seed"),
        data_source=best.get("data_source"),
        data_fingerprint=best.get("data_fingerprint"),
        wall_seconds=round(seconds, 2) if seconds is not None else None,
        runs=[
            {"backbone": r.backbone, "head": r.head, "weights_sha256": r.bundle.spec.sha256, "store_key": r.store_key,
             "data_fingerprint": r.bundle.manifest["data_fingerprint"], "extract_s": r.extract_seconds, "fit_s": r.fit_seconds}
            for r in report.runs
        ],
    )
    rows = [run.row() for run in report.runs]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
    _write_report_files(report, out)


def _write_report_files(report: ProbeReport, out: Path) -> None:
    """The best run's test predictions (with thumbnails of its worst mistakes) and ``report.html``.

    A report that fails to render never loses the run: the error is printed with the command that
    renders it again.
    """
    from headstart.report import write_report_or_warn
    from headstart.runs import write_test_predictions

    predictions = report.best.test_predictions
    if predictions is not None:
        data = report.data
        write_test_predictions(
            out, predictions["index"], predictions["true"], predictions["predicted"], predictions["confidence"],
            items=data.items if data is not None else None, modality=data.modality if data is not None else "image",
        )
    write_report_or_warn(out)


def print_probe_table(runs, title: str, console=None) -> None:
    """A backbone x head table of test accuracy (on stdout unless another rich ``console`` is given)."""
    from rich.table import Table

    from headstart.console import console as default_console

    console = console or default_console

    heads = list(dict.fromkeys(run.head for run in runs))
    table = Table(title=title)
    table.add_column("backbone")
    table.add_column("px")
    for head in heads:
        table.add_column(head, justify="right")
    best = max(run.test.accuracy for run in runs)
    for backbone in dict.fromkeys(run.backbone for run in runs):
        cells = []
        for head in heads:
            match = [r for r in runs if r.backbone == backbone and r.head == head]
            if not match:
                cells.append("")
                continue
            accuracy = match[0].test.accuracy
            cells.append(f"[bold green]{accuracy:.3f}[/]" if accuracy == best else f"{accuracy:.3f}")
        size = next(r.image_size for r in runs if r.backbone == backbone)
        table.add_row(backbone, str(size), *cells)
    console.print(table)
