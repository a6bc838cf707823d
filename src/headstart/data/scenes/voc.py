"""Pascal VOC: ``Annotations/*.xml`` boxes, ``JPEGImages/`` images, optional ``SegmentationClass/`` masks.

Objects marked ``difficult`` become ignore regions (VOC's own evaluation ignores them). Boxes use
VOC's 1-based inclusive pixel coordinates and are converted to ``x0, y0, x1, y1`` with exclusive
ends. The split comes from ``ImageSets/Main/{train,val,test}.txt`` where present (else everything
is ``train``). Class names come from ``classes`` (or a ``classes.txt``), else the 20 VOC classes
when every name is one of them, else the sorted names found.

Each of these is reported with file and field, and its image skipped: a box outside the image, a
zero-area box, an unknown class name, a mask whose size differs from the image's, and a missing image file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from headstart.errors import DataError
from headstart.data.scenes.scene import IGNORE_INDEX, Problem, SceneSet, make_scene

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def load_voc(root: str | Path, classes: list[str] | None = None) -> SceneSet:
    """Load a Pascal VOC folder.

    Raises:
        DataError: No XML files in ``Annotations/``.
    """
    root = Path(root)
    xml_files = sorted((root / "Annotations").glob("*.xml"))
    if not xml_files:
        raise DataError(f"{root / 'Annotations'} holds no .xml files.")
    problems: list[Problem] = []
    parsed = []
    for xml_path in xml_files:
        try:
            parsed.append((xml_path, ET.parse(xml_path).getroot()))
        except ET.ParseError as exc:
            problems.append(Problem(str(xml_path), "xml", f"not valid XML ({exc}); skipped"))
    if classes is None:
        found = sorted({(obj.findtext("name") or "").strip() for _, tree in parsed for obj in tree.iter("object")} - {""})
        classes = list(VOC_CLASSES) if set(found) <= set(VOC_CLASSES) else found
    index = {name: i for i, name in enumerate(classes)}
    split_of = _image_sets(root)
    scenes, splits = [], []
    for xml_path, tree in parsed:
        scene = _scene(root, xml_path, tree, index, problems)
        if scene is not None:
            scenes.append(scene)
            splits.append(split_of.get(xml_path.stem, "train"))
    return SceneSet(str(root), list(classes), ["background", *classes], scenes, np.array(splits, dtype=object), problems, IGNORE_INDEX)


def _image_sets(root: Path) -> dict[str, str]:
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            for line in listing.read_text().split():
                split_of.setdefault(line.strip(), split)
    return split_of


def _scene(root: Path, xml_path: Path, tree: ET.Element, index: dict[str, int], problems: list[Problem]):
    file = str(xml_path)
    filename = (tree.findtext("filename") or f"{xml_path.stem}.jpg").strip()
    image_path = root / "JPEGImages" / filename
    if not image_path.is_file():
        problems.append(Problem(file, "filename", f"image {image_path} not found; skipped"))
        return None
    from PIL import Image

    with Image.open(image_path) as image:
        size = (image.height, image.width)
    height, width = size
    boxes, labels, crowd = [], [], []
    for position, obj in enumerate(tree.iter("object")):
        where = f"object[{position}]"
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            problems.append(Problem(file, f"{where}.name", f"class {name!r} is not one of the {len(index)} classes; image skipped"))
            return None
        box = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems.append(Problem(file, f"{where}.bndbox", "needs numeric xmin, ymin, xmax, ymax; image skipped"))
            return None
        x0, y0 = x0 - 1, y0 - 1  # 1-based inclusive -> 0-based, exclusive ends
        if x1 <= x0 or y1 <= y0:
            problems.append(Problem(file, f"{where}.bndbox", f"({x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g}) has zero area; image skipped"))
            return None
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
            problems.append(Problem(file, f"{where}.bndbox", f"({x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image; image skipped"))
            return None
        boxes.append([max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)])
        labels.append(index[name])
        crowd.append((obj.findtext("difficult") or "0").strip() == "1")
    mask = None
    mask_path = root / "SegmentationClass" / f"{xml_path.stem}.png"
    if mask_path.is_file():
        from headstart.data.scenes.masks import read_index_mask

        mask, problem = read_index_mask(mask_path, size, len(index) + 1)
        if problem is not None:
            problems.append(problem)
            return None
    return make_scene(str(image_path), boxes, labels, crowd, mask, image_path.name, size)
