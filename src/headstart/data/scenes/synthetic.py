"""``builtin:animal-scenes``: a synthetic detection and segmentation dataset that runs anywhere.

No real box or mask dataset installs offline, so this generator makes one with exact labels. It is
synthetic, and every report that uses it says so.

* Backgrounds are random crops of real photographs and textures shipped with scikit-image
  (brick, grass, gravel, camera, moon, coffee, chelsea, astronaut, rocket, coins, ...).
* Objects are Animal-MNIST silhouettes (10 classes), pasted at a random scale, aspect and position,
  each in a random colour; the silhouette's own pixels are the alpha mask.
* Occlusion is handled: after all objects are pasted, each object's *visible* mask and box are
  recomputed from what later pastes left of it. An object with less than ``min_visible`` of its
  area left is dropped; what remains of it becomes an ignore region (a crowd box for detection,
  ``ignore_index`` pixels for segmentation), so it counts neither as a hit nor as a miss.
* Training and test scenes use disjoint silhouettes (the first 80% of each class for training,
  the rest for test).
* Seeded: scene ``i`` of a split depends only on ``(seed, split, i, size)``.
"""

from __future__ import annotations

import functools

import numpy as np

from headstart.data.scenes.scene import IGNORE_INDEX, SceneSet, make_scene

BACKGROUNDS = ("brick", "grass", "gravel", "camera", "moon", "coffee", "chelsea", "astronaut", "rocket", "coins", "immunohistochemistry", "hubble_deep_field")
_SPLIT_CODE = {"train": 1, "test": 2}


@functools.lru_cache(maxsize=1)
def _background_sources() -> tuple[np.ndarray, ...]:
    from headstart.errors import require

    data = require("skimage.data", "assets")
    sources = []
    for name in BACKGROUNDS:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        sources.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return tuple(sources)


@functools.lru_cache(maxsize=1)
def _silhouettes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from headstart.data.builtin import animal_mnist

    dataset = animal_mnist()
    return dataset.items, dataset.labels, list(dataset.classes)


def _pools(labels: np.ndarray, split: str) -> list[np.ndarray]:
    """Silhouette indices of each class for a split: the first 80% for train, the rest for test."""
    pools = []
    for label in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == label)
        cut = int(len(members) * 0.8)
        pools.append(members[:cut] if split == "train" else members[cut:])
    return pools


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    sources = _background_sources()
    source = sources[int(rng.integers(len(sources)))]
    height, width = source.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(height, width))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = _resize(source[top : top + side, left : left + side], size, size).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop * rng.uniform(0.7, 1.1)


def _colour(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    hue, saturation, value = rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255


def render_scene(
    rng: np.random.Generator,
    size: int,
    silhouettes: np.ndarray,
    silhouette_labels: np.ndarray,
    pools: list[np.ndarray],
    max_objects: int = 4,
    min_visible: float = 0.4,
    scale: tuple[float, float] = (0.22, 0.5),
):
    """One scene: image (H, W, 3) uint8, boxes, labels, crowd flags and the semantic mask."""
    image = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)
    full_areas, classes = [], []
    for index in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(pools)))
        silhouette = silhouettes[int(rng.choice(pools[label]))]
        side = rng.uniform(*scale) * size
        aspect = rng.uniform(0.8, 1.25)
        height = max(8, min(size, int(round(side * aspect))))
        width = max(8, min(size, int(round(side / aspect))))
        alpha = _resize(silhouette, height, width).astype(np.float32) / 255.0
        if rng.random() < 0.5:
            alpha = alpha[:, ::-1]
        top = int(rng.integers(0, size - height + 1))
        left = int(rng.integers(0, size - width + 1))
        shade = 0.8 + 0.2 * np.linspace(1, 0, height, dtype=np.float32)[:, None, None]
        region = image[top : top + height, left : left + width]
        region[:] = region * (1 - alpha[..., None]) + _colour(rng) * shade * alpha[..., None]
        solid = alpha > 0.5
        owner[top : top + height, left : left + width][solid] = index
        full_areas.append(int(solid.sum()))
        classes.append(label)
    return image.clip(0, 255).astype(np.uint8), *visible_objects(owner, full_areas, classes, min_visible)


def visible_objects(owner: np.ndarray, full_areas: list[int], classes: list[int], min_visible: float):
    """Boxes, labels, crowd flags and semantic mask from an owner map (the index of the top object per pixel).

    An object's visible mask is where it owns the pixel; its box is that mask's extent. Objects
    with less than ``min_visible`` of their pasted area left become ignore regions.

    Returns:
        ``(boxes, labels, iscrowd, mask)``: boxes (K, 4) ``x0, y0, x1, y1`` (exclusive ends), labels
        (K,), crowd flags (K,), and a uint8 mask with ``label + 1`` per visible object pixel, 0 for
        background and ``IGNORE_INDEX`` where a dropped object shows.
    """
    mask = np.zeros(owner.shape, dtype=np.uint8)
    boxes, labels, crowd = [], [], []
    for index, (area, label) in enumerate(zip(full_areas, classes)):
        visible = owner == index
        count = int(visible.sum())
        if count == 0:
            continue
        rows = np.flatnonzero(visible.any(axis=1))
        cols = np.flatnonzero(visible.any(axis=0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        labels.append(label)
        hidden = count < min_visible * max(area, 1)
        crowd.append(hidden)
        mask[visible] = IGNORE_INDEX if hidden else label + 1
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64), np.array(crowd, dtype=bool), mask


def animal_scenes(n_train: int = 300, n_test: int = 100, size: int = 128, seed: int = 0, max_objects: int = 4, min_visible: float = 0.4) -> SceneSet:
    """Generate ``builtin:animal-scenes`` (synthetic; see the module docstring).

    Args:
        n_train: Training scenes.
        n_test: Test scenes (made from silhouettes that no training scene uses).
        size: Scene side in pixels.
        seed: The same seed gives the same scenes.
        max_objects: Most objects pasted per scene (at least one is).
        min_visible: Objects with less than this share of their area visible are dropped (ignore regions).

    Returns:
        A :class:`SceneSet` with ``synthetic=True``.
    """
    if size < 32:
        raise ValueError(f"animal-scenes size must be at least 32 pixels, got {size}.")
    silhouettes, labels, classes = _silhouettes()
    scenes, splits = [], []
    for split, count in (("train", n_train), ("test", n_test)):
        pools = _pools(labels, split)
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, size])
            image, boxes, scene_labels, crowd, mask = render_scene(rng, size, silhouettes, labels, pools, max_objects, min_visible)
            scenes.append(make_scene(image, boxes, scene_labels, crowd, mask, name=f"{split}-{index:06d}"))
            splits.append(split)
    source = f"builtin:animal-scenes?train={n_train}&test={n_test}&size={size}&seed={seed}"
    return SceneSet(source, classes, ["background", *classes], scenes, np.array(splits, dtype=object), [], IGNORE_INDEX, synthetic=True)
