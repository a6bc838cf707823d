"""Scenes: images with boxes and masks, for object detection and semantic segmentation.

A :class:`SceneSet` holds one :class:`Scene` per image: its pixels (a file path or an array), its
object boxes and labels (with a crowd flag per object: crowd and ignore regions count neither as
hits nor as misses), and, where there is one, its semantic mask (class indices, ``ignore_index``
for pixels that are not scored). Every file-based loader (:mod:`headstart.tasks.coco`,
:mod:`headstart.tasks.voc`, :mod:`headstart.tasks.masks`) returns one; a bad item is reported as a
:class:`Problem` (file, field, what is wrong) and skipped, and the rest load.

:func:`load_scenes` picks the loader from the source:

* ``builtin:animal-scenes`` (optionally ``?train=300&test=100&size=128&seed=0``): the synthetic
  generator in :mod:`headstart.tasks.synthetic`;
* a COCO JSON file;
* a folder: Pascal VOC (``Annotations/``), images + masks (``images/`` and ``masks/``), a folder
  holding one COCO JSON, or ``train/``, ``val/`` and ``test/`` subfolders of any of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

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


def load_scenes(source: str | Path, *, seed: int = 0, test_fraction: float = 0.2, classes: list[str] | None = None) -> SceneSet:
    """Load annotated images for detection or segmentation.

    Args:
        source: ``builtin:animal-scenes[?train=N&test=N&size=PX&seed=S]``, a COCO JSON file, or a
            folder (Pascal VOC; ``images/`` + ``masks/``; one COCO JSON; or ``train/``, ``val/``,
            ``test/`` subfolders of these).
        seed: Seed of the held-out test split when the source has none.
        test_fraction: Share of the images held out for test when the source has no test split.
        classes: Object class names, in label order, where the source does not list them (VOC
            XML without a ``classes.txt``); others are then unknown categories.

    Returns:
        A :class:`SceneSet`; ``problems`` lists the items that were skipped, with file and field.

    Raises:
        DataError: The source is missing, unreadable as a whole, or has no usable image.
    """
    text = str(source)
    if text.startswith("builtin:"):
        scenes = _builtin(text, seed)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(f"Data path {path} does not exist. Give a COCO JSON file, a VOC folder, an images/ + masks/ folder, or builtin:animal-scenes.")
        scenes = _load_path(path, classes)
    if not scenes.scenes:
        details = "; ".join(str(p) for p in scenes.problems[:5])
        raise DataError(f"{scenes.source}: no usable image." + (f" Problems: {details}" if details else ""))
    if not len(scenes.indices("test")) and test_fraction > 0:
        train = scenes.indices("train")
        rng = np.random.default_rng(seed)
        held = rng.permutation(train)[: max(1, int(round(test_fraction * len(train))))] if len(train) > 1 else train[:0]
        scenes.split[held] = "test"
    return scenes


def _builtin(text: str, seed: int) -> SceneSet:
    from headstart.data.builtin import SCENE_BUILTINS
    from headstart.errors import did_you_mean

    name, _, query = text.removeprefix("builtin:").partition("?")
    if name not in SCENE_BUILTINS:
        raise DataError(f"Unknown scene dataset {text!r}.{did_you_mean(name, SCENE_BUILTINS)} Known: {', '.join('builtin:' + n for n in SCENE_BUILTINS)}.")
    options = {"train": 300, "test": 100, "size": 128, "seed": seed}
    for key, value in parse_qsl(query):
        if key not in options:
            raise DataError(f"{text}: unknown option {key!r}; options are {', '.join(options)} (for example ?train=300&test=100&size=128).")
        if not value.isdigit():
            raise DataError(f"{text}: option {key}={value!r} must be a whole number.")
        options[key] = int(value)
    from headstart.tasks.synthetic import animal_scenes

    return animal_scenes(n_train=options["train"], n_test=options["test"], size=options["size"], seed=options["seed"])


def _load_path(path: Path, classes: list[str] | None) -> SceneSet:
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"Cannot read {path} as annotations: expected a COCO .json file or a folder.")
        from headstart.tasks.coco import load_coco

        return load_coco(path)
    split_dirs = [path / s for s in SPLITS if (path / s).is_dir()]
    if split_dirs:
        parts = [(d.name, _load_folder(d, classes, path)) for d in split_dirs]
        return _merge(str(path), parts)
    return _load_folder(path, classes, path)


def _load_folder(folder: Path, classes: list[str] | None, root: Path) -> SceneSet:
    if (folder / "Annotations").is_dir():
        from headstart.tasks.voc import load_voc

        return load_voc(folder, classes=classes or read_class_file(folder) or read_class_file(root))
    jsons = sorted(folder.glob("*.json"))
    jsons = [p for p in jsons if p.name != "classes.json"]
    if len(jsons) == 1:
        from headstart.tasks.coco import load_coco

        return load_coco(jsons[0])
    if len(jsons) > 1:
        raise DataError(f"{folder} holds several JSON files ({', '.join(p.name for p in jsons)}); give the COCO annotation file itself.")
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        from headstart.tasks.masks import load_mask_folder

        return load_mask_folder(folder, class_file=_find_class_file(folder, root))
    raise DataError(
        f"{folder} is not a dataset folder headstart knows. Expected Annotations/ (Pascal VOC), one COCO .json file, "
        "images/ + masks/ (segmentation), or train/, val/, test/ subfolders of these."
    )


def _find_class_file(folder: Path, root: Path) -> Path | None:
    for base in (folder, root):
        if (base / "classes.json").is_file():
            return base / "classes.json"
    return None


def read_class_file(folder: Path) -> list[str] | None:
    """Class names from ``classes.txt`` (one per line) or ``classes.json`` in ``folder``, else None."""
    if (folder / "classes.txt").is_file():
        return [line.strip() for line in (folder / "classes.txt").read_text().splitlines() if line.strip()]
    if (folder / "classes.json").is_file():
        from headstart.tasks.masks import parse_class_map

        names, _ = parse_class_map(folder / "classes.json")
        return [n for n in names if n != "background"]
    return None


def _merge(source: str, parts: list[tuple[str, SceneSet]]) -> SceneSet:
    """Join per-split scene sets; their classes must agree."""
    first = parts[0][1]
    scenes, splits, problems = [], [], []
    for split, part in parts:
        if part.classes != first.classes:
            raise DataError(
                f"{source}: the {split} split has classes {part.classes}, but {parts[0][0]} has {first.classes}. "
                "Every split must list the same categories in the same order."
            )
        scenes += part.scenes
        splits += [split] * len(part.scenes)
        problems += part.problems
    mask_classes = max((p.mask_classes for _, p in parts), key=len)
    return SceneSet(source, first.classes, mask_classes, scenes, np.array(splits, dtype=object), problems, first.ignore_index, first.synthetic)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (used by the writers)."""
    from headstart.features.store import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
