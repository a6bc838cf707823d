"""Training augmentations derived from the backbone spec: random resized crop, flip, optional RandAugment.

In-memory uint8 arrays are augmented a whole batch at a time on tensors: one ``affine_grid`` +
``grid_sample`` call crops, resizes and flips every image with its own parameters. Image files are
augmented one by one in DataLoader workers with the torchvision equivalents.

Every random draw comes from a generator seeded by ``(seed, epoch, batch)`` or
``(seed, epoch, row)``, never from the global generator. The augmentation of a sample is therefore
the same whether the run has one process or several, and whether it was resumed or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from headstart.backbones.spec import BackboneSpec
from headstart.data.transforms import normalize_uint8


@dataclass(frozen=True)
class AugmentConfig:
    """The training augmentations.

    Args:
        scale: Range of the crop's area as a fraction of the image (RandomResizedCrop's ``scale``).
        ratio: Range of the crop's aspect ratio.
        flip: Flip horizontally with probability 0.5.
        randaugment: Apply torchvision's RandAugment (2 ops, magnitude 9) before the crop.
    """

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    randaugment: bool = False


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one (epoch, batch or row) of a run, well mixed (SplitMix64)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 31
    value = (value * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 29
    return value & 0x7FFFFFFFFFFFFFFF


def to_uint8_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) as a uint8 tensor (N, 3, H, W)."""
    batch = torch.from_numpy(np.ascontiguousarray(images))
    if batch.dim() == 3:
        return batch[:, None].expand(-1, 3, -1, -1)
    batch = batch.permute(0, 3, 1, 2)
    if batch.shape[1] == 1:
        return batch.expand(-1, 3, -1, -1)
    return batch[:, :3]


def crop_params(n: int, height: int, width: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Affine parameters (N, 2, 3) of random resized crops (and flips) in ``affine_grid`` coordinates."""
    area = torch.empty(n).uniform_(config.scale[0], config.scale[1], generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(config.ratio[0]), math.log(config.ratio[1]), generator=generator)
    ratio = log_ratio.exp()
    # Crop width and height as fractions of the image's; ratio is in pixels (w * W) / (h * H).
    crop_w = (area * ratio * height / width).sqrt().clamp(max=1.0)
    crop_h = (area / ratio * width / height).sqrt().clamp(max=1.0)
    centre_x = crop_w / 2 + torch.rand(n, generator=generator) * (1 - crop_w)
    centre_y = crop_h / 2 + torch.rand(n, generator=generator) * (1 - crop_h)
    flip = torch.rand(n, generator=generator) < 0.5 if config.flip else torch.zeros(n, dtype=torch.bool)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = crop_w * torch.where(flip, -1.0, 1.0)
    theta[:, 0, 2] = 2 * centre_x - 1
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = 2 * centre_y - 1
    return theta


def randaugment_batch(batch: torch.Tensor, seed: int) -> torch.Tensor:
    """RandAugment on each uint8 image (N, 3, H, W) of a batch, seeded (the global generator is untouched)."""
    from torchvision.transforms import v2

    augment = v2.RandAugment()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([augment(image) for image in batch])


def augment_batch(
    images: np.ndarray,
    spec: BackboneSpec,
    config: AugmentConfig,
    seed: int,
    keep: slice | np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Augment and normalise a batch of same-sized uint8 images into a float (N, 3, S, S) tensor.

    Args:
        images: The whole (global) batch, uint8 (N, H, W) or (N, H, W, C).
        spec: The backbone spec: ``input_size``, ``mean``, ``std``, ``interpolation``.
        config: The augmentations.
        seed: Seed of this batch; the same seed gives the same crops and flips.
        keep: The rows this process trains on (``rank::world``); parameters are drawn for the whole
            batch, so that every process agrees on each image's augmentation.
        device: Where to augment (a GPU does it much faster than the CPU).
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = images.shape[1], images.shape[2]
    theta = crop_params(len(images), height, width, config, generator)
    if keep is not None:
        images = images[keep]
        theta = theta[keep]
    batch = to_uint8_nchw(images).to(device, non_blocking=True)
    theta = theta.to(device)
    if config.randaugment:
        batch = randaugment_batch(batch, seed)
    size = spec.input_size
    grid = F.affine_grid(theta, [len(batch), 3, size, size], align_corners=False)
    mode = "bicubic" if spec.interpolation == "bicubic" else "bilinear"
    out = F.grid_sample(batch.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    return normalize_uint8(out.clamp_(0, 255), spec)


def pil_train_transform(spec: BackboneSpec, config: AugmentConfig):
    """The torchvision transform for one training image file (a PIL image in, a normalised tensor out)."""
    from torchvision.transforms import InterpolationMode, v2

    steps = []
    if config.randaugment:
        steps.append(v2.RandAugment())
    steps.append(
        v2.RandomResizedCrop(spec.input_size, scale=config.scale, ratio=config.ratio, interpolation=InterpolationMode(spec.interpolation), antialias=True)
    )
    if config.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.PILToTensor()]
    pipeline = v2.Compose(steps)

    def transform(image) -> torch.Tensor:
        return normalize_uint8(pipeline(image.convert("RGB"))[None], spec)[0]

    return transform
