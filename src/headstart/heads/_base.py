"""What every head shares: input checks, target encoding, standardization and state round trips.

A head is a scikit-learn classifier that learns on features (one row per example). This module holds
the pieces that do not depend on the model inside the head:

* ``HeadBase`` checks inputs at predict time (fitted? finite? right width?), and turns a fitted head
  into plain arrays plus JSON metadata (``to_state``) and back (``_from_state``), without pickle.
* ``encode_targets`` reads ``y`` as single-label (``"binary"``/``"multiclass"``) or multi-label
  (a 2-D 0/1 indicator matrix) and returns integer codes or a float indicator matrix.
* ``stratified_split`` holds out a validation split, and explains what to do when a class is too small.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_random_state, validate_data

from headstart.errors import DataError, NotFittedError

STATE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Targets:
    """Targets in the form a head trains on.

    Attributes:
        classes: The class labels (single-label) or ``arange(n_labels)`` (multi-label).
        codes: Integer class index per example, shape ``(n,)``; ``None`` for multi-label targets.
        indicator: 0/1 float matrix of shape ``(n, n_labels)``; ``None`` for single-label targets.
    """

    classes: np.ndarray
    codes: np.ndarray | None
    indicator: np.ndarray | None

    @property
    def multilabel(self) -> bool:
        """Whether the targets are a multi-label indicator matrix."""
        return self.indicator is not None


class HeadBase(ClassifierMixin, BaseEstimator):
    """Shared behaviour of the heads. Subclasses set the names of the fitted attributes to save.

    Subclasses list their fitted array attributes (an array, or a list of arrays saved as
    ``name.0``, ``name.1``, ...) in ``_state_arrays`` and their fitted JSON-able attributes in
    ``_state_meta``; ``to_state`` and ``_from_state`` use these lists.
    """

    _state_arrays: tuple[str, ...] = ()
    _state_meta: tuple[str, ...] = ()

    def _validate_fit_data(self, X, y) -> tuple[np.ndarray, Targets]:
        """Validate ``X`` and ``y`` for ``fit``, and set ``n_features_in_``."""
        X, y = validate_data(
            self, X, y, multi_output=True, dtype=np.float64, ensure_all_finite=False
        )
        check_finite(X, type(self).__name__)
        return X, encode_targets(y, type(self).__name__)

    def _validate_predict_X(self, X) -> np.ndarray:
        """Check that the head is fitted and that ``X`` is a finite matrix of the fitted width."""
        name = type(self).__name__
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"This {name} is not fitted yet. Call fit(X, y) first, "
                "or rebuild a fitted head with headstart.heads.head_from_state(arrays, meta)."
            )
        # ensure_2d=False lets the width check below give its own message.
        X = validate_data(
            self, X, reset=False, dtype=np.float64, ensure_all_finite=False, ensure_2d=False
        )
        if X.ndim != 2:
            raise DataError(
                f"{name} expects X as a 2-D array of shape (n_samples, n_features), "
                f"but got a {X.ndim}-D array of shape {X.shape}. "
                "Reshape your data: X.reshape(1, -1) for a single example."
            )
        if X.shape[1] != self.n_features_in_:
            raise DataError(
                f"X has {X.shape[1]} features, but {name} is expecting {self.n_features_in_} features "
                f"as input: it was fitted on {self.n_features_in_}. "
                "Use features from the same backbone, layer and pooling as at fit time."
            )
        check_finite(X, name)
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        return tags

    def _predict_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """Turn decision scores into labels: threshold 0 for multi-label, argmax otherwise."""
        if self.multilabel_:
            return (scores > 0).astype(np.int64)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Describe the fitted head as arrays plus JSON-able metadata, without pickle.

        Returns:
            ``(arrays, meta)``: ``arrays`` maps names to numpy arrays (ready for safetensors);
            ``meta`` holds the class name, the hyper-parameters, ``classes_`` and the other fitted
            values. ``headstart.heads.head_from_state(arrays, meta)`` rebuilds an equal head.

        Raises:
            NotFittedError: If the head is not fitted.
        """
        name = type(self).__name__
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"This {name} is not fitted yet; fit it before calling to_state().")
        arrays = {}
        for key in self._state_arrays:
            value = getattr(self, key)
            if isinstance(value, list):
                for index, item in enumerate(value):
                    arrays[f"{key}.{index}"] = np.ascontiguousarray(item)
            else:
                arrays[key] = np.ascontiguousarray(value)
        fitted = {key: to_jsonable(getattr(self, key)) for key in self._state_meta}
        fitted["n_features_in_"] = int(self.n_features_in_)
        fitted["multilabel_"] = bool(self.multilabel_)
        meta = {
            "class": name,
            "format_version": STATE_FORMAT_VERSION,
            "params": {key: to_jsonable(value) for key, value in self.get_params().items()},
            "classes": self.classes_.tolist(),
            "classes_dtype": self.classes_.dtype.str,
            "fitted": fitted,
        }
        return arrays, meta

    @classmethod
    def _from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> HeadBase:
        """Rebuild a fitted head from the output of ``to_state``."""
        params = {key: from_jsonable(value) for key, value in meta["params"].items()}
        head = cls(**params)
        for key in cls._state_arrays:
            if key in arrays:
                setattr(head, key, np.asarray(arrays[key]))
            elif f"{key}.0" in arrays:
                count = sum(1 for name in arrays if name.startswith(f"{key}."))
                setattr(head, key, [np.asarray(arrays[f"{key}.{index}"]) for index in range(count)])
            else:
                raise DataError(
                    f"The saved {cls.__name__} state lacks the array {key!r}; it holds {sorted(arrays)}. "
                    "The saved head is incomplete: save it again from the fitted head."
                )
        for key, value in meta["fitted"].items():
            setattr(head, key, from_jsonable(value))
        head.classes_ = np.asarray(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        return head


def encode_targets(y: np.ndarray, name: str) -> Targets:
    """Read ``y`` as single-label classes or a multi-label indicator matrix.

    Args:
        y: Labels of shape ``(n,)``, a column ``(n, 1)``, or a 0/1 indicator matrix ``(n, L)``.
        name: The head's class name, for error messages.

    Returns:
        The encoded targets.

    Raises:
        ValueError: If ``y`` is continuous ("Unknown label type"), multi-output multi-class, or has
            fewer than 2 classes.
    """
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. "
            "Please change the shape of y to (n_samples,), for example using ravel().",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y.ravel()
    check_classification_targets(y)
    target_type = type_of_target(y)
    if target_type == "multilabel-indicator":
        indicator = np.asarray(y, dtype=np.float64)
        classes = np.arange(indicator.shape[1])
        return Targets(classes=classes, codes=None, indicator=indicator)
    if target_type not in ("binary", "multiclass"):
        raise DataError(
            f"{name} supports single-label targets (shape (n,)) and multi-label 0/1 indicator "
            f"matrices (shape (n, n_labels)), but y is {target_type!r} with shape {y.shape}."
        )
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"y has one class ({python_scalar(classes[0])!r}), but {name} needs at least 2 classes "
            "to learn to tell them apart. Add examples of the other classes."
        )
    return Targets(classes=classes, codes=codes.astype(np.int64), indicator=None)


def check_finite(X: np.ndarray, name: str) -> None:
    """Raise a ``DataError`` naming the first NaN or infinite entry of ``X``, if any."""
    finite = np.isfinite(X)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    row, column = (int(i) for i in bad[0])
    raise DataError(
        f"X contains NaN or infinity ({len(bad)} values; the first at row {row}, column {column}, "
        f"value {X[row, column]}). {name} needs finite features: check the feature extraction "
        "(for example an fp16 overflow) or drop those rows."
    )


def check_fraction(value: float, name: str, param: str) -> None:
    """Raise a ``ValueError`` unless ``0 <= value < 1``."""
    if not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name}: {param} must be a number in [0, 1), got {value!r}.")


def stratified_split(
    targets: Targets,
    val_fraction: float,
    random_state,
    name: str,
    fix: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into train and validation parts, stratified by class.

    Multi-label targets are split at random (stratification is not defined for them).

    Args:
        targets: The encoded targets.
        val_fraction: The share of examples to hold out, in (0, 1).
        random_state: Seed or ``RandomState`` for the split.
        name: The head's class name, for error messages.
        fix: What the user can set instead of holding out data, for error messages.

    Returns:
        ``(train_indices, val_indices)``.

    Raises:
        DataError: If a class has fewer than 2 examples, so that it cannot be in both parts.
    """
    n = len(targets.indicator) if targets.multilabel else len(targets.codes)
    indices = np.arange(n)
    rng = check_random_state(random_state)
    if targets.multilabel:
        n_val = min(max(1, math.ceil(val_fraction * n)), n - 1)
        return train_test_split(indices, test_size=n_val, random_state=rng)
    counts = np.bincount(targets.codes, minlength=len(targets.classes))
    too_small = [targets.classes[i] for i in np.flatnonzero(counts < 2)]
    if too_small:
        listed = ", ".join(
            f"{python_scalar(label)!r} ({counts[targets.classes == label][0]} example)" for label in too_small
        )
        raise DataError(
            f"{name} holds out a stratified validation split (val_fraction={val_fraction}), which needs "
            f"at least 2 examples of every class, but these classes have fewer: {listed}. "
            f"Give more examples of those classes, or {fix}."
        )
    n_classes = len(targets.classes)
    n_val = max(round(val_fraction * n), n_classes)
    return train_test_split(indices, test_size=n_val, stratify=targets.codes, random_state=rng)


def standardize_params(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-feature mean and scale (standard deviation, 1 where it is 0) of ``X``.

    Features mostly come from float32 networks, so a spread within float32 rounding of the
    features' magnitude counts as 0: the feature is constant, and dividing by that spread would
    blow its rounding noise up to unit size (and, folded into a fine-tuning head, its weight up to
    ~1e6; all-MiniLM-L6-v2 has such a dimension).
    """
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    magnitude = float(np.abs(X).max()) if X.size else 1.0
    scale[scale <= max(100 * np.finfo(np.float32).eps * magnitude, np.finfo(np.float64).tiny)] = 1.0
    return mean, scale


def resolve_device(device: str, name: str) -> str:
    """A head's ``device`` argument resolved by :func:`headstart.device.resolve_device`."""
    from headstart.device import resolve_device as resolve

    return resolve(device, name)


def seed_from(random_state) -> int:
    """Draw an integer seed (for torch) from an int, ``None`` or a ``RandomState``."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def python_scalar(value):
    """Return a numpy scalar as the matching Python value, so that its repr reads plainly."""
    return value.item() if isinstance(value, np.generic) else value


def to_jsonable(value):
    """Convert numpy values, tuples and non-string-keyed dicts into JSON-able Python values.

    Tuples become ``{"__tuple__": [...]}`` and dicts with non-string keys become
    ``{"__items__": [[key, value], ...]}``, so that ``from_jsonable`` restores them exactly.
    A ``RandomState`` cannot be saved; it becomes ``None``.
    """
    if isinstance(value, np.random.RandomState):
        return None
    if isinstance(value, np.ndarray):
        return {"__tuple__": [to_jsonable(item) for item in value.tolist()]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [to_jsonable(item) for item in value]}
    if isinstance(value, list):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: to_jsonable(item) for key, item in value.items()}
        return {"__items__": [[to_jsonable(key), to_jsonable(item)] for key, item in value.items()]}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"Cannot save a value of type {type(value).__name__} as JSON: {value!r}.")


def from_jsonable(value):
    """Invert ``to_jsonable``."""
    if isinstance(value, list):
        return [from_jsonable(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(from_jsonable(item) for item in value["__tuple__"])
        if set(value) == {"__items__"}:
            return {from_jsonable(key): from_jsonable(item) for key, item in value["__items__"]}
        return {key: from_jsonable(item) for key, item in value.items()}
    return value
