"""What every bundle folder shares: ``bundle.json``, its ``kind``, and :func:`load_bundle`.

``bundle.json`` names the kind of model the folder holds in its ``kind`` field:
``classification`` (:class:`~headstart.bundles.classifier.Bundle`), ``detection`` or
``segmentation`` (:class:`~headstart.bundles.task.TaskBundle`). Bundles written before the field
existed carry ``task`` instead (classification bundles too; the oldest carry neither and are
classification bundles); :func:`bundle_kind` reads all three shapes.

The classes register their kinds here (:func:`register_kind`) when :mod:`headstart.bundles` is
imported, so this module imports none of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import DataError

BUNDLE_FORMAT = 1
KINDS: dict[str, type] = {}  # kind -> bundle class; filled by register_kind


def register_kind(*kinds: str):
    """Class decorator: ``load_bundle`` loads bundles of these kinds with the class's ``load``."""

    def register(cls: type) -> type:
        for kind in kinds:
            KINDS[kind] = cls
        return cls

    return register


def read_document(path: str | Path, hint: str = "Give the --out folder of a probe, finetune, detect or segment run.") -> dict[str, Any]:
    """The parsed ``bundle.json`` of a bundle folder.

    Raises:
        DataError: The folder has no ``bundle.json``, or it is not a JSON object (``hint`` ends the
            first message).
    """
    path = Path(path)
    document_path = path / "bundle.json"
    if not document_path.is_file():
        raise DataError(f"{path} is not a headstart bundle (no bundle.json). {hint}")
    try:
        document = json.loads(document_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{document_path} is not valid JSON ({exc}); the bundle is damaged.") from None
    if not isinstance(document, dict):
        raise DataError(f"{document_path} holds a JSON {type(document).__name__}, not an object; the bundle is damaged.")
    return document


def bundle_kind(document: dict[str, Any]) -> str:
    """The bundle's kind: its ``kind`` field, else (bundles from before it) ``task``, else classification."""
    return str(document.get("kind") or document.get("task") or "classification")


def check_format(document: dict[str, Any], path: str | Path) -> None:
    """Refuse a bundle written by a newer headstart.

    Raises:
        DataError: Its ``format`` is newer than :data:`BUNDLE_FORMAT`.
    """
    if document.get("format", 0) > BUNDLE_FORMAT:
        raise DataError(f"{path} was written by a newer headstart (format {document['format']}); upgrade headstart.")


def bundle_class(kind: str, path: str | Path) -> type:
    """The class that loads bundles of ``kind``.

    Raises:
        DataError: No class loads that kind (a newer headstart's bundle, or a damaged file).
    """
    if kind not in KINDS:
        raise DataError(f"{path} holds a {kind!r} bundle; this headstart loads {', '.join(sorted(KINDS))} bundles. Upgrade headstart.")
    return KINDS[kind]


def load_bundle(path: str | Path, *, trust_remote_code: bool = False):
    """Load any bundle folder as the class its ``kind`` names; the model itself loads on first use.

    Args:
        path: The bundle folder (holding ``bundle.json``).
        trust_remote_code: Let an ``hf:``/``st:`` backbone folder run the code it ships, when the
            backbone loads.

    Returns:
        A :class:`~headstart.bundles.classifier.Bundle` or a :class:`~headstart.bundles.task.TaskBundle`;
        both predict with ``predict_batch(inputs, top_k)``.

    Raises:
        DataError: The folder is not a bundle, or is from a newer headstart.
    """
    document = read_document(path)
    return bundle_class(bundle_kind(document), path).load(path, document, trust_remote_code=trust_remote_code)


def describe(item: Any) -> str:
    """An input's name in predictions: its path, ``array(shape)``, or its type."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, np.ndarray):
        return f"array{tuple(item.shape)}"
    return type(item).__name__
