"""The tensor decode path: file bytes read in DataLoader workers, decoded and resized as batches.

On a GPU this decodes JPEGs with nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``) and
resizes, crops and normalises with batched tensor ops, so the CPU only reads bytes. The resize of a
whole batch of images of any sizes takes a few ``roi_align`` calls on one padded canvas
(:mod:`headstart.data.resize`); bicubic specs, and ``resize="interpolate"``, resize each distinct
size in one interpolate call instead, as does the CPU, where that is faster. A file that is not a
JPEG, or whose batched decode fails, falls back to a CPU decode on its own and is reported if that
fails too. The same code runs on the CPU (``decode="tensor"``), which is how its agreement with the
PIL path is tested on machines without a GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from headstart.backbones.spec import BackboneSpec
from headstart.data.resize import interpolate_resize_crop, roi_resize_crop
from headstart.data.transforms import normalize_uint8

JPEG_MAGIC = b"\xff\xd8"


class FileBytes(torch.utils.data.Dataset):
    """Reads raw file bytes in DataLoader workers (the read-ahead of the tensor path)."""

    def __init__(self, paths: list[str], rows: np.ndarray) -> None:
        self.paths = paths
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int):
        row = int(self.rows[position])
        try:
            with open(self.paths[row], "rb") as handle:
                data = handle.read()
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), row, ""
        except OSError as exc:
            return torch.empty(0, dtype=torch.uint8), row, f"{type(exc).__name__}: {exc}"


def collate_bytes(batch):
    blobs, rows, reasons = zip(*batch)
    return list(blobs), np.array(rows, dtype=np.int64), list(reasons)


def _decode_one_cpu(blob: torch.Tensor) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(blob, mode=ImageReadMode.RGB)


def decode_batch(blobs: list[torch.Tensor], device: torch.device) -> tuple[list[torch.Tensor | None], list[str]]:
    """Decode a batch of encoded images to uint8 (3, H, W) tensors on ``device``.

    JPEGs decode together (nvJPEG on a GPU); anything else, or a JPEG whose batched decode fails,
    decodes alone on the CPU. Returns the images (None where decoding failed) and the reasons.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    images: list[torch.Tensor | None] = [None] * len(blobs)
    reasons = [""] * len(blobs)
    jpeg = [i for i, b in enumerate(blobs) if len(b) > 2 and bytes(b[:2].tolist()) == JPEG_MAGIC]
    others = [i for i in range(len(blobs)) if i not in set(jpeg)]
    if jpeg:
        try:
            decoded = decode_jpeg([blobs[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpeg, decoded):
                images[i] = image
        except RuntimeError:
            others = sorted(others + jpeg)
    for i in others:
        if len(blobs[i]) == 0:
            reasons[i] = reasons[i] or "empty file"
            continue
        try:
            images[i] = _decode_one_cpu(blobs[i]).to(device, non_blocking=True)
        except RuntimeError as exc:
            reasons[i] = f"cannot decode: {str(exc).splitlines()[0]}"
    return images, reasons


RESIZE_METHODS = ("roi_align", "interpolate")


def default_resize(spec: BackboneSpec, device: torch.device | str = "cuda") -> str:
    """The resize the tensor path uses for ``spec`` on ``device``: ``roi_align`` (batched) on a GPU where it is faithful.

    ``roi_align`` samples bilinearly, so it stands in for antialiased bilinear resizing only; a
    bicubic spec keeps the per-image ``interpolate``. On the CPU the per-image path is the faster
    one (benchmarks/resize.py), so the batched path is the default on GPUs only.
    """
    on_gpu = torch.device(device).type == "cuda"
    return "roi_align" if on_gpu and spec.interpolation == "bilinear" else "interpolate"


def resize_crop_normalize(images: list[torch.Tensor], spec: BackboneSpec, method: str | None = None) -> torch.Tensor:
    """Resize (shorter side), centre-crop and normalise a list of uint8 (3, H, W) images.

    ``method``: ``roi_align`` resamples every image's crop box from one padded canvas in a few
    batched calls, whatever the sizes; ``interpolate`` resizes each distinct size in one antialiased
    interpolate call (photos of varied sizes then resize one at a time); None:
    :func:`default_resize` for the images' device. See :mod:`headstart.data.resize`.
    """
    method = method or default_resize(spec, images[0].device)
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r} is not one of {', '.join(RESIZE_METHODS)}")
    pixels = roi_resize_crop(images, spec) if method == "roi_align" else interpolate_resize_crop(images, spec)
    return normalize_uint8(pixels, spec)


def tensor_batches(paths: list[str], rows: np.ndarray, spec: BackboneSpec, batch_size: int, num_workers: int, device: torch.device,
                   resize: str | None = None):
    """Yield ``(batch, rows, reasons)`` like the PIL path, decoding on ``device``.

    Rows that fail to decode get a zero image and their reason. ``resize``: see :func:`resize_crop_normalize`.
    """
    loader = torch.utils.data.DataLoader(
        FileBytes(paths, rows),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_bytes,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
    )
    blank = None
    for blobs, batch_rows, read_reasons in loader:
        images, decode_reasons = decode_batch(blobs, device)
        reasons = [r or d for r, d in zip(read_reasons, decode_reasons)]
        good = [i for i, image in enumerate(images) if image is not None and not reasons[i]]
        if blank is None:
            blank = torch.zeros(3, spec.input_size, spec.input_size, device=device)
        batch = torch.stack([blank] * len(images))
        if good:
            batch[good] = resize_crop_normalize([images[i] for i in good], spec, resize)
        yield batch, batch_rows, reasons
