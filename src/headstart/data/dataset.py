"""The Dataset record every source produces: items, labels, class names and split assignment."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Dataset:
    """A labelled dataset with a split per item.

    Attributes:
        source: The string or description it was loaded from.
        modality: ``image`` or ``text``.
        classes: Class names; label ``i`` means ``classes[i]``.
        items: File paths (list of str), or a uint8 array (N, H, W) or (N, H, W, C) of images.
        labels: Integer labels (N,), or a 0/1 indicator matrix (N, L) for multi-label data.
        split: The split name of each item (N,).
        skipped: ``(item, reason)`` pairs dropped while listing the source.
        full_train_counts: Items per class of the training split (train and val) as the source had it,
            before ``load_data(..., per_class=N)`` subsampled it; None when nothing was subsampled
            (then the training split's own counts are the source's). Single-label data only.
    """

    source: str
    modality: str
    classes: list[str]
    items: list[str] | np.ndarray
    labels: np.ndarray
    split: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    full_train_counts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def in_memory(self) -> bool:
        return isinstance(self.items, np.ndarray)

    def indices(self, split: str) -> np.ndarray:
        """Indices of the items in ``split``."""
        return np.flatnonzero(self.split == split)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """A new Dataset holding the given items, in the given order."""
        indices = np.asarray(indices, dtype=np.int64)
        items = self.items[indices] if self.in_memory else [self.items[i] for i in indices]
        return Dataset(self.source, self.modality, self.classes, items, self.labels[indices], self.split[indices], [], self.full_train_counts)

    def get_split(self, split: str) -> Dataset:
        """The items of one split."""
        return self.subset(self.indices(split))

    def has_split(self, split: str) -> bool:
        return bool(np.any(self.split == split))

    def train_counts(self) -> np.ndarray:
        """Items per class of the training split (train and val) as it is now."""
        rows = np.isin(self.split, ("train", "val"))
        if self.multilabel:
            return self.labels[rows].sum(axis=0).astype(np.int64)
        return np.bincount(self.labels[rows], minlength=len(self.classes))

    def source_train_counts(self) -> np.ndarray:
        """Items per class of the training split before any subsampling: what the data's class prior is."""
        return np.asarray(self.full_train_counts) if self.full_train_counts is not None else self.train_counts()

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split, the number of items of each class."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            mask = self.split == split
            if not mask.any():
                continue
            if self.multilabel:
                per_class = self.labels[mask].sum(axis=0)
            else:
                per_class = np.bincount(self.labels[mask], minlength=len(self.classes))
            out[split] = {name: int(n) for name, n in zip(self.classes, per_class)}
        return out

    def fingerprint(self, content: bool | None = None) -> str:
        """A hash of the items' identity: paths, sizes and mtimes, or the content of in-memory arrays.

        Args:
            content: Hash the files' bytes instead of their sizes and mtimes (slower: every file is
                read; it sees an edit that keeps both). None follows ``HEADSTART_FINGERPRINT=content``.

        Labels and splits are not part of it: features depend on the items alone.
        """
        if content is None:
            content = os.environ.get("HEADSTART_FINGERPRINT", "stat") == "content"
        digest = hashlib.sha256()
        digest.update(self.modality.encode())
        if self.in_memory:
            array = np.ascontiguousarray(self.items)
            digest.update(str(array.shape).encode() + str(array.dtype).encode())
            digest.update(array.tobytes())
        elif self.modality == "text":
            for text in self.items:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        else:
            if content:
                digest.update(b"content\n")
            for path in self.items:
                try:
                    if content:
                        file_hash = hashlib.sha256()
                        with open(path, "rb") as handle:
                            for block in iter(lambda: handle.read(1 << 20), b""):
                                file_hash.update(block)
                        digest.update(f"{path}\0".encode() + file_hash.digest() + b"\n")
                    else:
                        stat = os.stat(path)
                        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(f"{path}\0missing\n".encode())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: source, classes, per-split counts, skipped items, and the training split's
        counts before subsampling (``full_train_counts``, when ``per_class`` subsampled it)."""
        summary = {
            "source": self.source,
            "modality": self.modality,
            "classes": list(self.classes),
            "counts": self.counts(),
            "skipped": [{"item": item, "reason": reason} for item, reason in self.skipped],
        }
        if self.full_train_counts is not None:
            summary["full_train_counts"] = {name: int(n) for name, n in zip(self.classes, self.full_train_counts)}
        return summary


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, classes: Sequence[str] | None = None, what: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with ``fraction`` of each class held out.

    Raises:
        DataError: A class has fewer than 2 examples, so it cannot appear on both sides.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    strat = labels if labels.ndim == 1 else labels.argmax(axis=1)
    for label in np.unique(strat):
        members = np.flatnonzero(strat == label)
        if len(members) < 2:
            name = classes[label] if classes is not None else str(label)
            raise DataError(
                f"Class {name!r} has {len(members)} example, but a stratified {what} split needs at least 2 per class. "
                f"Add examples of {name!r}, or remove the class."
            )
        members = rng.permutation(members)
        n_held = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held.append(members[:n_held])
        keep.append(members[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def subsample_per_class(labels: np.ndarray, indices: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """At most ``per_class`` seeded random indices of each class, from ``indices``."""
    rng = np.random.default_rng(seed + 1)
    strat = labels if labels.ndim == 1 else labels.argmax(axis=1)
    chosen = []
    for label in np.unique(strat[indices]):
        members = indices[strat[indices] == label]
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen)) if chosen else indices[:0]


def check_classes(classes: Sequence[str], labels: np.ndarray, source: str) -> None:
    """Refuse datasets that cannot train a classifier: no items, or fewer than 2 classes present."""
    if len(labels) == 0:
        raise DataError(f"{source}: found no examples. Check the path and the expected layout (one folder per class).")
    present = labels.any(axis=0).sum() if labels.ndim == 2 else len(np.unique(labels))
    if present < 2:
        raise DataError(
            f"{source}: found {present} class ({', '.join(classes)}), but a classifier needs at least 2. "
            "Add a folder (or label) for each other class."
        )


def encode_labels(labels, classes: list[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
    """Class ids and names from labels: one-hot rows, ids into ``classes``, or names (sorted naturally)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        names = classes or [str(i) for i in range(labels.shape[1])]
        return labels.astype(np.int64), names
    if classes is not None and np.issubdtype(labels.dtype, np.integer):
        if labels.min() < 0 or labels.max() >= len(classes):
            raise DataError(f"{source}: labels range over {labels.min()}..{labels.max()}, but {len(classes)} classes were named.")
        return labels.astype(np.int64), list(classes)
    names = sorted({str(v) for v in labels.tolist()}, key=_natural_key)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in labels.tolist()], dtype=np.int64), names


def _natural_key(text: str):
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)
