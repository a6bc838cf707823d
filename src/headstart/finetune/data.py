"""Batches for fine-tuning: seeded shuffles, augmented training batches and plain evaluation batches.

Batches are global: every process draws the same shuffled order and the same batches, then takes
its own rows of each (``rank::world``). A run on one process and a run on several therefore see
the same samples in each optimizer step, and a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from headstart.backbones.spec import BackboneSpec
from headstart.data.dataset import Dataset, stratified_split
from headstart.data.transforms import decode_file, preprocess_array_batch, preprocess_pil
from headstart.errors import DataError, OptionError
from headstart.data.augment import AugmentConfig, augment_batch, pil_train_transform, sample_seed

IGNORE = -100  # label of a file that failed to decode: CrossEntropyLoss skips it


def load_classification_data(data: Dataset | str, per_class: int | None, seed: int, task: str = "fine-tuning") -> Dataset:
    """A Dataset for ``task`` (fine-tuning, auto): loaded from a source string (subsampled to ``per_class``), checked to be single-label image or text classification."""
    if isinstance(data, (str, Path)):
        from headstart.data import load_data

        data = load_data(str(data), per_class=per_class, seed=seed)
    elif per_class is not None:
        raise OptionError("per_class applies when data is a source string; subsample a Dataset with load_data(..., per_class=N).")
    if data.modality not in ("image", "text"):
        raise DataError(f"{data.source} is {data.modality} data; {task} supports image and text classification.")
    if data.multilabel:
        raise DataError(f"{data.source} is multi-label; {task} supports single-label classification. Probe it with headstart probe.")
    return data


def split_indices(data: Dataset, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices; without a ``val`` split, a stratified share of train is held out.

    Raises:
        DataError: No training items, or a class too small to hold out.
    """
    train = data.indices("train")
    val = data.indices("val")
    test = data.indices("test")
    if len(train) == 0:
        raise DataError(f"{data.source} has no training items; fine-tuning needs a train split.")
    if len(val) == 0 and val_fraction > 0:
        kept, held = stratified_split(data.labels[train], val_fraction, seed + 7, data.classes, what="validation")
        train, val = train[kept], train[held]
    return train, val, test


class _Files(torch.utils.data.Dataset):
    """Decode (and, for training, augment) image files in DataLoader workers; failures get label IGNORE."""

    def __init__(self, paths: list[str], labels: np.ndarray, rows: list[int], spec: BackboneSpec, transform, seeds: list[int] | None) -> None:
        self.paths = paths
        self.labels = labels
        self.rows = rows
        self.spec = spec
        self.transform = transform
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int):
        row = self.rows[position]
        try:
            image = decode_file(self.paths[row], self.spec)
            if self.seeds is None:
                return preprocess_pil(image, self.spec), int(self.labels[row])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seeds[position])
                return self.transform(image), int(self.labels[row])
        except (OSError, ValueError, SyntaxError):
            return torch.zeros(3, self.spec.input_size, self.spec.input_size), IGNORE


class Batcher:
    """Makes this process's share of training and evaluation batches.

    Args:
        data: The dataset (in-memory arrays or image files).
        spec: The backbone spec (input size, normalisation, interpolation).
        augment: Training augmentations.
        seed: Run seed.
        rank: This process's index.
        world: Number of processes.
        device: Where batches go.
        num_workers: DataLoader workers for image files.
    """

    def __init__(self, data: Dataset, spec: BackboneSpec, augment: AugmentConfig, seed: int, rank: int, world: int, device: torch.device, num_workers: int) -> None:
        self.data = data
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.world = world
        self.device = device
        self.num_workers = num_workers

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_epoch(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's augmented rows of each global batch, as ``(x, y)`` on the device."""
        labels = self.data.labels
        if self.data.in_memory:
            for step, rows in enumerate(batches):
                keep = slice(self.rank, None, self.world)
                x = augment_batch(self.data.items[rows], self.spec, self.augment, sample_seed(self.seed, epoch, step), keep=keep, device=self.device)
                yield self._to_device(x, torch.as_tensor(labels[rows[keep]]))
            return
        local = [rows[self.rank :: self.world] for rows in batches]
        flat = [int(r) for rows in local for r in rows]
        seeds = [sample_seed(self.seed, epoch, r) for r in flat]
        dataset = _Files(list(self.data.items), labels, flat, self.spec, pil_train_transform(self.spec, self.augment), seeds)
        yield from self._load(dataset, local)

    def eval_batches(self, rows: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """This process's share (``rank::world``) of ``rows``, preprocessed for evaluation, with their rows."""
        local = rows[self.rank :: self.world]
        chunks = [local[i : i + batch_size] for i in range(0, len(local), batch_size)]
        if self.data.in_memory:
            for chunk in chunks:
                x = preprocess_array_batch(self.data.items[chunk], self.spec)
                yield (*self._to_device(x, torch.as_tensor(self.data.labels[chunk])), chunk)
            return
        dataset = _Files(list(self.data.items), self.data.labels, [int(r) for r in local], self.spec, None, None)
        for chunk, (x, y) in zip(chunks, self._load(dataset, chunks)):
            yield x, y, chunk

    def _load(self, dataset: _Files, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sizes = [len(b) for b in batches]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int) if sizes else []
        sampler = [list(range(start, start + size)) for start, size in zip(starts, sizes)]
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.num_workers else None,
        )
        for x, y in loader:
            yield self._to_device(x, y)


class TextBatcher:
    """This process's training and evaluation batches for a text encoder: token tensors padded per batch.

    Every text is tokenised once, up front, by the backbone's own tokenizer (truncated to its max
    length, with a warning that counts the truncated texts); each batch is then padded to its own
    longest text. Evaluation batches go longest first, so that similar lengths share a batch.
    Texts without tokens (empty) get the label IGNORE.

    Args:
        data: A text dataset.
        encoder: The backbone's network, a :class:`~headstart.backbones.text_adapter.TextEncoder`.
        rank: This process's index.
        world: Number of processes.
        device: Where batches go.
    """

    def __init__(self, data: Dataset, encoder, rank: int, world: int, device: torch.device) -> None:
        import warnings

        from headstart.backbones.text_adapter import TextTruncatedWarning

        self.data = data
        self.encoder = encoder
        self.rank = rank
        self.world = world
        self.device = device
        self.encoded, reasons, truncated, longest = encoder.tokenize(list(data.items))
        self.labels = np.where(np.array([not r for r in reasons], dtype=bool), data.labels, IGNORE)
        if truncated:
            warnings.warn(
                f"{truncated} of {len(data)} texts are longer than max_length={encoder.max_length} tokens (the longest has {longest}) "
                "and were truncated for fine-tuning.",
                TextTruncatedWarning,
                stacklevel=2,
            )

    def _batch(self, rows: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs = self.encoder.pad([self.encoded[int(r)] for r in rows])
        x = {name: tensor.to(self.device, non_blocking=True) for name, tensor in inputs.items()}
        return x, torch.as_tensor(self.labels[rows]).to(self.device, non_blocking=True)

    def train_epoch(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """This process's rows of each global batch, as ``(x, y)`` on the device (text has no augmentation)."""
        for rows in batches:
            yield self._batch(rows[self.rank :: self.world])

    def eval_batches(self, rows: np.ndarray, batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, np.ndarray]]:
        """This process's share (``rank::world``) of ``rows``, longest texts first, with their rows."""
        local = rows[self.rank :: self.world]
        local = local[np.argsort([-len(self.encoded[int(r)]["input_ids"]) for r in local], kind="stable")]
        for start in range(0, len(local), batch_size):
            chunk = local[start : start + batch_size]
            yield (*self._batch(chunk), chunk)
