"""Resize (shorter side) and centre-crop batches of decoded uint8 images of any sizes, as tensors.

Two ways, same geometry (that of :func:`headstart.data.transforms.preprocess_pil`):

* :func:`interpolate_resize_crop`: one antialiased ``F.interpolate`` call per distinct image size.
  Photos of varied sizes therefore resize one at a time.
* :func:`roi_resize_crop`: the images are padded to a common canvas and every image's crop box is
  resampled by one ``torchvision.ops.roi_align`` call per supersampling factor (at most
  ``SUPERSAMPLE_MAX`` calls, however many sizes the batch holds), then merged by one depthwise
  convolution with a tent kernel. This stands in for antialiased *bilinear* resizing:
  ``benchmarks/resize.py`` measures it against the per-image path.

How ``roi_resize_crop`` antialiases. An image that shrinks by a factor ``s`` (input pixels per
output pixel) is resampled on a grid ``k = round(s)`` times finer than the output (``k`` from 1 to
``SUPERSAMPLE_MAX``), so each fine cell covers about one input pixel; ``roi_align`` averages the
bilinear samples inside each cell (``sampling_ratio``; 0: ceil of the input pixels per cell). A
``(2k - 1)``-tap tent kernel with stride ``k`` then merges the fine cells into output pixels: this is
the triangle filter of half-width ``s`` that antialiased bilinear interpolation applies. With
``k = 1`` (upscaling, or shrinking by less than 1.5x) it is plain ``roi_align``, which equals
bilinear interpolation when upscaling.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from headstart.backbones.spec import BackboneSpec
from headstart.data.transforms import center_crop, resize_size

ROI_SAMPLING_RATIO = 0  # roi_align samples per fine cell and axis; 0: adaptive. Chosen by benchmarks/resize.py
SUPERSAMPLE_MAX = 3  # the finest grid, in fine cells per output pixel and axis. Chosen by benchmarks/resize.py
CANVAS_ELEMENTS = 1 << 28  # the most float elements of one padded canvas, and of one roi_align output


def resized_shape(spec: BackboneSpec, height: int, width: int) -> tuple[int, int]:
    """The (height, width) an image resizes to before the centre crop (truncated, as torchvision does)."""
    short = resize_size(spec, min(height, width))
    scale = short / min(height, width)
    return max(short, int(height * scale)), max(short, int(width * scale))


def crop_box(spec: BackboneSpec, height: int, width: int) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)``: the centre crop of the resized image, in the original image's pixel coordinates.

    Resampling this box to S x S with pixel centres aligned gives the per-image path's geometry.
    """
    new_height, new_width = resized_shape(spec, height, width)
    size = spec.input_size
    top = int(round((new_height - size) / 2.0))  # the offsets of center_crop
    left = int(round((new_width - size) / 2.0))
    sy, sx = height / new_height, width / new_width
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def shrink_factor(spec: BackboneSpec, height: int, width: int) -> float:
    """Input pixels per output pixel (below 1 when the image is upscaled)."""
    new_height, new_width = resized_shape(spec, height, width)
    return max(height / new_height, width / new_width)


def supersample(spec: BackboneSpec, height: int, width: int, most: int = SUPERSAMPLE_MAX) -> int:
    """Fine cells per output pixel and axis for an image: about one input pixel per cell, 1 to ``most``."""
    return max(1, min(int(most), int(math.floor(shrink_factor(spec, height, width) + 0.5))))


def interpolate_resize_crop(images: list[torch.Tensor], spec: BackboneSpec) -> torch.Tensor:
    """Float (N, 3, S, S) pixels in [0, 255]: one antialiased interpolate call per distinct image size."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        groups[(int(image.shape[-2]), int(image.shape[-1]))].append(index)
    size = spec.input_size
    out = torch.empty(len(images), 3, size, size, device=images[0].device)
    mode = "bicubic" if spec.interpolation == "bicubic" else "bilinear"
    for (height, width), members in groups.items():
        batch = torch.stack([images[i] for i in members]).float()
        new_size = resized_shape(spec, height, width)
        if new_size != (height, width):
            batch = F.interpolate(batch, size=new_size, mode=mode, align_corners=False, antialias=True).clamp_(0, 255)
        out[members] = center_crop(batch, size)
    return out


def canvas_chunks(shapes: list[tuple[int, int]], margin: int, budget: int, waste: float = 2.0) -> list[list[int]]:
    """Image indices in chunks that share a padded canvas (N, 3, H + 2 margin, W + 2 margin).

    Images go in order of size, so that images of like sizes share a canvas. A chunk closes before
    its canvas would exceed ``budget`` elements or ``waste`` times its images' own pixels; it holds
    at least one image.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    top_h = top_w = pixels = 0
    for index in sorted(range(len(shapes)), key=lambda i: shapes[i]):
        height, width = shapes[index]
        h, w = max(top_h, height), max(top_w, width)
        area = (h + 2 * margin) * (w + 2 * margin)
        own = pixels + (height + 2 * margin) * (width + 2 * margin)
        if current and ((len(current) + 1) * 3 * area > budget or (len(current) + 1) * area > waste * own):
            chunks.append(current)
            current, h, w, own = [], height, width, (height + 2 * margin) * (width + 2 * margin)
        current.append(index)
        top_h, top_w, pixels = h, w, own
    if current:
        chunks.append(current)
    return chunks


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list as a tensor on ``device``, without waiting for the GPU's queued work."""
    tensor = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _padded_canvas(images: list[torch.Tensor], margin: int) -> torch.Tensor:
    """Float (N, 3, H + 2m, W + 2m): each image at offset (m, m), its edge pixels repeated into the padding.

    Bilinear samples near an edge then read the edge, as ``interpolate`` does (``roi_align`` would
    read zeros beyond the canvas, or the next image's padding). One copy per image into a uint8
    canvas, then two gathers for the whole batch.
    """
    device = images[0].device
    top_h, top_w = max(int(image.shape[-2]) for image in images), max(int(image.shape[-1]) for image in images)
    heights = _to_device([int(image.shape[-2]) for image in images], torch.int64, device)
    widths = _to_device([int(image.shape[-1]) for image in images], torch.int64, device)
    packed = torch.empty(len(images), 3, top_h, top_w, dtype=images[0].dtype, device=device)
    for slot, image in enumerate(images):
        packed[slot, :, : image.shape[-2], : image.shape[-1]] = image
    # Two gathers repeat the edges: canvas row r reads image row clamp(r - m, 0, h - 1); likewise columns.
    rows = (torch.arange(top_h + 2 * margin, device=device)[None] - margin).clamp(min=0)
    rows = torch.minimum(rows, heights[:, None] - 1)
    cols = (torch.arange(top_w + 2 * margin, device=device)[None] - margin).clamp(min=0)
    cols = torch.minimum(cols, widths[:, None] - 1)
    n = len(images)
    packed = torch.gather(packed, 2, rows[:, None, :, None].expand(n, 3, rows.shape[1], top_w))
    return torch.gather(packed, 3, cols[:, None, None, :].expand(n, 3, rows.shape[1], cols.shape[1])).float()


def _tent(factor: int, device: torch.device) -> torch.Tensor:
    """The depthwise (3, 1, 2k - 1, 2k - 1) tent kernel that merges k x k fine cells into one output pixel."""
    taps = _to_device([min(t + 1, 2 * factor - 1 - t) / factor**2 for t in range(2 * factor - 1)], torch.float32, device)
    return (taps[:, None] * taps[None]).expand(3, 1, -1, -1).contiguous()


def fine_box(spec: BackboneSpec, height: int, width: int, factor: int) -> tuple[float, float, float, float]:
    """The box whose ``k * S + k - 1`` fine cells per axis the tent kernel merges into the S output pixels.

    It extends the crop box by ``(k - 1) / 2`` output pixels on each side less half a fine cell, so
    that fine cell ``k * i + k - 1`` is centred on output pixel ``i``.
    """
    x1, y1, x2, y2 = crop_box(spec, height, width)
    sx, sy = (x2 - x1) / spec.input_size, (y2 - y1) / spec.input_size
    cells = factor * spec.input_size + factor - 1
    x1, y1 = x1 - sx / 2 + sx / (2 * factor), y1 - sy / 2 + sy / (2 * factor)
    return x1, y1, x1 + cells * sx / factor, y1 + cells * sy / factor


def roi_resize_crop(images: list[torch.Tensor], spec: BackboneSpec, sampling_ratio: int = ROI_SAMPLING_RATIO,
                    most: int = SUPERSAMPLE_MAX, budget: int = CANVAS_ELEMENTS) -> torch.Tensor:
    """Float (N, 3, S, S) pixels in [0, 255]: every image's crop box resampled by batched ``roi_align`` calls.

    One call per supersampling factor present in the batch (``most`` calls at most; see the module's
    docstring), whatever the image sizes. Large images split the batch into several canvases, each
    within ``budget`` elements.
    """
    from torchvision.ops import roi_align

    device = images[0].device
    size = spec.input_size
    shapes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    factors = [supersample(spec, height, width, most) for height, width in shapes]
    # The fine box reaches at most half an output pixel (in input pixels) beyond the image: the margin covers it.
    margin = 1 + math.ceil(max(shrink_factor(spec, h, w) for h, w in shapes) / 2)
    out = torch.empty(len(images), 3, size, size, device=device)
    for chunk in canvas_chunks(shapes, margin, budget):
        canvas = _padded_canvas([images[i] for i in chunk], margin)
        by_factor: dict[int, list[int]] = defaultdict(list)
        for slot, index in enumerate(chunk):
            by_factor[factors[index]].append(slot)
        for factor, slots in sorted(by_factor.items()):
            cells = factor * size + factor - 1
            per_call = max(1, budget // (3 * cells * cells))
            for start in range(0, len(slots), per_call):
                part = slots[start : start + per_call]
                boxes = _to_device([(slot, *(c + margin for c in fine_box(spec, *shapes[chunk[slot]], factor))) for slot in part],
                                   torch.float32, device)
                fine = roi_align(canvas, boxes, output_size=(cells, cells), spatial_scale=1.0,
                                 sampling_ratio=sampling_ratio, aligned=True)
                if factor > 1:
                    fine = F.conv2d(fine, _tent(factor, device), stride=factor, groups=3)
                out[_to_device([chunk[slot] for slot in part], torch.int64, device)] = fine
    return out
