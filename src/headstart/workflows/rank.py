"""Rank candidate backbones on your own data before training anything.

:func:`rank_backbones` takes candidate backbones (optionally at a layer and an input size) and a
labelled dataset. For each candidate it:

1. extracts features of a stratified subsample of the training split, through the feature store
   (when the store already holds features for the whole dataset, it reads those back instead);
2. computes transferability scores (:mod:`headstart.select.scores`) and direct probes: the
   cross-validated accuracy of a :class:`~headstart.heads.LinearProbe` (``linear``) and of a
   :class:`~headstart.heads.KNNProbe` (``knn``) on the subsample;
3. measures its cost (:func:`headstart.select.cost.measure_cost`).

The scores are then combined into one number per candidate (see
:class:`~headstart.select.combine.Combination`), the candidates are sorted by it, and the
quality-versus-cost Pareto front is marked. With ``out``, the run directory gets ``rank.json``,
``rank.csv``, ``manifest.json`` and ``report.html`` (:func:`write_rank_run`).

This is the ranking's run loop (the orchestration layer). Its pure parts live in
:mod:`headstart.select`: candidates, scores, probes, the combination, the table and cost.

Candidates are written ``NAME[#LAYER][@SIZE]``: ``tv:mobilenet_v2.IMAGENET1K_V1``,
``timm:tf_efficientnet_lite0#blocks.4``, ``timm:tf_efficientnet_lite0#blocks.4@112`` or
``tv:mobilenet_v2@random@64`` (``@random`` is part of the name; a trailing ``@`` and digits is the
input size). In Python a candidate can also be a tuple ``(name, layer)`` or
``(name, layer, size)``, or a :class:`~headstart.select.candidates.Candidate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.dataset import Dataset, subsample_per_class
from headstart.errors import (
    DataError,
    LayerError,
    UnknownBackboneError,
    WeightsMismatchError,
    WeightsUnavailableError,
)
from headstart.select.candidates import Candidate, expand_candidates, parse_candidates, resolve_layer
from headstart.select.combine import Combination, check_scores
from headstart.select.cost import Cost, measure_cost
from headstart.select.probes import compute_rank_scores, source_logits
from headstart.heads.tfidf import BASELINES
from headstart.select.table import RankRow, RankTable, finish_ranking

__all__ = ["BASELINES", "COST_BATCH", "rank_backbones", "write_rank_run"]


# Images per timed forward pass when measuring cost (and per batch when extracting the sample).
COST_BATCH = 32
_SKIPPABLE = (WeightsUnavailableError, WeightsMismatchError, UnknownBackboneError, LayerError)


def rank_backbones(
    candidates: Sequence[str | tuple | Candidate],
    data: Dataset,
    *,
    scores: Sequence[str] | None = None,
    combine: Sequence[str] | None = None,
    method: str = "mean_rank",
    sample: int = 2000,
    layers: Sequence[str] | None = None,
    image_size: int | None = None,
    pool: str = "avg",
    seed: int = 0,
    cost: bool = True,
    device: str | None = None,
    store=None,
    quiet: bool = False,
    progress: Callable[[str], None] | None = None,
    out: str | Path | None = None,
    allow_torchscript: bool = False,
    runtime: str | None = None,
    precision: str | None = None,
) -> RankTable:
    """Rank candidate backbones on a stratified subsample of ``data``'s training split.

    Args:
        candidates: Backbone names written ``NAME[#LAYER][@SIZE]``, ``(name, layer[, size])``
            tuples, or :class:`~headstart.select.candidates.Candidate` objects.
        data: A single-label dataset from :func:`headstart.load_data`.
        scores: Scores to compute, from :data:`~headstart.select.combine.ALL_SCORES` (the transferability scores of
            :data:`headstart.select.SCORES` and the probes ``linear`` and ``knn``). None computes
            :data:`~headstart.select.combine.DEFAULT_SCORES`, plus ``linear`` (also combined) when a baseline such as
            ``sk:tfidf`` is among the candidates, since the linear probe is its only score.
        combine: The scores that make the combined rank; None takes those of
            :data:`~headstart.select.combine.DEFAULT_COMBINATION` that are computed (all computed scores if none is).
        method: ``mean_rank`` or ``zscore`` (see :class:`~headstart.select.combine.Combination`).
        sample: Rows to score: at most ``sample // n_classes`` per class, from the training split.
        layers: Rank every candidate that names no layer at each of these layers instead: layer
            names, ``pooled``, or negative indices into ``spec.layers`` (``-1`` is the deepest stage).
        image_size: Input size for candidates that do not give their own; None keeps each
            backbone's.
        pool: Pooling of intermediate layers.
        seed: Seed of the subsample, the probes' folds and the stochastic scores.
        cost: Measure each candidate's cost (parameters, MACs, images/s, peak memory).
        device: Device for extraction and cost: ``cpu``, ``cuda[:N]``, or ``auto``/None for a GPU
            when there is one; resolved once, here.
        store: A :class:`~headstart.features.FeatureStore`; None uses the default one.
        quiet: No progress bars or messages.
        progress: Called with a one-line message per step (default: stderr unless ``quiet``).
        out: A run directory to write (see :func:`write_rank_run`); None writes nothing.
        allow_torchscript: Let ``file:`` TorchScript candidates load (they run the code they
            hold); without it they are skipped with the reason.
        runtime: ``torch``, ``onnx`` or ``auto`` for extraction on the CPU (see :func:`headstart.features.extract`).
        precision: ``fp32`` or ``bf16``; None lets the runtime choose.

    Returns:
        A :class:`~headstart.select.table.RankTable`, best candidate first.

    Raises:
        DataError: The data has fewer than 2 classes, or fewer samples than classes, or every
            candidate was skipped.
        UnknownScoreError: A score name is unknown.
        RankError: A candidate or the combination method is malformed.
    """
    from headstart.backbones import load_backbone
    from headstart.device import resolve_device
    from headstart.features import FeatureStore, extract
    from headstart.features.extract import stored_paths
    from headstart.features.runtime import check_runtime
    from headstart.io import check_out_dir

    started = time.perf_counter()
    check_runtime(runtime, precision)
    names, combination = check_scores(scores, combine, method)
    plan = expand_candidates(parse_candidates(candidates), layers)
    check_candidate_names(plan)
    if scores is None and "linear" not in names and any(c.backbone in BASELINES for c in plan):
        # A baseline (sk:tfidf) has only the linear probe; without it, it could not be compared.
        names += ("linear",)
        if combine is None:
            combination = Combination(combination.scores + ("linear",), combination.method)
    rows_index, per_class = sample_rows(data, sample, seed)
    device = resolve_device(device)
    check_out_dir(out)
    store = store or FeatureStore()
    say = progress or _default_progress(quiet)
    sub = data.subset(rows_index)
    fingerprint_full = data.fingerprint()

    rows: list[RankRow] = []
    skipped: list[tuple[str, str]] = []
    cost_cache: dict[tuple, Cost] = {}
    loaded: tuple[str, Any] | None = None
    for position, candidate in enumerate(plan, start=1):
        label = str(candidate)
        if candidate.backbone in BASELINES:
            baseline = _baseline_row(candidate, sub, names, seed, cost, rows)
            if isinstance(baseline, str):
                skipped.append((label, baseline))
                say(f"[{position}/{len(plan)}] skipped {label}: {baseline}")
            elif baseline is not None:
                rows.append(baseline)
                say(f"[{position}/{len(plan)}] {label}: TF-IDF + logistic regression on the raw texts")
            continue
        load_started = time.perf_counter()
        try:
            if loaded is None or loaded[0] != candidate.backbone:
                loaded = None
                loaded = (candidate.backbone, load_backbone(candidate.backbone, allow_torchscript=allow_torchscript))
            backbone = loaded[1]
            layer = backbone.check_layer(resolve_layer(candidate.layer, backbone.spec.layers) if candidate.layer else None)
        except _SKIPPABLE as error:
            skipped.append((label, str(error)))
            say(f"[{position}/{len(plan)}] skipped {label}: {error}")
            continue
        load_seconds = time.perf_counter() - load_started
        size = (candidate.image_size or image_size or backbone.spec.input_size) if backbone.spec.modality == "image" else None
        spec = backbone.spec.with_input_size(size)
        say(f"[{position}/{len(plan)}] {label}: features of {len(rows_index)} {f'images at {size} px' if size else 'texts'}")

        # Features: read the subsample's rows back when the whole dataset is stored (as after a
        # probe run), else extract just the subsample.
        whole = stored_paths(spec, layer, pool, data, store, device, runtime, precision, fingerprint_full)
        if whole:
            features = extract(
                backbone, data, layer=layer, pool=pool, image_size=size, device=device, store=store, quiet=quiet, runtime=whole[0][0], precision=whole[0][1]
            )
            X, valid, labels = features.X[rows_index], features.valid[rows_index], data.labels[rows_index]
        else:
            # Batches of the cost measurement's size: the timing then needs no warm-up pass.
            features = extract(
                backbone, sub, layer=layer, pool=pool, image_size=size, batch_size=COST_BATCH, device=device, store=store, quiet=quiet,
                runtime=runtime, precision=precision,
            )
            X, valid, labels = features.X, features.valid, sub.labels
        X, labels = X[valid], labels[valid]

        logits, logits_reason = (None, None)
        if "leep" in names:
            logits, logits_reason = source_logits(backbone, layer, X)
        details: dict[str, np.ndarray] = {}
        values, reasons, seconds = compute_rank_scores(names, X, labels, logits, logits_reason, seed, details)

        row = RankRow(
            candidate=str(Candidate(candidate.backbone, None if layer == backbone.spec.default_layer else layer, size)),
            backbone=candidate.backbone,
            layer=layer,
            image_size=size,
            feature_dim=int(X.shape[1]),
            pretrained=backbone.spec.pretrained,
            scores=values,
            undefined=reasons,
            store_hit=features.hit,
            load_seconds=load_seconds,
            extract_seconds=features.seconds,
            score_seconds=seconds,
            n_samples=len(labels),
            weights_sha256=backbone.spec.sha256,
            store_key=features.key,
            ridge_correct=details.get("ridge") if len(labels) == len(rows_index) else None,
        )
        if cost and data.modality == "image":
            cost_started = time.perf_counter()
            key = (backbone.spec.source, backbone.spec.arch, layer, pool, size, device)
            try:
                if key not in cost_cache:
                    warm = not features.hit and len(rows_index) >= COST_BATCH
                    cost_cache[key] = measure_cost(backbone, layer=layer, pool=pool, image_size=size, batch_size=COST_BATCH, device=device, warm=warm)
                row.cost = cost_cache[key]
            except Exception as error:  # noqa: BLE001 - a cost that cannot be measured must not stop the ranking
                row.cost_error = f"{type(error).__name__}: {error}"
            row.cost_seconds = time.perf_counter() - cost_started
        elif cost:
            row.cost_error = f"cost is measured for image backbones only; this dataset is {data.modality}."
        rows.append(row)

    if not rows:
        reasons = "; ".join(f"{c}: {r}" for c, r in skipped)
        raise DataError(f"No candidate could be ranked: {reasons}")

    finish_ranking(rows, combination)
    table = RankTable(
        rows=rows,
        skipped=skipped,
        scores=names,
        combination=combination,
        dataset=data.summary(),
        sample={"n_samples": len(rows_index), "n_classes": int(np.unique(data.labels[rows_index]).size), "max_per_class": int(per_class)},
        seed=seed,
        seconds=time.perf_counter() - started,
    )
    if out is not None:
        write_rank_run(Path(out), table, data, device)
    return table


def write_rank_run(out: Path, table: RankTable, data: Dataset, device: str) -> None:
    """``rank.json``, ``rank.csv``, ``manifest.json`` and ``report.html`` in the run directory ``out``.

    Args:
        out: The run directory (created when missing).
        table: The ranking.
        data: The dataset it ranked on (its source and fingerprint go to the manifest).
        device: The concrete device the ranking ran on (``cpu``, ``cuda``...).
    """
    from headstart.report import write_report_or_warn
    from headstart.runs import write_manifest

    table.write(out)
    write_manifest(
        out,
        seed=table.seed,
        device=device,
        data_source=data.source,
        data_fingerprint=data.fingerprint(),
        sample=table.sample,
        scores=list(table.scores),
        combination=table.combination.describe(),
        wall_seconds=round(table.seconds, 2),
        candidates=[
            {"candidate": row.candidate, "backbone": row.backbone, "layer": row.layer, "weights_sha256": row.weights_sha256,
             "store_key": row.store_key, "store_hit": row.store_hit, "extract_s": round(row.extract_seconds, 3)}
            for row in table.rows
        ],
        skipped=[{"candidate": candidate, "reason": reason} for candidate, reason in table.skipped],
    )
    write_report_or_warn(out)


def check_candidate_names(plan: Sequence[Candidate]) -> None:
    """Fail before any work on a name with an unknown source prefix or an unknown ``sk:`` baseline.

    Candidates whose weights turn out unavailable (or whose layer does not exist) are still skipped
    with their reason during the ranking; a misspelt prefix is a typo, not an unavailable candidate.

    Raises:
        UnknownBackboneError: The first such name.
    """
    from headstart.backbones.registry import allows_remote_code
    from headstart.heads.tfidf import check_baseline, is_baseline

    for candidate in plan:
        if is_baseline(candidate.backbone):
            check_baseline(candidate.backbone)
        else:
            allows_remote_code(candidate.backbone)


def _baseline_row(candidate: Candidate, sub: Dataset, names: tuple[str, ...], seed: int, cost: bool, rows: list[RankRow]) -> RankRow | str | None:
    """The row of a baseline candidate, the reason it cannot be ranked, or None when already ranked."""
    from headstart.heads import tfidf

    if any(row.backbone == candidate.backbone for row in rows):
        return None  # a baseline has no layers: one row, whatever --layers says
    if sub.modality != "text":
        return f"{candidate.backbone} is a text baseline (TF-IDF + logistic regression), but this dataset is {sub.modality}."
    values, reasons, seconds, width = tfidf.rank_scores(names, list(sub.items), sub.labels, seed)
    row = RankRow(
        candidate=candidate.backbone, backbone=candidate.backbone, layer="tfidf", image_size=None, feature_dim=width,
        pretrained=False, scores=values, undefined=reasons, score_seconds=seconds, n_samples=len(sub),
    )
    if cost:
        row.cost_error = f"{candidate.backbone} has no network; its cost is not measured."
    return row


def sample_rows(data: Dataset, sample: int, seed: int) -> tuple[np.ndarray, int]:
    """A stratified subsample of the training rows; returns (rows, per-class quota)."""
    if data.multilabel:
        raise DataError(f"{data.source}: ranking needs single-label classification data, but the labels are multi-label.")
    train = data.indices("train")
    present = np.unique(data.labels[train])
    if present.size < 2:
        raise DataError(
            f"{data.source}: the training split has {present.size} class, but ranking needs at least 2 "
            "(transferability is about separating classes). Add examples of the other classes."
        )
    if len(train) <= present.size:
        raise DataError(
            f"{data.source}: the training split has {len(train)} examples for {present.size} classes; ranking "
            f"needs more samples than classes (at least {2 * present.size}, two per class). Add labelled examples."
        )
    per_class = sample // present.size
    if per_class < 2:
        raise DataError(
            f"sample={sample} gives fewer than 2 examples per class for {present.size} classes; "
            f"use a sample of at least {2 * present.size} (e.g. --sample {max(2000, 2 * present.size)})."
        )
    rows = subsample_per_class(data.labels, train, per_class, seed)
    return rows, per_class


def _default_progress(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    from headstart.console import err_console

    return lambda message: err_console.print(message, highlight=False)
