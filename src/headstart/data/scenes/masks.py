"""Segmentation masks: PNGs of class indices, palette PNGs, or colour PNGs with a class map.

A mask pixel holds a class index (``mask_classes[i]``) or the ignore index (255 by default), which
no loss and no metric counts. Mask files come in three kinds:

* a greyscale (``L``) PNG whose values are the class indices;
* a palette (``P``) PNG, as Pascal VOC ships them: the palette *indices* are the class indices, and
  the colours are only for viewing;
* a colour (``RGB``) PNG, read through a class map that gives each class its colour.

A class map is ``classes.json``: a list of names (index order), a list of ``{"name", "color"}``
objects, or an object ``{"name": [r, g, b]}``. Without one, classes are named ``class_<i>``.

:func:`load_mask_folder` reads ``images/`` + ``masks/`` (same file stems). A mask whose size differs
from its image's, or that holds values that are neither class indices nor the ignore index, is
reported with file and field and skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from headstart.errors import DataError
from headstart.data.scenes.scene import IGNORE_INDEX, Problem, SceneSet, make_scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def parse_class_map(path: str | Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Class names (index order) and their colours (or None) from a ``classes.json``.

    Raises:
        DataError: The file is not one of the accepted shapes.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable class map ({type(exc).__name__}: {exc}).") from None
    if isinstance(data, dict):
        data = [{"name": name, "color": colour} for name, colour in data.items()]
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: a class map is a list of names, a list of {{name, color}} objects, or {{name: [r, g, b]}}.")
    names, colours = [], []
    for position, entry in enumerate(data):
        if isinstance(entry, str):
            names.append(entry)
            colours.append(None)
        elif isinstance(entry, dict) and "name" in entry:
            names.append(str(entry["name"]))
            colour = entry.get("color")
            if colour is not None and (not isinstance(colour, (list, tuple)) or len(colour) != 3):
                raise DataError(f"{path}: [{position}].color must be [r, g, b], got {colour!r}.")
            colours.append(tuple(int(c) for c in colour) if colour is not None else None)
        else:
            raise DataError(f"{path}: [{position}] must be a name or a {{name, color}} object, got {entry!r}.")
    return names, (colours if all(c is not None for c in colours) else None)


def read_index_mask(
    path: str | Path,
    size: tuple[int, int],
    n_classes: int,
    colours: list[tuple[int, int, int]] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray | None, Problem | None]:
    """Read a mask as class indices and check it against its image.

    Args:
        path: The PNG.
        size: ``(height, width)`` of its image.
        n_classes: Number of mask classes (valid indices are ``0 .. n_classes - 1``).
        colours: Class colours, to read an RGB mask; None when masks hold indices.
        ignore_index: The index of unscored pixels.

    Returns:
        ``(mask, None)``, or ``(None, problem)`` for a mask that cannot be used.
    """
    from PIL import Image

    file = str(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode, mask_size = image.mode, (image.height, image.width)
            if mode in ("RGB", "RGBA"):
                pixels = np.asarray(image.convert("RGB"))
            elif mode in ("L", "P", "I", "I;16"):
                pixels = np.asarray(image)
            else:
                return None, Problem(file, "mode", f"mask mode {mode} is not L, P or RGB; skipped")
    except OSError as exc:
        return None, Problem(file, "file", f"cannot read the mask ({exc}); skipped")
    if mask_size != tuple(size):
        return None, Problem(file, "size", f"mask is {mask_size[1]}x{mask_size[0]}, but its image is {size[1]}x{size[0]}; skipped")
    if pixels.ndim == 3:
        if colours is None:
            return None, Problem(file, "mode", "colour (RGB) mask, but the class map gives no colours; give classes.json with a color per class, or save index masks")
        mask = np.full(pixels.shape[:2], 254, dtype=np.int64)
        for index, colour in enumerate(colours):
            mask[(pixels == np.array(colour)).all(axis=-1)] = index
        mask[(pixels == 255).all(axis=-1) & (mask == 254)] = ignore_index
        unknown = mask == 254
        if unknown.any():
            colour = tuple(int(v) for v in pixels[unknown][0])
            return None, Problem(file, "pixels", f"{int(unknown.sum())} pixels have colour {colour}, which is no class's colour in the class map; skipped")
    else:
        mask = pixels.astype(np.int64)
    bad = (mask >= n_classes) & (mask != ignore_index)
    if bad.any() or (mask < 0).any():
        values = sorted({int(v) for v in np.unique(mask[bad | (mask < 0)])})[:5]
        return None, Problem(file, "pixels", f"values {values} are neither class indices (0..{n_classes - 1}) nor the ignore index {ignore_index}; skipped")
    return mask.astype(np.uint8), None


def load_mask_folder(folder: str | Path, class_file: str | Path | None = None, ignore_index: int = IGNORE_INDEX) -> SceneSet:
    """Load ``folder/images/*`` with ``folder/masks/<stem>.png`` for semantic segmentation.

    Boxes are not annotated in this layout, so the scenes have none (detection needs COCO or VOC).

    Raises:
        DataError: No images, or an unusable class map.
    """
    from PIL import Image

    folder = Path(folder)
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{folder / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    names, colours = parse_class_map(class_file) if class_file is not None else (None, None)
    problems: list[Problem] = []
    loaded = []
    for image_path in images:
        mask_path = folder / "masks" / (image_path.stem + ".png")
        if not mask_path.is_file():
            problems.append(Problem(str(image_path), "mask", f"no mask {mask_path}; skipped"))
            continue
        with Image.open(image_path) as image:
            size = (image.height, image.width)
        loaded.append((image_path, mask_path, size))
    if names is None:
        highest = 0
        for _, mask_path, _ in loaded:
            with Image.open(mask_path) as image:
                values = np.unique(np.asarray(image)) if image.mode in ("L", "P") else np.array([0])
            values = values[values != ignore_index]
            highest = max(highest, int(values.max()) if len(values) else 0)
        names = ["background"] + [f"class_{i}" for i in range(1, highest + 1)]
    scenes = []
    for image_path, mask_path, size in loaded:
        mask, problem = read_index_mask(mask_path, size, len(names), colours, ignore_index)
        if problem is not None:
            problems.append(problem)
            continue
        scenes.append(make_scene(str(image_path), [], [], None, mask, image_path.name, size))
    classes = [n for n in names if n != "background"]
    return SceneSet(str(folder), classes, names, scenes, np.full(len(scenes), "train", dtype=object), problems, ignore_index)
