"""The k-nearest-neighbour probe: distance-weighted votes of the closest training features.

With ``metric="cosine"`` the features are L2-normalized once at fit time, so that a distance is
``1 - dot product``; with ``metric="l2"`` it is the Euclidean distance. Distances come from one matrix
product per block of queries. When ``n_neighbors`` is not given, k is chosen by stratified k-fold
cross-validation from a small grid: each fold sorts the neighbours once up to the largest k and
scores every k from that one ordering.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.model_selection import StratifiedKFold

from headstart.errors import DataError
from headstart.heads._base import HeadBase, python_scalar

METRICS = ("cosine", "l2")

# Added to distances before inverting them into vote weights, so that an exact duplicate of a
# training example (distance 0) gets a very large but finite weight.
DISTANCE_EPS = 1e-9


class KNNProbe(HeadBase):
    """k-nearest-neighbour classifier with distance-weighted votes and k chosen by cross-validation.

    Args:
        n_neighbors: A fixed k. ``None`` chooses k from ``k_grid`` by cross-validation.
        k_grid: The k values to try; values above the size of a training fold are capped to it.
        metric: ``"cosine"`` (L2-normalize, then dot product) or ``"l2"`` (Euclidean distance).
        cv: The number of stratified folds (at most the size of the smallest class).
        batch_size: Queries per block of the distance matrix, to bound memory.
        random_state: Seed for shuffling the folds.

    Attributes:
        classes_: The class labels.
        n_features_in_: The number of features seen in ``fit``.
        fit_X_: The training features (L2-normalized for the cosine metric).
        fit_y_: The class index of each training example.
        n_neighbors_: The k used to predict.
        cv_curve_: The ``(k, cross-validated accuracy)`` pairs evaluated; empty when k was fixed.
    """

    _state_arrays = ("fit_X_", "fit_y_")
    _state_meta = ("n_neighbors_", "cv_curve_")

    def __init__(
        self,
        n_neighbors: int | None = None,
        k_grid: tuple[int, ...] = (1, 3, 5, 10, 20, 50),
        metric: str = "cosine",
        cv: int = 5,
        batch_size: int = 1024,
        random_state: int | None = 0,
    ):
        self.n_neighbors = n_neighbors
        self.k_grid = k_grid
        self.metric = metric
        self.cv = cv
        self.batch_size = batch_size
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = False
        tags.classifier_tags.multi_label = False
        return tags

    def fit(self, X, y) -> KNNProbe:
        """Store the training features and choose k.

        Args:
            X: Features, shape ``(n_samples, n_features)``.
            y: Class labels, shape ``(n_samples,)``.

        Returns:
            The fitted probe.

        Raises:
            DataError: If ``X`` is not finite, ``y`` is multi-label or has one class, or a class has
                fewer than 2 examples while k is to be chosen by cross-validation.
            ValueError: If a hyper-parameter is invalid.
        """
        X, targets = self._validate_fit_data(X, y)
        name = type(self).__name__
        if targets.multilabel:
            raise DataError(
                f"{name} supports single-label targets of shape (n,), but y is a multi-label indicator "
                f"matrix of shape {targets.indicator.shape}. Use LinearProbe or MLPHead for multi-label data."
            )
        if self.metric not in METRICS:
            raise ValueError(f"{name}: metric must be one of {METRICS}, got {self.metric!r}.")
        self._check_k(self.batch_size, "batch_size")
        n = len(X)
        reference = self._prepare(X)
        codes = targets.codes

        cv_curve = []
        if self.n_neighbors is not None:
            k = self._check_k(self.n_neighbors, "n_neighbors")
            if k > n:
                raise ValueError(
                    f"{name}: n_neighbors={k}, but there are only {n} training examples. "
                    f"Set n_neighbors to at most {n}, or None to choose k by cross-validation."
                )
        else:
            cv_curve = self._cross_validate(reference, codes, targets.classes)
            scores = [score for _, score in cv_curve]
            k = cv_curve[int(np.argmax(scores))][0]

        self.fit_X_ = reference
        self.fit_y_ = codes
        self.n_neighbors_ = int(k)
        self.cv_curve_ = cv_curve
        self.classes_ = targets.classes
        self.multilabel_ = False
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Return the distance-weighted vote share of each class, shape ``(n, n_classes)``."""
        X = self._validate_predict_X(X)
        distances, indices = self._neighbors(self._prepare(X), self.fit_X_, self.n_neighbors_)
        votes = vote_tallies(distances, self.fit_y_[indices], len(self.classes_), [self.n_neighbors_])
        proba = votes[self.n_neighbors_]
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Return the class with the largest weighted vote for each row of ``X``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def _check_k(self, k, param: str) -> int:
        """Return ``k`` as an int, or raise a ``ValueError`` unless it is a positive integer."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"{type(self).__name__}: {param} must be a positive integer, got {k!r}.")
        return int(k)

    def _cross_validate(self, reference: np.ndarray, codes: np.ndarray, classes: np.ndarray) -> list:
        """Return ``[(k, accuracy), ...]`` from stratified k-fold cross-validation."""
        name = type(self).__name__
        counts = np.bincount(codes, minlength=len(classes))
        too_small = [
            f"{python_scalar(classes[i])!r} ({counts[i]} example)" for i in np.flatnonzero(counts < 2)
        ]
        if too_small:
            raise DataError(
                f"{name} chooses k by stratified cross-validation, which needs at least 2 examples of every "
                f"class, but these classes have fewer: {', '.join(too_small)}. Give more examples of those "
                "classes, or fix k (for example n_neighbors=1)."
            )
        n_splits = self._check_k(self.cv, "cv")
        if n_splits < 2:
            raise ValueError(f"{name}: cv must be at least 2, got {self.cv!r}.")
        n_splits = min(n_splits, int(counts.min()))
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
        folds = list(splitter.split(reference, codes))
        smallest_train_fold = min(len(train) for train, _ in folds)
        grid = [self._check_k(k, "k_grid entry") for k in self.k_grid]
        if not grid:
            raise ValueError(f"{name}: k_grid must hold at least one k, got {self.k_grid!r}.")
        ks = sorted({min(k, smallest_train_fold) for k in grid})

        correct = dict.fromkeys(ks, 0)
        for train, val in folds:
            distances, indices = self._neighbors(reference[val], reference[train], ks[-1])
            tallies = vote_tallies(distances, codes[train][indices], len(classes), ks)
            for k in ks:
                correct[k] += int(np.sum(np.argmax(tallies[k], axis=1) == codes[val]))
        return [(k, correct[k] / len(codes)) for k in ks]

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        """L2-normalize rows for the cosine metric; leave them as they are for l2."""
        if self.metric == "cosine":
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            return X / np.maximum(norms, np.finfo(np.float64).tiny)
        return X

    def _neighbors(self, queries: np.ndarray, reference: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        """Return the distances and indices of the ``k`` nearest references, nearest first."""
        reference_sq = np.einsum("ij,ij->i", reference, reference)
        all_distances = []
        all_indices = []
        for start in range(0, len(queries), self.batch_size):
            block = queries[start : start + self.batch_size]
            products = block @ reference.T
            if self.metric == "cosine":
                distances = np.clip(1.0 - products, 0.0, None)
            else:
                block_sq = np.einsum("ij,ij->i", block, block)
                squared = block_sq[:, None] + reference_sq[None, :] - 2.0 * products
                distances = np.sqrt(np.clip(squared, 0.0, None))
            nearest_distances, nearest = nearest_first(distances, k)
            all_distances.append(nearest_distances)
            all_indices.append(nearest)
        return np.concatenate(all_distances), np.concatenate(all_indices)


def nearest_first(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest distances of each row and their column indices, nearest first (ties by column).

    Ties are settled by column everywhere, also at the k-th place: of several columns as far as the
    k-th neighbour, the lowest-numbered ones are taken (as ONNX's TopK does, so exported kNN heads agree).
    """
    n = distances.shape[1]
    if k < n:
        kth = np.partition(distances, k - 1, axis=1)[:, k - 1 : k]
        columns = np.arange(n)
        # Strictly nearer columns all belong; among those exactly at the k-th distance, the lowest columns.
        key = np.where(distances < kth, -1, np.where(distances == kth, columns, n + 1))
        nearest = np.sort(np.argpartition(key, k - 1, axis=1)[:, :k], axis=1)
    else:
        nearest = np.broadcast_to(np.arange(n), distances.shape).copy()
    nearest_distances = np.take_along_axis(distances, nearest, axis=1)
    order = np.argsort(nearest_distances, axis=1, kind="stable")
    return np.take_along_axis(nearest_distances, order, axis=1), np.take_along_axis(nearest, order, axis=1)


def vote_tallies(distances: np.ndarray, labels: np.ndarray, n_classes: int, ks: list[int]) -> dict:
    """Add up distance-weighted votes neighbour by neighbour; return the tallies after each k in ``ks``.

    Args:
        distances: Distances to the neighbours, nearest first, shape ``(n, k_max)``.
        labels: Class index of each neighbour, shape ``(n, k_max)``.
        n_classes: The number of classes.
        ks: The k values (ascending, at most ``k_max``) to return the tallies for.

    Returns:
        ``{k: votes of shape (n, n_classes)}``.
    """
    weights = 1.0 / (distances + DISTANCE_EPS)
    rows = np.arange(len(distances))
    votes = np.zeros((len(distances), n_classes))
    tallies = {}
    wanted = set(ks)
    for j in range(max(ks)):
        votes[rows, labels[:, j]] += weights[:, j]
        if j + 1 in wanted:
            tallies[j + 1] = votes.copy()
    return tallies
