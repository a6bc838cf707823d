"""Read a detection or segmentation dataset from any supported source: :func:`load_scenes`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from headstart.data.scenes.scene import SPLITS, SceneSet
from headstart.errors import DataError


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
    from headstart.data.scenes.synthetic import animal_scenes

    return animal_scenes(n_train=options["train"], n_test=options["test"], size=options["size"], seed=options["seed"])


def _load_path(path: Path, classes: list[str] | None) -> SceneSet:
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"Cannot read {path} as annotations: expected a COCO .json file or a folder.")
        from headstart.data.scenes.coco import load_coco

        return load_coco(path)
    split_dirs = [path / s for s in SPLITS if (path / s).is_dir()]
    if split_dirs:
        parts = [(d.name, _load_folder(d, classes, path)) for d in split_dirs]
        return _merge(str(path), parts)
    return _load_folder(path, classes, path)


def _load_folder(folder: Path, classes: list[str] | None, root: Path) -> SceneSet:
    if (folder / "Annotations").is_dir():
        from headstart.data.scenes.voc import load_voc

        return load_voc(folder, classes=classes or read_class_file(folder) or read_class_file(root))
    jsons = sorted(folder.glob("*.json"))
    jsons = [p for p in jsons if p.name != "classes.json"]
    if len(jsons) == 1:
        from headstart.data.scenes.coco import load_coco

        return load_coco(jsons[0])
    if len(jsons) > 1:
        raise DataError(f"{folder} holds several JSON files ({', '.join(p.name for p in jsons)}); give the COCO annotation file itself.")
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        from headstart.data.scenes.masks import load_mask_folder

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
        from headstart.data.scenes.masks import parse_class_map

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
