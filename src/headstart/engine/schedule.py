"""The epoch's batches, the optimizer over the compiled policy's parameter groups, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import numpy as np
import torch

from headstart.data.augment import sample_seed


def train_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches: a seeded shuffle, full batches only (unless there is less than one)."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    if len(order) <= batch_size:
        return [order]
    n_full = len(order) // batch_size
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_full)]


def make_optimizer(compiled, optimizer: str, lr: float, nesterov: bool) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9) over the compiled policy's groups (frozen-forever parameters left out)."""
    groups = compiled.optimizer_groups()
    for group in groups:
        group.pop("names")
    weight_decay = compiled.policy.weight_decay
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """The schedule's factor of the peak learning rate at each optimizer step: linear warm-up, then cosine decay."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, n_batches: int, accumulation_steps: int, warmup_epochs: float, epochs: int):
    """A LambdaLR of :func:`warmup_cosine` over the run's optimizer steps."""
    steps_per_epoch = math.ceil(n_batches / accumulation_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch))
