"""Data sources: image folders, CSV/JSONL manifests, numpy arrays and built-in datasets.

Text sources (tables with a text column, folders of ``.txt`` files) live in
:mod:`headstart.data.text_sources`; :func:`load_data` picks them by content.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from headstart.data.dataset import IMAGE_EXTENSIONS, SPLITS, Dataset, encode_labels, check_classes, stratified_split, subsample_per_class
from headstart.errors import DataError



def load_data(
    source: str | Path | tuple[np.ndarray, np.ndarray],
    *,
    per_class: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    path_column: str = "path",
    label_column: str = "label",
    text_column: str | None = None,
    encoding: str | None = None,
) -> Dataset:
    """Load a labelled dataset and assign train/val/test splits.

    Args:
        source: ``builtin:animal-mnist``, ``builtin:fashion-mnist``, ``builtin:vader-tweets``,
            ``builtin:vader-movies``, an image folder (one subfolder per class, optionally under
            ``train/``, ``val/`` and ``test/``), a folder of the same layout holding ``.txt`` files
            (one text per file), a ``.csv``/``.tsv``/``.jsonl`` manifest of (path, label[, split])
            or table of (text, label[, split]), a ``.npz`` file with ``x`` and ``y``, or an
            ``(images, labels)`` tuple of arrays.
        per_class: Keep at most this many training examples per class (few-shot work). The training
            split's class counts from before are kept in ``Dataset.full_train_counts``: probe and
            finetune correct their heads to that class prior (``prior="data"``).
        seed: Seed for the stratified split and the subsample.
        test_fraction: Share of each class held out for test when the source has no test split.
        path_column: Manifest column holding the file path.
        label_column: Manifest column holding the label.
        text_column: Table column holding the text. A table is read as text when this is given,
            or when it has a ``text`` column and no ``path_column``.
        encoding: A text table's encoding when it is not UTF-8 (``cp1252``, ``latin-1``, ...).

    Returns:
        A :class:`Dataset` whose ``split`` marks each item train, val or test.

    Raises:
        DataError: The source is missing, empty, has one class, or is malformed.
    """
    from headstart.data import text_sources

    if isinstance(source, tuple):
        dataset = from_arrays(*source)
    else:
        text = str(source)
        if text.startswith("builtin:"):
            from headstart.data.builtin import load_builtin

            dataset = load_builtin(text)
        else:
            path = Path(text).expanduser()
            if not path.exists():
                raise DataError(f"Data path {path} does not exist. Give an image folder, a .csv/.jsonl manifest, a .npz file or builtin:animal-mnist.")
            if path.is_dir():
                dataset = text_sources.from_text_folder(path) if text_sources.is_text_folder(path) else from_folder(path)
            elif path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
                if text_column is not None or text_sources.looks_like_text_table(path, path_column):
                    dataset = text_sources.from_text_table(path, text_column=text_column or "text", label_column=label_column, encoding=encoding)
                else:
                    dataset = from_manifest(path, path_column=path_column, label_column=label_column)
            elif path.suffix.lower() == ".npz":
                dataset = _from_npz(path)
            else:
                raise DataError(f"Cannot read {path}: expected a folder, .csv, .tsv, .jsonl or .npz file.")
    try:
        return assign_splits(dataset, per_class=per_class, seed=seed, test_fraction=test_fraction)
    except DataError as exc:
        if not dataset.skipped:
            raise
        # What was skipped may be why the rest cannot train (a class whose rows were all skipped): say so.
        where, reason = dataset.skipped[0]
        raise DataError(f"{exc} {len(dataset.skipped)} item(s) were skipped while reading, first {where}: {reason}.") from None


def _from_npz(path: Path) -> Dataset:
    """A dataset from a ``.npz`` holding arrays ``x`` and ``y``; pickled objects are refused, never loaded."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = {k.lower(): k for k in archive.files}
            if "x" not in keys or "y" not in keys:
                raise DataError(f"{path} must hold arrays named x and y; found {archive.files}.")
            return from_arrays(archive[keys["x"]], archive[keys["y"]], source=str(path))
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise DataError(
            f"{path} holds pickled Python objects, which headstart does not load (unpickling can run code). "
            "Save plain numeric arrays: np.savez(path, x=images.astype(np.uint8), y=labels)."
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}). Re-save it with np.savez(path, x=..., y=...).") from None


def assign_splits(dataset: Dataset, *, per_class: int | None, seed: int, test_fraction: float) -> Dataset:
    """Hold out a stratified test split where none is given, then subsample training items."""
    check_classes(dataset.classes, dataset.labels, dataset.source)
    if not dataset.has_split("test"):
        train = dataset.indices("train")
        _, held = stratified_split(dataset.labels[train], test_fraction, seed, dataset.classes)
        dataset.split[train[held]] = "test"
    if per_class is not None:
        if per_class < 1:
            raise DataError(f"--per-class must be at least 1, got {per_class}.")
        train = dataset.indices("train")
        full_counts = dataset.train_counts() if not dataset.multilabel else None
        keep = subsample_per_class(dataset.labels, train, per_class, seed)
        dropped = np.setdiff1d(train, keep)
        keep_mask = np.ones(len(dataset), dtype=bool)
        keep_mask[dropped] = False
        skipped = dataset.skipped
        dataset = dataset.subset(np.flatnonzero(keep_mask))
        dataset.skipped = skipped
        if len(dropped) and full_counts is not None:
            dataset.full_train_counts = full_counts  # the class prior of the data, which the balanced sample no longer shows
    return dataset


def from_arrays(images: np.ndarray, labels: np.ndarray, classes: list[str] | None = None, source: str = "arrays") -> Dataset:
    """A dataset from a uint8 image array (N, H, W[, C]) and labels (N,) of ints or strings."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4):
        raise DataError(f"{source}: images must have shape (N, H, W) or (N, H, W, C); got {images.shape}.")
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels; they must match.")
    if images.dtype != np.uint8:
        if images.min() >= 0 and images.max() <= 1.0:
            images = (images * 255).round()
        images = np.clip(images, 0, 255).astype(np.uint8)
    label_ids, classes = encode_labels(labels, classes, source)
    return Dataset(source, "image", classes, images, label_ids, np.full(len(labels), "train", dtype=object))


def from_folder(root: Path) -> Dataset:
    """An image folder: ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``."""
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    layout = [(s.name, s) for s in split_dirs] if split_dirs else [("train", root)]
    class_names = sorted({d.name for _, base in layout for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")})
    if not class_names:
        raise DataError(f"{root} has no class subfolders. Expected {root}/<class>/<image> (or train/, val/, test/ above that).")
    items, labels, splits, skipped = [], [], [], []
    for split, base in layout:
        for label, name in enumerate(class_names):
            folder = base / name
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            skipped += [(str(p), "not an image file extension") for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if not images and split == "train":
                raise DataError(f"Class folder {folder} holds no images. Add images to it or remove the folder.")
            items += [str(p) for p in images]
            labels += [label] * len(images)
            splits += [split] * len(images)
    dataset = Dataset(str(root), "image", class_names, items, np.array(labels, dtype=np.int64), np.array(splits, dtype=object), skipped)
    return dataset


def from_manifest(path: Path, path_column: str = "path", label_column: str = "label") -> Dataset:
    """A CSV/TSV/JSONL manifest of (path, label[, split]); relative paths are relative to the manifest."""
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"Manifest {path} has no rows.")
    for column in (path_column, label_column):
        if column not in rows[0]:
            raise DataError(f"Manifest {path} has no column {column!r}; its columns are {sorted(rows[0])}. Pass the right name.")
    items, raw_labels, splits = [], [], []
    for row in rows:
        item = Path(str(row[path_column]))
        items.append(str(item if item.is_absolute() else (path.parent / item)))
        raw_labels.append(str(row[label_column]))
        split = str(row.get("split") or "train")
        if split not in SPLITS:
            raise DataError(f"Manifest {path}: split {split!r} is not one of {', '.join(SPLITS)}.")
        splits.append(split)
    labels, classes = encode_labels(np.array(raw_labels), None, str(path))
    return Dataset(str(path), "image", classes, items, labels, np.array(splits, dtype=object))


def _read_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
        return rows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))
