"""Scenes: images with boxes and masks, for object detection and semantic segmentation.

A :class:`SceneSet` holds one :class:`Scene` per image: its pixels (a file path or an array), its
object boxes and labels (with a crowd flag per object: crowd and ignore regions count neither as
hits nor as misses), and, where there is one, its semantic mask (class indices, ``ignore_index``
for pixels that are not scored). Every file-based loader (:mod:`headstart.data.scenes.coco`,
:mod:`headstart.data.scenes.voc`, :mod:`headstart.data.scenes.masks`) returns one; a bad item is reported as a
:class:`Problem` (file, field, what is wrong) and skipped, and the rest load.

:func:`load_scenes` picks the loader from the source:

* ``builtin:animal-scenes`` (optionally ``?train=300&test=100&size=128&seed=0``): the synthetic
  generator in :mod:`headstart.data.scenes.synthetic`;
* a COCO JSON file;
* a folder: Pascal VOC (``Annotations/``), images + masks (``images/`` and ``masks/``), a folder
  holding one COCO JSON, or ``train/``, ``val/`` and ``test/`` subfolders of any of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import DataError

IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    """One bad item, reported and skipped: the file, the field inside it, and what is wrong."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "field": self.field, "message": self.message}


@dataclass
class Scene:
    """One annotated image.

    Attributes:
        image: A file path, or a uint8 array (H, W, 3).
        boxes: Object boxes (K, 4) as float ``x0, y0, x1, y1`` in pixels (x1, y1 exclusive).
        labels: Class index of each box (K,), into ``SceneSet.classes``.
        iscrowd: Whether each box is a crowd or ignore region (K,): not a target, not a false positive.
        mask: Semantic mask: a uint8 array (H, W) of indices into ``SceneSet.mask_classes`` (with
            ``ignore_index`` for unscored pixels), or None when the scene has none.
        name: A short name for messages and outputs (the file name, or ``scene-000012``).
        size: ``(height, width)`` of the image.
    """

    image: str | np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    mask: np.ndarray | None
    name: str
    size: tuple[int, int]

    def load_image(self) -> np.ndarray:
        """The image as a uint8 RGB array (H, W, 3)."""
        if isinstance(self.image, np.ndarray):
            return self.image
        from PIL import Image

        with Image.open(self.image) as image:
            return np.asarray(image.convert("RGB"))


@dataclass
class SceneSet:
    """Annotated images with a split per image.

    Attributes:
        source: What it was loaded from.
        classes: Object classes (detection labels index this list; no background entry).
        mask_classes: Segmentation classes: mask value ``i`` means ``mask_classes[i]``.
        scenes: The images that loaded.
        split: ``train``, ``val`` or ``test`` for each scene.
        problems: Bad items that were reported and skipped.
        ignore_index: Mask value of pixels that are not scored.
        synthetic: True for generated data (say so in every report).
    """

    source: str
    classes: list[str]
    mask_classes: list[str]
    scenes: list[Scene]
    split: np.ndarray
    problems: list[Problem] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX
    synthetic: bool = False

    def __len__(self) -> int:
        return len(self.scenes)

    def indices(self, split: str) -> np.ndarray:
        """Positions of the scenes in ``split``."""
        return np.flatnonzero(self.split == split)

    def subset(self, rows) -> SceneSet:
        """The scenes at ``rows``, with the same classes."""
        rows = [int(r) for r in rows]
        return SceneSet(
            self.source, self.classes, self.mask_classes, [self.scenes[r] for r in rows], self.split[rows],
            list(self.problems), self.ignore_index, self.synthetic,
        )

    def with_masks(self) -> SceneSet:
        """The scenes that have a semantic mask; the others are reported as problems."""
        missing = [i for i, scene in enumerate(self.scenes) if scene.mask is None]
        if len(missing) == len(self.scenes):
            raise DataError(
                f"{self.source} has no segmentation masks. Give a masks/ folder of PNGs beside images/, "
                "COCO polygons or RLE, or VOC SegmentationClass/."
            )
        kept = self.subset([i for i in range(len(self.scenes)) if self.scenes[i].mask is not None])
        kept.problems += [Problem(str(self.scenes[i].image) if isinstance(self.scenes[i].image, str) else self.scenes[i].name, "mask", "no mask for this image; skipped for segmentation") for i in missing]
        return kept

    def fingerprint(self) -> str:
        """A hash of the images and annotations (for checkpoint settings)."""
        import hashlib

        digest = hashlib.sha256()
        for scene, split in zip(self.scenes, self.split):
            digest.update(f"{scene.name}\0{split}\0{scene.size}\n".encode())
            digest.update(np.ascontiguousarray(scene.boxes, dtype=np.float32).tobytes())
            digest.update(np.ascontiguousarray(scene.labels, dtype=np.int64).tobytes())
            if isinstance(scene.image, np.ndarray):
                digest.update(scene.image[::7, ::7].tobytes())
        return digest.hexdigest()

    def dataset_summary(self) -> dict[str, Any]:
        """The summary in classification's shape (``headstart report`` draws it): objects per class and split, skipped items."""
        counts: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            rows = self.indices(split)
            if len(rows):
                labels = [int(l) for r in rows for l, c in zip(self.scenes[r].labels, self.scenes[r].iscrowd) if not c]
                per_class = np.bincount(np.array(labels, dtype=np.int64), minlength=len(self.classes)) if labels else np.zeros(len(self.classes), int)
                counts[split] = {name: int(n) for name, n in zip(self.classes, per_class)}
        return {
            "source": self.source + (" (synthetic)" if self.synthetic else ""),
            "modality": "image",
            "classes": list(self.classes),
            "counts": counts,
            "images": {split: int(len(self.indices(split))) for split in SPLITS if len(self.indices(split))},
            "skipped": [{"item": f"{p.file} ({p.field})", "reason": p.message} for p in self.problems],
        }

    def summary(self) -> dict[str, Any]:
        """Counts per split, the classes, and the problems."""
        counts = {}
        for split in SPLITS:
            rows = self.indices(split)
            if len(rows):
                objects = sum(int((~self.scenes[r].iscrowd).sum()) for r in rows)
                counts[split] = {"images": int(len(rows)), "objects": objects}
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "classes": list(self.classes),
            "mask_classes": list(self.mask_classes),
            "counts": counts,
            "problems": [p.to_dict() for p in self.problems],
        }


def make_scene(image, boxes, labels, iscrowd=None, mask=None, name: str = "", size=None) -> Scene:
    """A :class:`Scene` with arrays of the right dtypes and shapes (empty boxes allowed)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    iscrowd = np.zeros(len(labels), dtype=bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool).reshape(-1)
    if size is None:
        if isinstance(image, np.ndarray):
            size = image.shape[:2]
        else:
            from PIL import Image

            with Image.open(image) as opened:
                size = (opened.height, opened.width)
    return Scene(image, boxes, labels, iscrowd, mask, name or (Path(image).name if isinstance(image, str) else "scene"), (int(size[0]), int(size[1])))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (used by the writers)."""
    from headstart.io import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
