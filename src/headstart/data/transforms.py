"""Decode and preprocess images as the backbone's spec says: resize, centre crop, normalise.

Nothing here hard-codes a mean, std or size: they all come from the :class:`BackboneSpec`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile

from headstart.backbones.spec import BackboneSpec

ImageFile.LOAD_TRUNCATED_IMAGES = False


def resize_size(spec: BackboneSpec, short_side: int | None = None) -> int:
    """Shorter-side size before the centre crop.

    The crop (``crop_pct``) trims the borders of photographs that are larger than the input. An
    image whose shorter side is already below the input size (a 28x28 silhouette) is upscaled
    straight to the input size instead: it has no border to trim, and cropping would cut the object.
    """
    if short_side is not None and short_side < spec.input_size:
        return spec.input_size
    return int(math.floor(spec.input_size / spec.crop_pct + 0.5)) if spec.crop_pct < 1 else spec.input_size


def decode_file(path: str, spec: BackboneSpec) -> Image.Image:
    """Open an image file as RGB; large JPEGs decode at reduced size (PIL draft mode) when the target allows."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            target = resize_size(spec)
            image.draft("RGB", (target, target))
        image.load()
        return image.convert("RGB")


def preprocess_pil(image: Image.Image, spec: BackboneSpec) -> torch.Tensor:
    """One PIL image to a normalised (3, S, S) float tensor."""
    return normalize_uint8(pil_to_uint8(image, spec)[None], spec)[0]


def pil_to_uint8(image: Image.Image, spec: BackboneSpec) -> torch.Tensor:
    """One PIL image resized and centre-cropped as the spec says: a uint8 (3, S, S) tensor, not normalised."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = image.convert("RGB")
    image = TF.resize(image, resize_size(spec, min(image.size)), interpolation=InterpolationMode(spec.interpolation), antialias=True)
    image = TF.center_crop(image, spec.input_size)
    return TF.pil_to_tensor(image)


def normalize_uint8(batch: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """uint8 (N, 3, H, W) to float, scaled to [0, 1] and normalised with the spec's mean and std."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(spec.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    return (batch.float() - mean) / std


def preprocess_array_batch(images: np.ndarray, spec: BackboneSpec) -> torch.Tensor:
    """A uint8 batch (N, H, W) or (N, H, W, C) of same-sized images to a normalised (N, 3, S, S) tensor.

    All images resize in one batched interpolation, which is much faster than one PIL call each.
    """
    batch = torch.from_numpy(np.ascontiguousarray(images))
    if batch.dim() == 3:
        batch = batch[:, None].expand(-1, 3, -1, -1)
    else:
        batch = batch.permute(0, 3, 1, 2)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        elif batch.shape[1] == 4:
            batch = batch[:, :3]
    batch = batch.float()
    height, width = batch.shape[-2:]
    short = resize_size(spec, min(height, width))
    scale = short / min(height, width)
    new_size = (max(short, int(height * scale)), max(short, int(width * scale)))  # truncate, as torchvision does
    if new_size != (height, width):
        mode = "bicubic" if spec.interpolation == "bicubic" else "bilinear"
        batch = F.interpolate(batch, size=new_size, mode=mode, align_corners=False, antialias=True)
        batch = batch.clamp_(0, 255)
    return normalize_uint8(center_crop(batch, spec.input_size), spec)


def center_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop the last two dims to ``size``, with the same offsets as torchvision's center_crop."""
    top = int(round((batch.shape[-2] - size) / 2.0))
    left = int(round((batch.shape[-1] - size) / 2.0))
    return batch[..., top : top + size, left : left + size]


def to_tensor_batch(inputs: list, spec: BackboneSpec) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Preprocess mixed inputs (paths, PIL images, arrays) for prediction.

    Returns:
        The batch of the inputs that decoded, their positions, and ``(position, reason)`` for the rest.
    """
    tensors, ok, failed = [], [], []
    for position, item in enumerate(inputs):
        try:
            if isinstance(item, Image.Image):
                image = item
            elif isinstance(item, np.ndarray):
                tensors.append(preprocess_array_batch(item[None], spec)[0])
                ok.append(position)
                continue
            else:
                image = decode_file(str(item), spec)
            tensors.append(preprocess_pil(image, spec))
            ok.append(position)
        except (OSError, ValueError, SyntaxError) as exc:
            failed.append((position, f"{type(exc).__name__}: {exc}"))
    batch = torch.stack(tensors) if tensors else torch.empty(0, 3, spec.input_size, spec.input_size)
    return batch, ok, failed
