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
RUN_BUNDLE_DIR = "bundle"  # where probe, finetune, detect and segment runs save their best model
DAMAGED = "the bundle is damaged; save it again from its run, or retrain"


def register_kind(*kinds: str):
    """Class decorator: ``load_bundle`` loads bundles of these kinds with the class's ``load``."""

    def register(cls: type) -> type:
        for kind in kinds:
            KINDS[kind] = cls
        return cls

    return register


def locate_bundle(path: str | Path) -> tuple[Path, bool]:
    """The bundle folder ``path`` names: itself, or the ``bundle/`` of a run's ``--out`` folder.

    Returns:
        The folder, and whether it is a run folder's ``bundle/`` (the run's best model).
    """
    path = Path(path)
    if not (path / "bundle.json").is_file() and (path / RUN_BUNDLE_DIR / "bundle.json").is_file():
        return path / RUN_BUNDLE_DIR, True
    return path, False


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one short line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def damaged_file(path: Path, exc: BaseException) -> DataError:
    """The error for a bundle file that is missing or cannot be read."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path} is missing; {DAMAGED}.")
    return DataError(f"{path} cannot be read ({one_line(exc)}); {DAMAGED}.")


def require_fields(document: dict[str, Any], path: str | Path, required: dict[str, Any], optional: dict[str, Any] | None = None) -> None:
    """Check bundle.json's fields: each of ``required`` is present, and every field present has its type.

    Args:
        document: The parsed bundle.json.
        path: The bundle folder (for the message).
        required: Field name -> type (or tuple of types) of the fields every bundle of this kind holds.
        optional: The same for fields older bundles may lack.

    Raises:
        DataError: A required field is missing, or a field has another type; the message names it.
    """
    where = Path(path) / "bundle.json"
    for name, kind in {**required, **(optional or {})}.items():
        if name not in document:
            if name in required:
                raise DataError(f"{where} has no {name!r} field, which every bundle of its kind holds; {DAMAGED}.")
            continue
        value = document[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in kinds)
            found = "null" if value is None else type(value).__name__
            raise DataError(f"{where}: the {name!r} field is a {found}, not a {wanted}; {DAMAGED}.")


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
    version = document.get("format", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise DataError(f"{Path(path) / 'bundle.json'}: the 'format' field is a {type(version).__name__}, not a number; {DAMAGED}.")
    if version > BUNDLE_FORMAT:
        raise DataError(f"{path} was written by a newer headstart (format {document['format']}); upgrade headstart.")


def bundle_class(kind: str, path: str | Path) -> type:
    """The class that loads bundles of ``kind``.

    Raises:
        DataError: No class loads that kind (a newer headstart's bundle, or a damaged file).
    """
    if kind not in KINDS:
        raise DataError(f"{path} holds a {kind!r} bundle; this headstart loads {', '.join(sorted(KINDS))} bundles. Upgrade headstart.")
    return KINDS[kind]


def load_bundle(path: str | Path, *, trust_remote_code: bool = False, allow_torchscript: bool = False):
    """Load any bundle folder as the class its ``kind`` names; the model itself loads on first use.

    Args:
        path: The bundle folder (holding ``bundle.json``), or the ``--out`` folder of a probe,
            finetune, detect or segment run, whose ``bundle/`` (the run's best model) is loaded;
            the returned bundle's ``path`` says which folder it is.
        trust_remote_code: Let an ``hf:``/``st:`` backbone folder run the code it ships, when the
            backbone loads.
        allow_torchscript: Let a ``file:`` TorchScript backbone load (it runs the code it holds).

    Returns:
        A :class:`~headstart.bundles.classifier.Bundle` or a :class:`~headstart.bundles.task.TaskBundle`;
        both predict with ``predict_batch(inputs, top_k)``.

    Raises:
        DataError: The folder is not a bundle, is from a newer headstart, or is damaged (a field
            of bundle.json missing or of the wrong type, a file missing or unreadable).
    """
    path, _ = locate_bundle(path)
    document = read_document(path)
    return bundle_class(bundle_kind(document), path).load(path, document, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript)


def describe(item: Any) -> str:
    """An input's name in predictions: its path, ``array(shape)``, or its type."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, np.ndarray):
        return f"array{tuple(item.shape)}"
    return type(item).__name__
