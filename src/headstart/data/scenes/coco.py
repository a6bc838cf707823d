"""COCO-format annotations: read them (bad items reported and skipped) and write scene sets as COCO.

Read: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories`` (``id``, ``name``)
and ``annotations`` (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``, ``iscrowd``,
optional ``ignore``, optional ``segmentation`` polygons or RLE). Crowd and ``ignore`` annotations
become ignore regions. Image files are looked up beside the JSON, then in ``images/`` beside it.
Semantic masks come from a ``masks/`` folder beside the images (``<image stem>.png`` of class
indices, 0 = background, category ``k`` of the list = ``k + 1``), else from the annotations'
polygons or RLE (needs pycocotools).

Each of these is reported with file and field, and its image skipped: a box outside the image, a
zero-area box, an unknown category id, a mask whose size differs from the image's, an image file
that is missing; an annotation that references a missing image is reported and dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from headstart.errors import DataError
from headstart.data.scenes.scene import IGNORE_INDEX, Problem, SceneSet, make_scene, write_json

BOX_TOLERANCE = 1.0  # pixels a box may overshoot the image border (rounding); clipped, not reported


def load_coco(path: str | Path, image_root: str | Path | None = None) -> SceneSet:
    """Load a COCO annotation file.

    Args:
        path: The JSON file.
        image_root: Folder of the image files (default: beside the JSON, or its ``images/``).

    Returns:
        A :class:`SceneSet` (all ``train``); ``problems`` names every skipped item with its field.

    Raises:
        DataError: The file is not JSON, or lacks ``images``, ``annotations`` or ``categories``.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable COCO JSON file ({type(exc).__name__}: {exc}).") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DataError(f"{path}: field {key!r} is missing or not a list; a COCO file has images, annotations and categories lists.")
    file = str(path)
    categories = document["categories"]
    class_of: dict[int, int] = {}
    classes: list[str] = []
    for position, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DataError(f"{path}: categories[{position}] needs an id and a name, got {category!r}.")
        class_of[category["id"]] = len(classes)
        classes.append(str(category["name"]))
    roots = [Path(image_root)] if image_root is not None else [path.parent, path.parent / "images"]
    problems: list[Problem] = []
    images: dict[object, dict] = {}
    for position, entry in enumerate(document["images"]):
        where = f"images[{position}]"
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            problems.append(Problem(file, where, "needs an id and a file_name; image skipped"))
            continue
        found = next((root / entry["file_name"] for root in roots if (root / entry["file_name"]).is_file()), None)
        if found is None:
            tried = ", ".join(str(root / entry["file_name"]) for root in roots)
            problems.append(Problem(file, f"{where}.file_name", f"image file not found (tried {tried}); image skipped"))
            continue
        size = _image_size(found)
        declared = (entry.get("height"), entry.get("width"))
        if None not in declared and tuple(declared) != size:
            problems.append(Problem(file, f"{where}.width/height", f"says {declared[1]}x{declared[0]}, but {found} is {size[1]}x{size[0]}; image skipped"))
            continue
        images[entry["id"]] = {"path": found, "size": size, "boxes": [], "labels": [], "crowd": [], "segments": [], "bad": False}
    for position, annotation in enumerate(document["annotations"]):
        where = f"annotations[{position}]"
        image = images.get(annotation.get("image_id")) if isinstance(annotation, dict) else None
        if image is None:
            known = any(e.get("id") == annotation.get("image_id") for e in document["images"] if isinstance(e, dict)) if isinstance(annotation, dict) else False
            if not known:
                problems.append(Problem(file, f"{where}.image_id", f"image id {annotation.get('image_id') if isinstance(annotation, dict) else None!r} is not in images; annotation dropped"))
            continue
        reason, box = _check_annotation(annotation, image["size"], class_of)
        if reason is not None:
            field, message = reason
            problems.append(Problem(file, f"{where}.{field}", f"{message}; image {image['path'].name} skipped"))
            image["bad"] = True
            continue
        crowd = bool(annotation.get("iscrowd", 0)) or bool(annotation.get("ignore", 0))
        image["boxes"].append(box)
        image["labels"].append(class_of[annotation["category_id"]])
        image["crowd"].append(crowd)
        image["segments"].append((annotation.get("segmentation"), class_of[annotation["category_id"]], crowd))
    mask_dirs = [root.parent / "masks" if root.name == "images" else root / "masks" for root in roots]
    mask_dir = next((d for d in mask_dirs if d.is_dir()), None)
    scenes = []
    for image in images.values():
        if image["bad"]:
            continue
        mask, problem = _mask_for(image, mask_dir, len(classes))
        if problem is not None:
            problems.append(problem)
            continue
        scenes.append(make_scene(str(image["path"]), image["boxes"], image["labels"], image["crowd"], mask, image["path"].name, image["size"]))
    info = document.get("info") if isinstance(document.get("info"), dict) else {}
    return SceneSet(str(path), classes, ["background", *classes], scenes, np.full(len(scenes), "train", dtype=object), problems, IGNORE_INDEX, bool(info.get("synthetic", False)))


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def _check_annotation(annotation: dict, size: tuple[int, int], class_of: dict) -> tuple[tuple[str, str] | None, list[float] | None]:
    """``((field, message), None)`` for a bad annotation, else ``(None, [x0, y0, x1, y1])`` clipped to the image."""
    if annotation.get("category_id") not in class_of:
        return ("category_id", f"category id {annotation.get('category_id')!r} is not in categories (known: {sorted(class_of)})"), None
    bbox = annotation.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return ("bbox", f"must be [x, y, width, height], got {bbox!r}"), None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return ("bbox", f"{list(bbox)} has zero area (width {w:g}, height {h:g})"), None
    height, width = size
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return ("bbox", f"{list(bbox)} lies outside the {width}x{height} image"), None
    return None, [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]


def _mask_for(image: dict, mask_dir: Path | None, n_classes: int) -> tuple[np.ndarray | None, Problem | None]:
    """The image's semantic mask from ``masks/``, else from its segmentations, else None."""
    if mask_dir is not None:
        mask_path = mask_dir / (image["path"].stem + ".png")
        if not mask_path.is_file():
            return None, None
        from headstart.data.scenes.masks import read_index_mask

        return read_index_mask(mask_path, image["size"], n_classes + 1)
    segments = [s for s in image["segments"] if s[0]]
    if not segments:
        return None, None
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return None, None
    height, width = image["size"]
    mask = np.zeros((height, width), dtype=np.uint8)
    for segmentation, label, crowd in segments:
        if isinstance(segmentation, list):
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        pixels = mask_utils.decode(rle).astype(bool)
        mask[pixels] = IGNORE_INDEX if crowd else label + 1
    return mask, None


def write_coco(scenes: SceneSet, root: str | Path) -> Path:
    """Write a scene set to disk: ``root/<split>/{images,masks}/*.png`` and ``root/<split>/annotations.json``.

    Masks are palette PNGs whose indices are the class indices (``classes.json`` at the root maps
    them to names and display colours). Crowd and ignore regions are written with ``iscrowd: 1``.
    ``load_scenes(root)`` reads the folder back.

    Returns:
        ``root``.
    """
    from PIL import Image

    root = Path(root)
    palette = class_palette(len(scenes.mask_classes), scenes.ignore_index)
    write_json(root / "classes.json", [{"name": name, "color": palette[i]} for i, name in enumerate(scenes.mask_classes)])
    for split in ("train", "val", "test"):
        rows = scenes.indices(split)
        if not len(rows):
            continue
        folder = root / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id, row in enumerate(rows, start=1):
            scene = scenes.scenes[row]
            stem = Path(scene.name).stem
            Image.fromarray(scene.load_image()).save(folder / "images" / f"{stem}.png")
            if scene.mask is not None:
                save_palette_png(scene.mask, folder / "masks" / f"{stem}.png", palette)
            height, width = scene.size
            images.append({"id": image_id, "file_name": f"{stem}.png", "width": width, "height": height})
            for box, label, crowd in zip(scene.boxes.tolist(), scene.labels.tolist(), scene.iscrowd.tolist()):
                x0, y0, x1, y1 = box
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(crowd),
                })
        document = {
            "info": {"description": f"{scenes.source} ({split})" + (" - synthetic data" if scenes.synthetic else ""), "synthetic": scenes.synthetic},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(scenes.classes)],
        }
        write_json(folder / "annotations.json", document)
    return root


def class_palette(n: int, ignore_index: int = IGNORE_INDEX) -> list[list[int]]:
    """Pascal VOC's colour map: ``n`` colours (background black), and white for ``ignore_index``."""
    colours = []
    for index in range(max(n, ignore_index + 1)):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append([r, g, b])
    colours[ignore_index] = [255, 255, 255]
    return colours


def save_palette_png(mask: np.ndarray, path: Path, palette: list[list[int]]) -> None:
    """Save a class-index mask as a palette PNG (indices preserved, colours for viewing)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    flat = [c for colour in palette[:256] for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
