"""The TF-IDF + logistic regression baseline: a classifier on raw texts, with no backbone at all.

It is the text counterpart of "raw pixels + logistic regression": the number a pretrained encoder
must beat. On some tasks (spam, topic words, product codes) it does beat frozen sentence
embeddings, and ranking shows that when it happens: ``sk:tfidf`` is a candidate of
:func:`headstart.workflows.rank.rank_backbones` beside the backbones.

Unlike the other heads it reads texts, not features, so it never goes through the feature store:
its "features" are fitted on the training texts themselves (vocabulary and IDF weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from headstart.errors import DataError, NotFittedError

CANDIDATE = "sk:tfidf"


class TfidfLogReg(ClassifierMixin, BaseEstimator):
    """Word n-gram TF-IDF features and logistic regression, with C chosen by cross-validation.

    Args:
        ngram_range: Word n-gram sizes, ``(1, 2)`` for words and word pairs.
        min_df: Drop n-grams seen in fewer documents.
        max_features: Keep at most this many n-grams (the most frequent).
        sublinear_tf: Use ``1 + log(tf)`` instead of raw counts.
        Cs: Inverse regularisation strengths to try; the best by cross-validated accuracy wins.
        cv: Cross-validation folds for choosing C (fewer when a class is small).
        class_weight: ``None`` or ``"balanced"``.
        random_state: Seed of the folds.

    Attributes:
        classes_: Class labels (single-label), or ``arange(n_labels)`` (multi-label).
        pipeline_: The fitted scikit-learn pipeline (vectorizer, classifier).
        C_: The chosen C.
        cv_score_: Its mean cross-validated accuracy (subset accuracy for multi-label).
        vocabulary_size_: Number of n-grams kept.
        multilabel_: Whether ``y`` was a multi-label indicator matrix.
    """

    def __init__(
        self,
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int = 1,
        max_features: int | None = 50_000,
        sublinear_tf: bool = True,
        Cs: Sequence[float] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
        cv: int = 5,
        class_weight: str | None = None,
        random_state: int | None = None,
    ) -> None:
        self.ngram_range = ngram_range
        self.min_df = min_df
        self.max_features = max_features
        self.sublinear_tf = sublinear_tf
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.random_state = random_state

    def _pipeline(self, multilabel: bool, binary: bool):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.pipeline import Pipeline

        vectorizer = TfidfVectorizer(
            ngram_range=tuple(self.ngram_range), min_df=self.min_df, max_features=self.max_features, sublinear_tf=self.sublinear_tf,
        )
        # liblinear is several times faster on sparse binary problems (each label of a multi-label one is binary).
        solver = "liblinear" if binary or multilabel else "lbfgs"
        classifier = LogisticRegression(solver=solver, max_iter=2000, class_weight=self.class_weight)
        if multilabel:
            classifier = OneVsRestClassifier(classifier)
        return Pipeline([("tfidf", vectorizer), ("clf", classifier)])

    def fit(self, X: Sequence[str], y) -> TfidfLogReg:
        """Fit on texts ``X`` and labels ``y`` (1-D, or a 0/1 indicator matrix for multi-label).

        Raises:
            DataError: ``X`` is not a list of non-empty strings, or its length differs from ``y``'s.
        """
        from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

        texts = check_texts(X, type(self).__name__)
        y = np.asarray(y)
        if len(y) != len(texts):
            raise DataError(f"{type(self).__name__}: {len(texts)} texts but {len(y)} labels; they must match.")
        multilabel = y.ndim == 2
        self.multilabel_ = multilabel
        binary = not multilabel and len(np.unique(y)) == 2
        if multilabel:
            self.classes_ = np.arange(y.shape[1])
            splitter = KFold(n_splits=max(2, min(self.cv, len(y))), shuffle=True, random_state=self.random_state)
            name = "clf__estimator__C"
        else:
            self.classes_, counts = np.unique(y, return_counts=True)
            if len(self.classes_) < 2:
                raise DataError(f"{type(self).__name__}: y has one class ({self.classes_[0]!r}); a classifier needs at least 2.")
            folds = int(min(self.cv, counts.min()))
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state) if folds >= 2 else None
            name = "clf__C"
        Cs = [float(c) for c in self.Cs]
        if splitter is None or len(Cs) == 1:
            self.C_ = Cs[len(Cs) // 2]
            self.cv_score_ = None
            self.pipeline_ = self._pipeline(multilabel, binary).set_params(**{name: self.C_}).fit(texts, y)
        else:
            search = GridSearchCV(self._pipeline(multilabel, binary), {name: Cs}, cv=splitter, refit=True, n_jobs=1)
            search.fit(texts, y)
            self.C_ = float(search.best_params_[name])
            self.cv_score_ = float(search.best_score_)
            self.pipeline_ = search.best_estimator_
        self.vocabulary_size_ = len(self.pipeline_.named_steps["tfidf"].vocabulary_)
        return self

    def _check_fitted(self, X) -> list[str]:
        if not hasattr(self, "pipeline_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet. Call fit(texts, y) first.")
        return check_texts(X, type(self).__name__, allow_empty=True)

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Class probabilities (N, C); for multi-label, each label's probability on its own."""
        texts = self._check_fitted(X)
        return np.asarray(self.pipeline_.predict_proba(texts))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        """Class labels (N,), or a 0/1 indicator matrix (N, L) for multi-label."""
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= 0.5).astype(np.int64)
        return self.classes_[np.argmax(proba, axis=1)]


def check_texts(X, where: str, allow_empty: bool = False) -> list[str]:
    """``X`` as a list of strings, or a DataError that says what came instead."""
    if isinstance(X, str):
        raise DataError(f"{where} takes a list of texts, not a single string; wrap it: [text].")
    texts = list(X)
    if not texts and not allow_empty:
        raise DataError(f"{where}: no texts to fit on.")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{where} takes texts, but item {position} is a {type(text).__name__}. Pass raw strings (it needs no backbone).")
    return texts


def cv_accuracy(texts: Sequence[str], labels: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Stratified k-fold accuracy of :class:`TfidfLogReg` (C chosen inside each fold, by 3-fold CV).

    This is the ``linear`` probe of the ``sk:tfidf`` rank candidate: the same folds and the same
    measure as a backbone's linear probe, on raw texts instead of features.
    """
    from sklearn.model_selection import StratifiedKFold

    texts = check_texts(texts, CANDIDATE)
    labels = np.asarray(labels)
    counts = np.unique(labels, return_counts=True)[1]
    n_folds = int(min(folds, counts.min()))
    if n_folds < 2:
        raise DataError(f"{CANDIDATE}: cross-validation needs at least 2 examples of every class, but the smallest class has {counts.min()}.")
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    correct = 0
    for train, test in splitter.split(np.zeros(len(labels)), labels):
        model = TfidfLogReg(cv=3, random_state=seed).fit([texts[i] for i in train], labels[train])
        correct += int(np.sum(model.predict([texts[i] for i in test]) == labels[test]))
    return correct / len(labels)


def rank_scores(names: Sequence[str], texts: Sequence[str], labels: np.ndarray, seed: int = 0) -> tuple[dict[str, float | None], dict[str, str], dict[str, float], int]:
    """The ``sk:tfidf`` candidate's scores for :func:`headstart.workflows.rank.rank_backbones`.

    Only ``linear`` is defined: the cross-validated accuracy of :class:`TfidfLogReg`
    (:func:`cv_accuracy`), the same measure as a backbone's linear probe. The transferability scores
    and ``knn`` need one fixed feature space, and TF-IDF has none: its vocabulary and weights are
    fitted on each fold's training texts.

    Returns:
        Values (None where undefined), the reason for each undefined score, seconds per score,
        and the vocabulary size of TF-IDF fitted on all the texts (its feature width).
    """
    import time

    from sklearn.feature_extraction.text import TfidfVectorizer

    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        if name == "linear":
            try:
                values[name] = cv_accuracy(texts, labels, seed=seed)
            except DataError as error:
                values[name] = None
                reasons[name] = str(error)
        else:
            values[name] = None
            reasons[name] = (
                f"{CANDIDATE} has no fixed feature space (its vocabulary is fitted on each fold's texts), so only the linear "
                "probe, its cross-validated accuracy, is defined."
            )
        seconds[name] = time.perf_counter() - started
    width = len(TfidfVectorizer(ngram_range=(1, 2), max_features=50_000).fit(list(texts)).vocabulary_)
    return values, reasons, seconds, width
