"""Rank candidate backbones on your own data before training anything.

:func:`rank_backbones` takes candidate backbones (optionally at a layer and an input size) and a
labelled dataset. For each candidate it:

1. extracts features of a stratified subsample of the training split, through the feature store
   (when the store already holds features for the whole dataset, it reads those back instead);
2. computes transferability scores (:mod:`headstart.select.scores`) and direct probes: the
   cross-validated accuracy of a :class:`~headstart.heads.LinearProbe` (``linear``) and of a
   :class:`~headstart.heads.KNNProbe` (``knn``) on the subsample;
3. measures its cost (:func:`headstart.select.cost.measure_cost`).

The scores are then combined into one number per candidate (see :class:`Combination`), the
candidates are sorted by it, and the quality-versus-cost Pareto front is marked.

Candidates are written ``NAME[#LAYER][@SIZE]``: ``tv:mobilenet_v2.IMAGENET1K_V1``,
``timm:tf_efficientnet_lite0#blocks.4``, ``timm:tf_efficientnet_lite0#blocks.4@112`` or
``tv:mobilenet_v2@random@64`` (``@random`` is part of the name; a trailing ``@`` and digits is the
input size). In Python a candidate can also be a tuple ``(name, layer)`` or
``(name, layer, size)``, or a :class:`Candidate`.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.dataset import Dataset, subsample_per_class
from headstart.errors import (
    DataError,
    HeadstartError,
    LayerError,
    UnknownBackboneError,
    WeightsMismatchError,
    WeightsUnavailableError,
    did_you_mean,
)
from headstart.select.cost import Cost, measure_cost, pareto_front
from headstart.select.scores import SCORES, ScoreUndefined, UnknownScoreError, compute_scores, leep

__all__ = [
    "ALL_SCORES",
    "DEFAULT_COMBINATION",
    "DEFAULT_SCORES",
    "PROBES",
    "Candidate",
    "Combination",
    "RankError",
    "RankRow",
    "RankTable",
    "check_scores",
    "combine_scores",
    "parse_candidates",
    "print_rank_table",
    "rank_backbones",
]


class RankError(HeadstartError, ValueError):
    """A candidate, score or combination given to the ranking is malformed."""


# Direct probes: cross-validated accuracy of a head fitted on the subsample.
PROBES = ("linear", "knn")
ALL_SCORES = tuple(SCORES) + PROBES
POOLED = "pooled"


# --------------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A backbone to rank, at a layer and an input size.

    Attributes:
        backbone: A prefixed backbone name, ``@random`` included when wanted.
        layer: A layer from the backbone's ``spec.layers``; None is the pooled penultimate layer.
        image_size: The input side in pixels; None takes the ``image_size`` argument of
            :func:`rank_backbones`, else the backbone's own.
    """

    backbone: str
    layer: str | None = None
    image_size: int | None = None

    @classmethod
    def parse(cls, value: str | tuple | Candidate) -> Candidate:
        """Read ``NAME[#LAYER][@SIZE]``, a ``(name, layer[, size])`` tuple, or a Candidate.

        Raises:
            RankError: If the text or tuple is malformed; the message shows the syntax.
        """
        if isinstance(value, Candidate):
            return value
        if isinstance(value, tuple):
            if not 1 <= len(value) <= 3 or not isinstance(value[0], str):
                raise RankError(
                    f"A candidate tuple must be (name,), (name, layer) or (name, layer, size), but got {value!r}."
                )
            name, layer, size = (*value, None, None)[:3]
            return cls(name.strip(), _layer_or_none(layer), _size_or_none(size, str(value)))
        if not isinstance(value, str):
            raise RankError(f"A candidate must be a string NAME[#LAYER][@SIZE] or a tuple, but got {type(value).__name__}.")
        text = value.strip()
        size = None
        head, at, tail = text.rpartition("@")
        if at and tail.isdigit():
            text, size = head, _size_or_none(tail, value)
        name, _, layer = text.partition("#")
        if not name:
            raise RankError(f"Candidate {value!r} has no backbone name; write NAME[#LAYER][@SIZE], e.g. timm:tf_efficientnet_lite0#blocks.4@112.")
        return cls(name.strip(), _layer_or_none(layer), size)

    def __str__(self) -> str:
        text = self.backbone
        if self.layer is not None:
            text += f"#{self.layer}"
        if self.image_size is not None:
            text += f"@{self.image_size}"
        return text


def _layer_or_none(layer: object) -> str | None:
    if layer is None:
        return None
    text = str(layer).strip()
    return None if text in ("", POOLED) else text


def _size_or_none(size: object, where: str) -> int | None:
    if size is None:
        return None
    try:
        value = int(size)
    except (TypeError, ValueError):
        raise RankError(f"Candidate {where!r}: the input size must be a whole number of pixels, but got {size!r}.") from None
    if value < 8:
        raise RankError(f"Candidate {where!r}: the input size must be at least 8 pixels, but got {value}.")
    return value


def parse_candidates(values: Sequence[str | tuple | Candidate]) -> list[Candidate]:
    """Parse every candidate, dropping exact duplicates (first one kept).

    Raises:
        RankError: If a candidate is malformed, or none is given.
    """
    candidates = list(dict.fromkeys(Candidate.parse(v) for v in values))
    if not candidates:
        raise RankError("Name at least one candidate backbone, e.g. --candidates tv:mobilenet_v2.IMAGENET1K_V1,timm:tf_efficientnet_lite0.")
    return candidates


def _resolve_layer(layer: str, layers: Sequence[str]) -> str:
    """A layer name, ``pooled``, or a negative index into ``layers`` (``-1`` is the deepest stage)."""
    if layer.lstrip("-").isdigit() and layer.startswith("-"):
        index = int(layer)
        if -len(layers) <= index:
            return layers[index]
        raise LayerError(f"Layer index {layer} is out of range: the backbone has {len(layers)} layers ({', '.join(layers)}).")
    return layer


# --------------------------------------------------------------------------------------------------
# Combination
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Combination:
    """How scores become one ranking number per candidate.

    ``mean_rank``: each score ranks the candidates for which it is defined (ties share the mean
    rank); a candidate's position becomes a fraction in [0, 1] (1 = best, 0 = worst of those
    ranked); the combined value is the mean of its fractions over the combined scores that are
    defined for it. It needs no assumption about the scores' scales, and one extreme value cannot
    dominate. ``zscore``: each score is standardized over the candidates, and the combined value
    is the mean of a candidate's z-scores. A candidate with none of the combined scores defined
    gets no combined value and ranks last.

    Attributes:
        scores: The scores to combine (names from :data:`ALL_SCORES`).
        method: ``mean_rank`` or ``zscore``.
    """

    scores: tuple[str, ...]
    method: str = "mean_rank"

    def describe(self) -> str:
        how = "mean of rank positions" if self.method == "mean_rank" else "mean of z-scores"
        return f"{how} of {', '.join(self.scores)}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scores": list(self.scores), "description": self.describe()}


# Chosen by benchmarks/rank.py: among the combinations whose scores cost at most 0.7 CPU seconds per
# candidate on 2,000 images, the one with the best worst-dataset weighted Kendall tau against
# linear-probe test accuracy (Animal-MNIST and Fashion-MNIST, 12 candidates, 6 subsamples of 20
# images per class). See benchmarks/RESULTS.md, "Ranking", and docs/choosing-a-backbone.md.
DEFAULT_COMBINATION = Combination(scores=("leep", "knn"), method="mean_rank")
# Computed by default: the scores of the default combination (add others with ``scores=``).
DEFAULT_SCORES = ("leep", "knn")
COMBINE_METHODS = ("mean_rank", "zscore")


def combine_scores(values: Sequence[dict[str, float | None]], combination: Combination) -> list[float | None]:
    """Combine each candidate's scores into one number; higher is better.

    Args:
        values: One dict per candidate from score name to value (None when undefined).
        combination: Which scores, and how (see :class:`Combination`).

    Returns:
        One combined value per candidate, or None when none of the combined scores is defined.
    """
    from scipy.stats import rankdata

    if combination.method not in COMBINE_METHODS:
        raise RankError(f"Unknown combination method {combination.method!r}; use one of {', '.join(COMBINE_METHODS)}.")
    parts: list[list[float]] = [[] for _ in values]
    for name in combination.scores:
        defined = [i for i, row in enumerate(values) if _is_number(row.get(name))]
        if not defined:
            continue
        column = np.array([values[i][name] for i in defined], dtype=np.float64)
        if combination.method == "mean_rank":
            if len(defined) == 1:
                transformed = np.ones(1)
            else:
                transformed = (rankdata(column) - 1.0) / (len(defined) - 1.0)  # 1 = highest value
        else:
            spread = column.std()
            transformed = (column - column.mean()) / spread if spread > 0 else np.zeros_like(column)
        for i, value in zip(defined, transformed):
            parts[i].append(float(value))
    return [float(np.mean(p)) if p else None for p in parts]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


@dataclass
class RankRow:
    """One ranked candidate.

    Attributes:
        candidate: The candidate as ``NAME[#LAYER][@SIZE]``, with layer and size filled in.
        backbone: The backbone name.
        layer: The layer the features come from (``pooled`` for the penultimate one).
        image_size: The input side in pixels (None for text encoders and baselines).
        feature_dim: The width of the features.
        pretrained: False for a random initialisation.
        scores: Score name to value; None where the score is undefined.
        undefined: Score name to the reason it is undefined (only for undefined scores).
        combined: The combined value (higher is better), or None.
        rank: 1 for the best candidate.
        cost: The measured cost, or None with ``cost_error`` saying why.
        pareto: On the quality-versus-MACs Pareto front.
        pareto_speed: On the quality-versus-images/s Pareto front.
        store_hit: Features were read back from the store without running the network.
        load_seconds: Time to load the backbone (0 when the previous candidate had loaded it).
        extract_seconds: Time to extract (or read back) the subsample's features.
        cost_seconds: Time to measure the cost (0 when an identical architecture was measured).
        score_seconds: Time per score.
        n_samples: Rows the scores saw.
        weights_sha256: The sha256 of the backbone's weights (None for baselines); in the run's
            ``manifest.json``, not in ``rank.json``.
        store_key: The feature store key the features were read from or written to (None for
            baselines); in the run's ``manifest.json``, not in ``rank.json``.
    """

    candidate: str
    backbone: str
    layer: str
    image_size: int | None
    feature_dim: int
    pretrained: bool
    scores: dict[str, float | None]
    undefined: dict[str, str]
    combined: float | None = None
    rank: int = 0
    cost: Cost | None = None
    cost_error: str | None = None
    pareto: bool = False
    pareto_speed: bool = False
    store_hit: bool = False
    load_seconds: float = 0.0
    extract_seconds: float = 0.0
    cost_seconds: float = 0.0
    score_seconds: dict[str, float] = field(default_factory=dict)
    n_samples: int = 0
    weights_sha256: str | None = None
    store_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "candidate": self.candidate,
            "backbone": self.backbone,
            "layer": self.layer,
            "image_size": self.image_size,
            "feature_dim": self.feature_dim,
            "pretrained": self.pretrained,
            "combined": self.combined,
            "scores": {
                name: {"value": value, "reason": self.undefined.get(name)} if value is None else {"value": value}
                for name, value in self.scores.items()
            },
            "cost": self.cost.to_dict() if self.cost is not None else None,
            "cost_error": self.cost_error,
            "pareto": self.pareto,
            "pareto_speed": self.pareto_speed,
            "store_hit": self.store_hit,
            "n_samples": self.n_samples,
            "seconds": {
                "load": round(self.load_seconds, 3),
                "extract": round(self.extract_seconds, 3),
                "cost": round(self.cost_seconds, 3),
                "scores": {name: round(s, 3) for name, s in self.score_seconds.items()},
            },
        }


@dataclass
class RankTable:
    """The result of :func:`rank_backbones`: ranked rows, skipped candidates and the settings.

    Attributes:
        rows: Ranked candidates, best first.
        skipped: ``(candidate, reason)`` for candidates that could not be ranked.
        scores: The score names computed, in column order.
        combination: How the scores were combined.
        dataset: The dataset summary.
        sample: Rows, classes and rows per class of the scored subsample.
        seed: The seed of the subsample, the probes and the stochastic scores.
        seconds: Wall time of the whole ranking.
    """

    rows: list[RankRow]
    skipped: list[tuple[str, str]]
    scores: tuple[str, ...]
    combination: Combination
    dataset: dict[str, Any]
    sample: dict[str, int]
    seed: int
    seconds: float = 0.0

    SCHEMA_VERSION = 1

    @property
    def best(self) -> RankRow:
        """The top-ranked candidate."""
        if not self.rows:
            raise HeadstartError("The ranking is empty: every candidate was skipped.")
        return self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``schema_version`` changes when fields change meaning."""
        return {
            "schema_version": self.SCHEMA_VERSION,
            "dataset": self.dataset,
            "sample": self.sample,
            "seed": self.seed,
            "scores": list(self.scores),
            "combination": self.combination.to_dict(),
            "pareto_axes": {"pareto": "combined vs MACs", "pareto_speed": "combined vs images/s"},
            "rows": [row.to_dict() for row in self.rows],
            "skipped": [{"candidate": c, "reason": r} for c, r in self.skipped],
            "seconds": round(self.seconds, 3),
        }

    def to_csv(self) -> str:
        """One line per ranked candidate; undefined values are empty cells."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["rank", "candidate", "backbone", "layer", "image_size", "feature_dim", "combined", *self.scores,
             "params", "macs", "images_per_s", "peak_memory_mb", "pareto", "pareto_speed", "store_hit"]
        )
        for row in self.rows:
            cost = row.cost
            writer.writerow(
                [row.rank, row.candidate, row.backbone, row.layer, row.image_size, row.feature_dim, _cell(row.combined),
                 *[_cell(row.scores.get(name)) for name in self.scores],
                 cost.params if cost else "", cost.macs if cost else "",
                 f"{cost.images_per_s:.1f}" if cost else "", f"{cost.peak_memory_bytes / 1e6:.1f}" if cost else "",
                 row.pareto, row.pareto_speed, row.store_hit]
            )
        return buffer.getvalue()

    def write(self, out: str | Path) -> Path:
        """Write ``rank.json`` and ``rank.csv`` into the run directory ``out``; return ``out``."""
        import json

        from headstart.io import atomic_write_bytes

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "rank.json", (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        atomic_write_bytes(out / "rank.csv", self.to_csv().encode())
        return out


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# --------------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------------


def check_scores(scores: Sequence[str] | None, combine: Sequence[str] | None, method: str = "mean_rank") -> tuple[tuple[str, ...], Combination]:
    """Validate score names, the combined subset and the method; return (scores, combination).

    Raises:
        UnknownScoreError: A name is unknown, or a combined score is not computed.
        RankError: The method is unknown.
    """
    names = tuple(dict.fromkeys(DEFAULT_SCORES if scores is None else scores))
    if not names:
        raise UnknownScoreError(f"Name at least one score; known scores: {', '.join(ALL_SCORES)}.")
    for name in names:
        if name not in ALL_SCORES:
            raise UnknownScoreError(f"Unknown score {name!r}. Known scores: {', '.join(ALL_SCORES)}.{did_you_mean(name, ALL_SCORES)}")
    if method not in COMBINE_METHODS:
        raise RankError(f"Unknown combination method {method!r}; use one of {', '.join(COMBINE_METHODS)}.")
    if combine is None:
        combined = tuple(name for name in DEFAULT_COMBINATION.scores if name in names) or names
    else:
        combined = tuple(dict.fromkeys(combine))
        missing = [name for name in combined if name not in names]
        if missing or not combined:
            raise UnknownScoreError(
                f"Every combined score must also be computed, but {', '.join(missing) or 'none'} "
                f"is not among the scores ({', '.join(names)}). Add it to the scores, or combine a subset of them."
            )
    return names, Combination(scores=combined, method=method)


def _subsample_rows(data: Dataset, sample: int, seed: int) -> tuple[np.ndarray, int]:
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


def _expand(candidates: list[Candidate], layers: Sequence[str] | None) -> list[Candidate]:
    if not layers:
        return candidates
    expanded = []
    for candidate in candidates:
        if candidate.layer is not None:
            expanded.append(candidate)
            continue
        for layer in layers:
            expanded.append(Candidate(candidate.backbone, _layer_or_none(layer), candidate.image_size))
    return list(dict.fromkeys(expanded))


def _source_logits(backbone, layer: str, features: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The backbone's source-task logits for pooled features, or None and the reason there are none."""
    import torch

    spec = backbone.spec
    if backbone.source_head is None:
        return None, f"{spec.name} has no source-task classifier, so there are no source logits for LEEP."
    if layer != spec.default_layer:
        return None, f"LEEP needs the source classifier, which reads the pooled layer; this candidate uses layer {layer}."
    if not spec.pretrained:
        return None, f"{spec.name} is a random initialisation: its classifier was never trained on a source task."
    with torch.inference_mode():
        head = backbone.source_head.to("cpu").float()
        logits = head(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
    return logits.double().numpy(), None


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch and BLAS on one thread.

    The probes' fits are many small, latency-bound steps (L-BFGS on a few thousand rows); on a
    shared CPU, synchronizing a second thread costs more than it gains, by up to 10x in our runs.
    """
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


def _cv_accuracy(head_name: str, features: np.ndarray, labels: np.ndarray, seed: int, folds: int = 5) -> float:
    """Stratified k-fold accuracy of ``LinearProbe`` or ``KNNProbe`` on the subsample.

    Each probe is constructed with its defaults and ``random_state=seed``; the folds are seeded
    by ``seed`` too. kNN takes a shortcut with the same result (see :func:`_knn_cv_accuracy`).
    """
    from sklearn.model_selection import StratifiedKFold

    from headstart.heads import KNNProbe, LinearProbe

    counts = np.bincount(np.unique(labels, return_inverse=True)[1].reshape(-1))
    n_folds = int(min(folds, counts.min()))
    if n_folds < 2:
        raise ScoreUndefined(f"{head_name}: cross-validation needs at least 2 examples of every class, but the smallest class has {counts.min()}.")
    if head_name == "knn" and len(labels) <= _KNN_SHORTCUT_MAX_ROWS:
        return _knn_cv_accuracy(features, labels, seed, n_folds)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    correct = 0
    with _one_thread():
        for train, test in splitter.split(features, labels):
            head = LinearProbe(random_state=seed) if head_name == "linear" else KNNProbe(random_state=seed)
            head.fit(features[train], labels[train])
            correct += int(np.sum(head.predict(features[test]) == labels[test]))
    return correct / len(labels)


# Up to this many rows, kNN cross-validation reads one n x n distance matrix (32 MB at 2,000 rows).
_KNN_SHORTCUT_MAX_ROWS = 6000


def _knn_cv_accuracy(features: np.ndarray, labels: np.ndarray, seed: int, n_folds: int) -> float:
    """What fitting ``KNNProbe(random_state=seed)`` on each outer fold would score, 5x faster.

    KNNProbe (cosine metric, distance-weighted votes) chooses k by an inner stratified k-fold
    cross-validation on each outer training fold, which computes the distances between the same
    points 6 times over. Here the cosine distances of all pairs are computed once, and every outer
    and inner fold reads its block of that matrix; folds, k grid, tie rules and votes follow
    KNNProbe exactly (``tests/test_rank.py`` checks that the accuracies are equal).
    """
    from sklearn.model_selection import StratifiedKFold

    from headstart.heads import KNNProbe

    template = KNNProbe(random_state=seed)
    assert template.metric == "cosine", "the shortcut reproduces KNNProbe's cosine metric"
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    n_classes = int(codes.max()) + 1
    X = np.asarray(features, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    distance = np.clip(1.0 - X @ X.T, 0.0, None)

    correct = 0
    outer = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train, test in outer.split(X, codes):
        k = _knn_choose_k(distance, train, codes[train], n_classes, template)
        votes = _knn_votes(distance[np.ix_(test, train)], codes[train], n_classes, [k])[k]
        correct += int(np.sum(np.argmax(votes, axis=1) == codes[test]))
    return correct / len(codes)


def _knn_choose_k(distance: np.ndarray, train: np.ndarray, codes: np.ndarray, n_classes: int, template) -> int:
    """KNNProbe's inner cross-validation of k on the rows ``train`` of the distance matrix."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(codes, minlength=n_classes)
    n_splits = int(min(template.cv, counts.min()))
    folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=template.random_state).split(np.zeros(len(codes)), codes))
    smallest = min(len(inner_train) for inner_train, _ in folds)
    ks = sorted({min(int(k), smallest) for k in template.k_grid})
    correct = dict.fromkeys(ks, 0)
    for inner_train, inner_val in folds:
        block = distance[np.ix_(train[inner_val], train[inner_train])]
        tallies = _knn_votes(block, codes[inner_train], n_classes, ks)
        for k in ks:
            correct[k] += int(np.sum(np.argmax(tallies[k], axis=1) == codes[inner_val]))
    scores = [correct[k] for k in ks]
    return ks[int(np.argmax(scores))]


def _knn_votes(distances: np.ndarray, reference_codes: np.ndarray, n_classes: int, ks: list[int]) -> dict[int, np.ndarray]:
    """Distance-weighted votes of the nearest references, after each k in ``ks`` (KNNProbe's own code)."""
    from headstart.heads.knn import _vote_tallies, nearest_first

    nearest_distances, nearest = nearest_first(distances, max(ks))
    return _vote_tallies(nearest_distances, reference_codes[nearest], n_classes, ks)


def _compute(names: tuple[str, ...], features: np.ndarray, labels: np.ndarray, logits: np.ndarray | None, logits_reason: str | None, seed: int) -> tuple[dict[str, float | None], dict[str, str], dict[str, float]]:
    """Every requested score: values, reasons for the undefined ones, and seconds per score."""
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        try:
            if name in PROBES:
                result: float | ScoreUndefined = _cv_accuracy(name, features, labels, seed)
            elif name == "leep":
                if logits is None:
                    raise ScoreUndefined(logits_reason or "no source logits")
                result = leep(features, labels, source_logits=logits)
            else:
                # NCE clusters the features for every candidate (never source labels), so that
                # candidates with and without a source head compare on the same footing.
                result = compute_scores(features, labels, None, [name])[name]
        except ScoreUndefined as undefined:
            result = undefined
        except Exception as error:  # noqa: BLE001 - one failing score must not hide the others
            result = ScoreUndefined(f"{name} failed: {type(error).__name__}: {error}")
        seconds[name] = time.perf_counter() - started
        if isinstance(result, ScoreUndefined):
            values[name] = None
            reasons[name] = result.reason
        elif not math.isfinite(result):
            values[name] = None
            reasons[name] = f"{name} is not finite ({result}) on these features."
        else:
            values[name] = float(result)
    return values, reasons, seconds


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
) -> RankTable:
    """Rank candidate backbones on a stratified subsample of ``data``'s training split.

    Args:
        candidates: Backbone names written ``NAME[#LAYER][@SIZE]``, ``(name, layer[, size])``
            tuples, or :class:`Candidate` objects.
        data: A single-label dataset from :func:`headstart.load_data`.
        scores: Scores to compute, from :data:`ALL_SCORES` (the transferability scores of
            :data:`headstart.select.SCORES` and the probes ``linear`` and ``knn``). None computes
            :data:`DEFAULT_SCORES`, plus ``linear`` (also combined) when a baseline such as
            ``sk:tfidf`` is among the candidates, since the linear probe is its only score.
        combine: The scores that make the combined rank; None takes those of
            :data:`DEFAULT_COMBINATION` that are computed (all computed scores if none is).
        method: ``mean_rank`` or ``zscore`` (see :class:`Combination`).
        sample: Rows to score: at most ``sample // n_classes`` per class, from the training split.
        layers: Rank every candidate that names no layer at each of these layers instead: layer
            names, ``pooled``, or negative indices into ``spec.layers`` (``-1`` is the deepest stage).
        image_size: Input size for candidates that do not give their own; None keeps each
            backbone's.
        pool: Pooling of intermediate layers.
        seed: Seed of the subsample, the probes' folds and the stochastic scores.
        cost: Measure each candidate's cost (parameters, MACs, images/s, peak memory).
        device: Device for extraction and cost: ``cpu``, ``cuda``, or None for automatic.
        store: A :class:`~headstart.features.FeatureStore`; None uses the default one.
        quiet: No progress bars or messages.
        progress: Called with a one-line message per step (default: stderr unless ``quiet``).

    Returns:
        A :class:`RankTable`, best candidate first.

    Raises:
        DataError: The data has fewer than 2 classes, or fewer samples than classes, or every
            candidate was skipped.
        UnknownScoreError: A score name is unknown.
        RankError: A candidate or the combination method is malformed.
    """
    from headstart.backbones import load_backbone
    from headstart.features import FeatureStore, extract
    from headstart.features.extract import store_key

    started = time.perf_counter()
    names, combination = check_scores(scores, combine, method)
    plan = _expand(parse_candidates(candidates), layers)
    if scores is None and "linear" not in names and any(c.backbone in BASELINES for c in plan):
        # A baseline (sk:tfidf) has only the linear probe; without it, it could not be compared.
        names += ("linear",)
        if combine is None:
            combination = Combination(combination.scores + ("linear",), combination.method)
    rows_index, per_class = _subsample_rows(data, sample, seed)
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
                loaded = (candidate.backbone, load_backbone(candidate.backbone))
            backbone = loaded[1]
            layer = backbone.check_layer(_resolve_layer(candidate.layer, backbone.spec.layers) if candidate.layer else None)
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
        whole_key = store_key(spec, layer, pool, fingerprint_full)
        if store.meta(whole_key) is not None:
            features = extract(backbone, data, layer=layer, pool=pool, image_size=size, device=device, store=store, quiet=quiet)
            X, valid, labels = features.X[rows_index], features.valid[rows_index], data.labels[rows_index]
        else:
            # Batches of the cost measurement's size: the timing then needs no warm-up pass.
            features = extract(
                backbone, sub, layer=layer, pool=pool, image_size=size, batch_size=COST_BATCH, device=device, store=store, quiet=quiet
            )
            X, valid, labels = features.X, features.valid, sub.labels
        X, labels = X[valid], labels[valid]

        logits, logits_reason = (None, None)
        if "leep" in names:
            logits, logits_reason = _source_logits(backbone, layer, X)
        values, reasons, seconds = _compute(names, X, labels, logits, logits_reason, seed)

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

    _finish(rows, combination)
    return RankTable(
        rows=rows,
        skipped=skipped,
        scores=names,
        combination=combination,
        dataset=data.summary(),
        sample={"n_samples": len(rows_index), "n_classes": int(np.unique(data.labels[rows_index]).size), "max_per_class": int(per_class)},
        seed=seed,
        seconds=time.perf_counter() - started,
    )


# Candidates that are not backbones: baselines fitted on the raw inputs, scored by the same probes.
BASELINES = ("sk:tfidf",)


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


def _finish(rows: list[RankRow], combination: Combination) -> None:
    """Combine, sort best first, number the ranks, and mark the Pareto fronts (in place)."""
    combined = combine_scores([row.scores for row in rows], combination)
    for row, value in zip(rows, combined):
        row.combined = value
    rows.sort(key=lambda row: (row.combined is None, -(row.combined or 0.0)))
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    quality = [row.combined for row in rows]
    macs = [row.cost.macs if row.cost else None for row in rows]
    speed = [row.cost.images_per_s if row.cost else None for row in rows]
    for row, on_front in zip(rows, pareto_front(quality, macs)):
        row.pareto = on_front
    for row, on_front in zip(rows, pareto_front(quality, speed, lower_cost_is_better=False)):
        row.pareto_speed = on_front


def _default_progress(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    from headstart.console import err_console

    return lambda message: err_console.print(message, highlight=False)


# --------------------------------------------------------------------------------------------------
# Console output
# --------------------------------------------------------------------------------------------------


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3f}"


def print_rank_table(table: RankTable, title: str | None = None, console=None) -> None:
    """Print the ranking as a rich table, then the reasons for every n/a and every skip."""
    from rich.table import Table

    from headstart.console import console as default_console

    console = console or default_console
    output = Table(title=title or f"ranking ({table.combination.describe()}; {table.sample['n_samples']} images)")
    output.add_column("#", justify="right")
    output.add_column("candidate")
    output.add_column("combined", justify="right")
    for name in table.scores:
        output.add_column(name, justify="right")
    for column in ("params", "MMACs", "img/s", "peak MB", "front"):
        output.add_column(column, justify="right")
    for row in table.rows:
        cost = row.cost
        output.add_row(
            str(row.rank),
            row.candidate,
            _format(row.combined),
            *[_format(row.scores.get(name)) for name in table.scores],
            f"{cost.params / 1e6:.2f}M" if cost else "n/a",
            f"{cost.macs / 1e6:.0f}" if cost else "n/a",
            f"{cost.images_per_s:.0f}" if cost else "n/a",
            f"{cost.peak_memory_bytes / 1e6:.0f}" if cost else "n/a",
            "*" if row.pareto else "",
        )
    if not console.is_terminal and console.width < 200:
        # Piped output is not cut to 80 columns: a table of "tim…" cells helps nobody.
        from rich.console import Console

        console = Console(file=console.file, width=200)
    console.print(output)
    notes = []
    seen: set[tuple[str, str]] = set()
    for row in table.rows:
        for name, reason in row.undefined.items():
            if (name, reason) not in seen:
                seen.add((name, reason))
                notes.append(f"n/a {name} ({row.candidate}): {reason}")
        if row.cost_error:
            notes.append(f"n/a cost ({row.candidate}): {row.cost_error}")
    for candidate, reason in table.skipped:
        notes.append(f"skipped {candidate}: {reason}")
    notes.append("front: * = on the Pareto front of combined score vs MACs (no candidate is both better and cheaper).")
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
