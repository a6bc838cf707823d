"""``TrainConfig``: the options every training run shares, defined (and checked) once.

``finetune()``, ``train_detector()`` and ``train_segmenter()`` keep their own keyword arguments
and defaults, and map them onto one :class:`TrainConfig`; what only one task needs (label
smoothing and augmentation for classification, the architecture and ``trainable_stages`` for
detection and segmentation) stays with that task's adapter and command.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.engine.checkpoint import CheckpointError
from headstart.engine.keep import KEEP_WITHIN
from headstart.engine.policy import FinetunePolicy
from headstart.errors import OptionError

PRECISIONS = ("auto", "no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """What a training run needs to know, whatever the task.

    Args:
        epochs: Most epochs to train.
        lr: The head's learning rate (the policy scales other groups); None: the task's default
            for the strategy (the adapter resolves it before the loop starts).
        batch_size: Global batch size per step, split across processes.
        accumulation_steps: Batches per optimizer step (the effective batch is their product).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9; Nesterov when ``nesterov``).
        nesterov: SGD with Nesterov momentum (classification) or plain momentum (detection, segmentation).
        warmup_epochs: Linear warm-up length before the cosine decay, in epochs.
        max_grad_norm: Clip the gradient norm to this; None turns clipping off.
        ema_decay: Validate, keep and save an exponential moving average of the weights with this
            decay per optimizer step; None or 0 turns it off.
        patience: Stop after this many epochs without a better validation score; None never stops early.
        keep_within: The kept-epoch rule (:mod:`headstart.engine.keep`): keep the latest epoch whose
            validation score is within this many standard errors of the best (the adapter's noise
            model; none for detection and segmentation); 0 keeps the highest score.
        max_cpu_seconds: Stop training once the process has used this much CPU time; None: no limit.
        max_seconds: Stop training once this call has trained for this many wall-clock seconds (the
            epoch in progress is cut short, then validated like any other, so the best epoch so far
            is kept); None: no limit. Not part of what ``resume`` compares: a resumed run gets its
            own limit.
        val_fraction: Share of the training data held out for validation when there is no val split.
        mixed_precision: ``auto``, ``no``, ``bf16`` or ``fp16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (resolved once, when the run starts).
        seed: Seed for the split, the initialisation, the shuffles and the augmentations.
        num_workers: DataLoader workers for files; None lets the task pick.
        out: Run directory (checkpoints, logs, metrics, bundle); None keeps everything in memory.
        resume: Continue the run in ``out`` from its last checkpoint.
        quiet: No per-epoch lines on the console.
        strategy: A strategy name (see :func:`~headstart.engine.policy.resolve_policy`).
        policy: A :class:`FinetunePolicy` or a YAML file of one, instead of a strategy.
    """

    epochs: int = 10
    lr: float | None = None
    batch_size: int = 32
    accumulation_steps: int = 1
    optimizer: str = "adamw"
    nesterov: bool = True
    warmup_epochs: float = 1.0
    max_grad_norm: float | None = 1.0
    ema_decay: float | None = None
    patience: int | None = None
    keep_within: float = KEEP_WITHIN
    max_cpu_seconds: float | None = None
    max_seconds: float | None = None
    val_fraction: float = 0.1
    mixed_precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    out: Path | None = None
    resume: bool = False
    quiet: bool = False
    strategy: str | None = None
    policy: FinetunePolicy | str | Path | None = None

    def __post_init__(self) -> None:
        self.check()
        self.out = Path(self.out) if self.out is not None else None
        self.ema_decay = float(self.ema_decay) if self.ema_decay else None

    @classmethod
    def from_options(cls, options: dict[str, Any], **fixed: Any) -> TrainConfig:
        """A config from a task function's keyword arguments (``locals()``): the fields it has, by name, plus ``fixed``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in options.items() if key in names and key not in fixed}, **fixed)

    def check(self) -> None:
        """Refuse values outside what each option accepts.

        Raises:
            OptionError: A value out of range (a ValueError; the message names the option).
            CheckpointError: ``resume`` without ``out``.
        """
        for name in ("epochs", "batch_size", "accumulation_steps"):
            _positive_int(getattr(self, name), name)
        if self.patience is not None:
            _positive_int(self.patience, "patience")
        lr = self.lr
        if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise OptionError(f"--lr must be a positive number, got {lr!r}; 1e-3 for a head, 1e-4 for a whole network are common.")
        if self.optimizer not in OPTIMIZERS:
            raise OptionError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        keep_within = self.keep_within
        if not (isinstance(keep_within, (int, float)) and not isinstance(keep_within, bool) and 0 <= keep_within and math.isfinite(keep_within)):
            raise OptionError(f"--keep-within must be a number of standard errors >= 0, got {keep_within!r}; 0 keeps the epoch with the best validation score.")
        for name in ("max_cpu_seconds", "max_seconds"):
            limit = getattr(self, name)
            if limit is not None and not (isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0):
                raise OptionError(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {limit!r}.")
        if not 0 <= self.warmup_epochs:
            raise OptionError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs!r}.")
        if not 0 <= self.val_fraction < 1:
            raise OptionError(f"--val-fraction must be in [0, 1), got {self.val_fraction!r}.")
        if self.mixed_precision not in PRECISIONS:
            raise OptionError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}.")
        if self.resume and self.out is None:
            raise CheckpointError("resume needs the run folder: pass out (--out DIR) of the run to continue.")


def _positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OptionError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}.")
