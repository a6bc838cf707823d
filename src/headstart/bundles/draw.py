"""Pictures of detection and segmentation predictions: boxes drawn on the image, mask overlays.

Also the input helpers :meth:`headstart.bundles.TaskBundle.predict_batch` and ``write_outputs`` use:
reading an image as a uint8 RGB array and naming its output files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def draw_boxes(image: np.ndarray, boxes: list[dict[str, Any]], classes: list[str], palette: list[list[int]]):
    """The image with each box drawn in its class colour and labelled ``class score``."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image).convert("RGB")
    scale = max(1, 256 // max(1, min(canvas.size)))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for box in boxes:
        colour = tuple(palette[classes.index(box["label"]) + 1]) if box["label"] in classes else (255, 0, 0)
        x0, y0, x1, y1 = (v * scale for v in box["box"])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        text = f"{box['label']} {box['score']:.2f}"
        draw.rectangle([x0, max(0, y0 - 11), x0 + 6 * len(text) + 2, y0], fill=colour)
        draw.text((x0 + 1, max(0, y0 - 11)), text, fill=(0, 0, 0))
    return canvas


def overlay(image: np.ndarray, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5):
    """The image blended with the mask's class colours (background left as it is)."""
    from PIL import Image

    colours = np.asarray(palette, dtype=np.float32)[mask]
    blend = np.where((mask > 0)[..., None], image * (1 - alpha) + colours * alpha, image)
    return Image.fromarray(blend.clip(0, 255).astype(np.uint8))


def read_image(item) -> np.ndarray:
    """A path or array as a uint8 RGB array (grey arrays are repeated, an alpha channel dropped)."""
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.stack([item] * 3, axis=-1)
        return np.ascontiguousarray(item[..., :3]).astype(np.uint8)
    from PIL import Image

    with Image.open(item) as image:
        return np.asarray(image.convert("RGB"))


def unique_stem(name: str, used: set[str]) -> str:
    """A file stem for ``name`` not yet in ``used`` (``name``, ``name-2``, ...); adds it to ``used``."""
    stem = Path(name).stem if not name.startswith("array(") else "array"
    candidate, counter = stem, 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}-{counter}"
    used.add(candidate)
    return candidate
