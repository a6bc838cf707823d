"""Heads: scikit-learn classifiers trained on frozen features.

* :class:`LinearProbe`: logistic regression with C chosen on a validation split.
* :class:`KNNProbe`: distance-weighted k-nearest neighbours with k chosen by cross-validation.
* :class:`MLPHead`: a small MLP with early stopping.

Every head saves itself without pickle: ``arrays, meta = head.to_state()`` gives numpy arrays and
JSON-able metadata, and :func:`head_from_state` rebuilds the fitted head from them.
"""

from __future__ import annotations

import numpy as np

from headstart.errors import DataError, OptionError, did_you_mean
from headstart.heads._base import STATE_FORMAT_VERSION, HeadBase
from headstart.heads.knn import KNNProbe
from headstart.heads.linear import LinearProbe
from headstart.heads.mlp import MLPHead

__all__ = ["KNNProbe", "LinearProbe", "MLPHead", "check_head_name", "head_from_state", "make_head"]

HEADS: dict[str, type[HeadBase]] = {"linear": LinearProbe, "knn": KNNProbe, "mlp": MLPHead}


def make_head(name: str, **kwargs) -> HeadBase:
    """Create an unfitted head by its short name.

    Args:
        name: ``"linear"``, ``"knn"`` or ``"mlp"``.
        **kwargs: Hyper-parameters passed to the head's constructor.

    Returns:
        The head.

    Raises:
        OptionError: If ``name`` is not a known head (a ``ValueError``).
    """
    return HEADS[check_head_name(name)](**kwargs)


def check_head_name(name: str) -> str:
    """``name`` when it is a known head.

    Raises:
        OptionError: It is not (a ``ValueError``); the message lists the heads and close matches.
    """
    if name not in HEADS:
        raise OptionError(
            f"Unknown head {name!r}; valid names are {sorted(HEADS)}.{did_you_mean(str(name), HEADS)}"
        )
    return name


def head_from_state(arrays: dict[str, np.ndarray], meta: dict) -> HeadBase:
    """Rebuild a fitted head from the ``(arrays, meta)`` pair that its ``to_state()`` returned.

    Args:
        arrays: The head's arrays, by name.
        meta: The head's JSON metadata: class name, hyper-parameters, classes and fitted values.

    Returns:
        A fitted head whose predictions equal the original's.

    Raises:
        DataError: If the metadata names an unknown head class or a newer state format, or arrays
            are missing.
    """
    by_class = {cls.__name__: cls for cls in HEADS.values()}
    class_name = meta.get("class")
    if class_name not in by_class:
        raise DataError(
            f"The saved head is a {class_name!r}, but head_from_state knows only {sorted(by_class)}. "
            "Was it saved by a newer headstart?"
        )
    version = meta.get("format_version")
    if version != STATE_FORMAT_VERSION:
        raise DataError(
            f"The saved {class_name} has state format version {version!r}, but this headstart reads "
            f"version {STATE_FORMAT_VERSION}. Save the head again with this version, or upgrade headstart."
        )
    return by_class[class_name]._from_state(arrays, meta)
