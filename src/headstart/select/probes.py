"""The scores of one ranked candidate: the direct probes (cross-validated linear and kNN accuracy),
the transferability scores, and the source logits that LEEP reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from headstart.select.combine import PROBES
from headstart.errors import DataError
from headstart.select.scores import ScoreUndefined, compute_scores, leep, ridge_loo
from headstart.select.scores.common import NUMERICAL_FAILURES, undefined_after

__all__ = ["compute_rank_scores", "cv_accuracy", "knn_cv_accuracy", "one_thread", "source_logits"]


def source_logits(backbone, layer: str, features: np.ndarray) -> tuple[np.ndarray | None, str | None]:
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
def one_thread() -> Iterator[None]:
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


def cv_accuracy(head_name: str, features: np.ndarray, labels: np.ndarray, seed: int, folds: int = 5) -> float:
    """Stratified k-fold accuracy of ``LinearProbe`` or ``KNNProbe`` on the subsample.

    Each probe is constructed with its defaults and ``random_state=seed``; the folds are seeded
    by ``seed`` too. kNN takes a shortcut with the same result (see :func:`knn_cv_accuracy`).
    """
    from sklearn.model_selection import StratifiedKFold

    from headstart.heads import KNNProbe, LinearProbe

    counts = np.bincount(np.unique(labels, return_inverse=True)[1].reshape(-1))
    n_folds = int(min(folds, counts.min()))
    if n_folds < 2:
        raise ScoreUndefined(f"{head_name}: cross-validation needs at least 2 examples of every class, but the smallest class has {counts.min()}.")
    if head_name == "knn" and len(labels) <= _KNN_SHORTCUT_MAX_ROWS:
        return knn_cv_accuracy(features, labels, seed, n_folds)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    correct = 0
    with one_thread():
        for train, test in splitter.split(features, labels):
            head = LinearProbe(random_state=seed) if head_name == "linear" else KNNProbe(random_state=seed)
            try:
                head.fit(features[train], labels[train])
            except DataError as error:  # e.g. too few examples of a class for the head's own split
                raise ScoreUndefined(f"{head_name}: {error}") from error
            correct += int(np.sum(head.predict(features[test]) == labels[test]))
    return correct / len(labels)


# Up to this many rows, kNN cross-validation reads one n x n distance matrix (32 MB at 2,000 rows).
_KNN_SHORTCUT_MAX_ROWS = 6000


def knn_cv_accuracy(features: np.ndarray, labels: np.ndarray, seed: int, n_folds: int) -> float:
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
    if n_splits < 2:  # KNNProbe raises DataError here
        raise ScoreUndefined(
            f"knn: KNNProbe chooses k by stratified cross-validation, which needs at least 2 examples of "
            f"every class in each training fold, but one fold has {counts.min()} of some class. Give more "
            "examples of the smallest classes."
        )
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
    from headstart.heads.knn import vote_tallies, nearest_first

    nearest_distances, nearest = nearest_first(distances, max(ks))
    return vote_tallies(nearest_distances, reference_codes[nearest], n_classes, ks)


def compute_rank_scores(
    names: tuple[str, ...],
    features: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray | None,
    logits_reason: str | None,
    seed: int,
    details: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, float | None], dict[str, str], dict[str, float]]:
    """Every requested score: values, reasons for the undefined ones, and seconds per score.

    A score that is undefined on these inputs, or fails numerically (see
    :data:`~headstart.select.scores.common.NUMERICAL_FAILURES`), gets None and its reason; any
    other exception is a bug and propagates. When ``details`` is a dict and ``ridge`` is computed,
    ``details["ridge"]`` receives every sample's leave-one-out correctness, from which a ranking
    says how far apart two candidates are on the same samples.
    """
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        try:
            if name in PROBES:
                result: float | ScoreUndefined = cv_accuracy(name, features, labels, seed)
            elif name == "ridge":
                loo = ridge_loo(features, labels)
                if details is not None:
                    details["ridge"] = loo.correct
                result = loo.accuracy
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
        except NUMERICAL_FAILURES as error:  # one numerical failure must not hide the other scores
            result = undefined_after(name, error)
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
