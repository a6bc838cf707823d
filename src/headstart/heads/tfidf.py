"""The TF-IDF + logistic regression baseline: a classifier on raw texts, with no backbone at all.

It is the text counterpart of "raw pixels + logistic regression": the number a pretrained encoder
must beat. On some tasks (spam, topic words, product codes) it does beat frozen sentence
embeddings, and ranking shows that when it happens: ``sk:tfidf`` is a candidate of
:func:`headstart.workflows.rank.rank_backbones` beside the backbones.

Unlike the other heads it reads texts, not features, so it never goes through the feature store:
its "features" are fitted on the training texts themselves (vocabulary and IDF weights).

``sk:tfidf`` is also a backbone name that ``headstart probe`` trains (with the ``linear`` head: this
very classifier) and a bundle kind (``tfidf``) that ``headstart predict`` loads. A fitted model's
state is plain data, no pickle: :meth:`TfidfLogReg.fitted` gives a :class:`FittedTfidf` (vocabulary,
IDF weights, vectorizer settings, and the logistic regression's weights), which predicts the same
probabilities with numpy and scipy alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from headstart.errors import DataError, NotFittedError, UnknownBackboneError, did_you_mean

CANDIDATE = "sk:tfidf"
# Names under the ``sk:`` prefix: baselines fitted on the raw inputs (no network, no feature store).
PREFIX = "sk:"
BASELINES = (CANDIDATE,)
# The heads a baseline trains with: ``linear`` is its own logistic regression. kNN and the MLP need
# one fixed dense feature space; TF-IDF's is sparse and fitted on the training texts.
BASELINE_HEADS = ("linear",)


def is_baseline(name: str) -> bool:
    """Whether a backbone name is under the ``sk:`` prefix (a baseline, not a network)."""
    return isinstance(name, str) and name.strip().startswith(PREFIX)


def check_baseline(name: str, modality: str | None = None, source: str = "this dataset") -> str:
    """The baseline's name, checked: a known ``sk:`` name and, when ``modality`` is given, text data.

    Raises:
        UnknownBackboneError: An ``sk:`` name other than ``sk:tfidf``.
        DataError: The data is not text (``source`` names it).
    """
    name = name.strip()
    if name not in BASELINES:
        raise UnknownBackboneError(f"{name!r} is not a baseline headstart knows; the sk: prefix has {', '.join(BASELINES)}.{did_you_mean(name, BASELINES)}")
    if modality is not None and modality != "text":
        raise DataError(
            f"{name} is a text baseline (TF-IDF + logistic regression on raw texts), but {source} holds {modality} data. "
            "Use an image backbone, e.g. -b tv:mobilenet_v2.IMAGENET1K_V1."
        )
    return name


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

    def fitted(self) -> FittedTfidf:
        """The fitted model as plain data (see :class:`FittedTfidf`): it predicts the same probabilities."""
        if not hasattr(self, "pipeline_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet. Call fit(texts, y) first.")
        vectorizer = self.pipeline_.named_steps["tfidf"]
        classifier = self.pipeline_.named_steps["clf"]
        params = vectorizer.get_params()
        settings = {key: params[key] for key in SETTINGS}
        settings["ngram_range"] = [int(n) for n in settings["ngram_range"]]
        terms = [""] * len(vectorizer.vocabulary_)
        for term, column in vectorizer.vocabulary_.items():
            terms[column] = term
        if self.multilabel_:
            mode = "multilabel"
            coef, intercept = _one_vs_rest_weights(classifier, len(terms))
        else:
            mode = "binary" if len(self.classes_) == 2 else "multinomial"
            coef, intercept = classifier.coef_, classifier.intercept_
        return FittedTfidf(
            settings=settings, terms=terms, idf=np.asarray(vectorizer.idf_, np.float64), coef=np.asarray(coef, np.float64),
            intercept=np.asarray(intercept, np.float64), classes=np.asarray(self.classes_), mode=mode,
            info={"C": self.C_, "cv_score": self.cv_score_, "Cs": [float(c) for c in self.Cs], "cv": self.cv, "class_weight": self.class_weight},
        )


# The vectorizer settings a fitted model records: those that change how a text becomes a vector
# (the rest of TfidfVectorizer's defaults are fixed by TfidfLogReg), plus the fit-time ones for the record.
SETTINGS = (
    "analyzer", "lowercase", "token_pattern", "strip_accents", "stop_words", "ngram_range", "binary", "norm", "use_idf",
    "sublinear_tf", "smooth_idf", "min_df", "max_df", "max_features",
)
MODES = ("binary", "multinomial", "multilabel")


def _one_vs_rest_weights(classifier, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-label weights of a multi-label one-vs-rest model; a label constant in training gets +-inf bias."""
    coef = np.zeros((len(classifier.estimators_), width))
    intercept = np.zeros(len(classifier.estimators_))
    for label, estimator in enumerate(classifier.estimators_):
        if hasattr(estimator, "coef_"):
            coef[label], intercept[label] = estimator.coef_[0], estimator.intercept_[0]
        else:  # scikit-learn's constant predictor: the label was always (or never) on
            intercept[label] = np.inf if float(np.ravel(estimator.y_)[0]) >= 0.5 else -np.inf
    return coef, intercept


class FittedTfidf:
    """A fitted TF-IDF + logistic regression model as plain data: no pickle, no scikit-learn estimator.

    Texts are split into n-grams by scikit-learn's own analyzer with the recorded settings, so the
    vectors are those of the fitted ``TfidfVectorizer``; the rest is numpy and scipy.

    Args:
        settings: The vectorizer settings (:data:`SETTINGS`).
        terms: The vocabulary, in column order.
        idf: IDF weight of each term (V,).
        coef: Logistic-regression weights (K, V): one row for a binary model, one per class
            (``multinomial``) or per label (``multilabel``).
        intercept: Biases (K,).
        classes: Class labels (the head's ``classes_``).
        mode: ``binary``, ``multinomial`` or ``multilabel``.
        info: What was chosen at fit time (C, its cross-validated score...), for the record.
    """

    def __init__(self, settings: dict, terms: list[str], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray,
                 mode: str, info: dict | None = None) -> None:
        if mode not in MODES:
            raise DataError(f"A TF-IDF model's mode is one of {', '.join(MODES)}, not {mode!r}; the saved model is damaged.")
        if settings.get("analyzer") != "word" or not settings.get("use_idf", True):
            raise DataError(f"A saved TF-IDF model must use word n-grams with IDF weights; it records analyzer={settings.get('analyzer')!r}.")
        width = len(terms)
        k = len(classes) if mode != "binary" else 1
        if idf.shape != (width,) or coef.shape != (k, width) or intercept.shape != (k,):
            raise DataError(
                f"A saved TF-IDF model's arrays do not fit together: {width} terms, idf {idf.shape}, weights {coef.shape}, "
                f"biases {intercept.shape} for {len(classes)} classes ({mode}); the saved model is damaged."
            )
        self.settings = dict(settings)
        self.terms = list(terms)
        self.idf = idf
        self.coef = coef
        self.intercept = intercept
        self.classes_ = classes
        self.mode = mode
        self.info = dict(info or {})
        self._index: dict[str, int] | None = None
        self._analyzer = None

    @property
    def multilabel_(self) -> bool:
        return self.mode == "multilabel"

    @property
    def vocabulary_size_(self) -> int:
        return len(self.terms)

    def transform(self, texts: Sequence[str]):
        """TF-IDF vectors of ``texts``: a scipy CSR matrix (N, V), rows L2-normalised as the vectorizer's."""
        import scipy.sparse as sp

        texts = check_texts(texts, type(self).__name__, allow_empty=True)
        if self._analyzer is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            keys = ("analyzer", "lowercase", "token_pattern", "strip_accents", "stop_words")
            options = {key: self.settings[key] for key in keys}
            self._analyzer = TfidfVectorizer(**options, ngram_range=tuple(self.settings["ngram_range"])).build_analyzer()
            self._index = {term: column for column, term in enumerate(self.terms)}
        index = self._index
        indptr, indices, counts = [0], [], []
        for text in texts:
            row: dict[int, int] = {}
            for gram in self._analyzer(text):
                column = index.get(gram)
                if column is not None:
                    row[column] = row.get(column, 0) + 1
            columns = sorted(row)
            indices += columns
            counts += [row[c] for c in columns]
            indptr.append(len(indices))
        data = np.asarray(counts, np.float64)
        columns = np.asarray(indices, np.int64)
        if self.settings.get("binary"):
            data[:] = 1.0
        if self.settings.get("sublinear_tf"):
            data = np.log(data) + 1.0
        data = data * self.idf[columns]
        X = sp.csr_matrix((data, columns, np.asarray(indptr, np.int64)), shape=(len(texts), len(self.terms)))
        if self.settings.get("norm") == "l2":
            norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
            norms[norms == 0.0] = 1.0
            X = sp.csr_matrix(X.multiply(1.0 / norms[:, None]))
        elif self.settings.get("norm") is not None:
            raise DataError(f"A saved TF-IDF model with norm={self.settings.get('norm')!r} is not supported; only l2 or none.")
        return X

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """Linear scores (N, K)."""
        return np.asarray(self.transform(texts) @ self.coef.T) + self.intercept

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (N, C) as the fitted pipeline gives them; multi-label: each label's own."""
        from scipy.special import expit, softmax

        scores = self.decision_function(texts)
        if self.mode == "binary":
            positive = expit(scores[:, 0])
            return np.column_stack([1.0 - positive, positive])
        if self.mode == "multilabel":
            return expit(scores)
        return softmax(scores, axis=1)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Class labels (N,), or a 0/1 indicator matrix (N, L) for multi-label."""
        proba = self.predict_proba(texts)
        if self.multilabel_:
            return (proba >= 0.5).astype(np.int64)
        return self.classes_[np.argmax(proba, axis=1)]

    def to_state(self) -> tuple[dict[str, np.ndarray], dict, list[str]]:
        """``(arrays, meta, terms)``: the weights, the JSON-able rest, and the vocabulary in column order."""
        arrays = {"idf": self.idf, "coef": self.coef, "intercept": self.intercept}
        meta = {
            "class": "TfidfLogReg", "mode": self.mode, "settings": self.settings, "classes": np.asarray(self.classes_).tolist(),
            "vocabulary_size": len(self.terms), **{key: value for key, value in self.info.items()},
        }
        return arrays, meta, list(self.terms)

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict, terms: list[str]) -> FittedTfidf:
        """Rebuild from :meth:`to_state`'s ``(arrays, meta, terms)``.

        Raises:
            DataError: An array or field is missing, or the pieces do not fit together.
        """
        missing = [name for name in ("idf", "coef", "intercept") if name not in arrays] + [key for key in ("mode", "settings", "classes") if key not in meta]
        if missing:
            raise DataError(f"The saved TF-IDF model lacks {', '.join(missing)}; it is damaged or from another tool.")
        info = {key: value for key, value in meta.items() if key not in ("class", "mode", "settings", "classes", "vocabulary_size")}
        return cls(
            settings=meta["settings"], terms=[str(t) for t in terms], idf=np.asarray(arrays["idf"], np.float64),
            coef=np.asarray(arrays["coef"], np.float64), intercept=np.asarray(arrays["intercept"], np.float64),
            classes=np.asarray(meta["classes"]), mode=meta["mode"], info=info,
        )


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
