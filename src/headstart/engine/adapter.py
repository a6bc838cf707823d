"""The adapter protocol: what a task tells the engine; the engine runs the loop.

A task (classification in :mod:`headstart.finetune`, detection and segmentation in
:mod:`headstart.tasks`) subclasses :class:`Adapter`: :meth:`~Adapter.setup` builds the data, the
model and its compiled policy; :meth:`~Adapter.train_epoch`, :meth:`~Adapter.loss` and
:meth:`~Adapter.validate` feed the loop; :meth:`~Adapter.conclude` evaluates the kept weights on the
test split and writes the bundle and run files. :func:`headstart.engine.train` calls them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class Setup:
    """What :meth:`Adapter.setup` hands the loop.

    Attributes:
        model: The model, on the run's device.
        compiled: Its policy, ``policy.compile(model, lr)`` (``compiled.lr`` is the base learning rate).
        settings: What must match for ``resume`` to continue the run (saved in every checkpoint).
        train_rows: The training rows (the engine draws each epoch's batches of them).
        extra_state: The task's own entries of the loop state (saved in checkpoints, restored on resume).
    """

    model: nn.Module
    compiled: Any
    settings: dict[str, Any]
    train_rows: np.ndarray
    extra_state: dict[str, Any] = field(default_factory=dict)


class Adapter:
    """One task over the engine. Subclasses set the attributes and implement the methods marked so.

    Attributes:
        name: What is trained, for messages (``fine-tuning``, ``detection``, ``segmentation``).
        score_name: What the validation score is, for messages (``accuracy``, ``map_50``, ``miou``).
        loss_is_sum: :meth:`loss` returns a sum over the batch's items; the engine divides by the
            global batch size (and scales for processes and accumulation). False: a mean, used as is.
        ties_to_later: A validation score equal to the best so far replaces it (the later epoch is kept).
        start_candidate: Validate before the first epoch and keep those weights (as epoch -1) unless
            an epoch scores at least as well (LP-FT's probe head).
        tensorboard: Also write the history as TensorBoard events in the run directory.
        divergence_hint: The end of the message when the loss is NaN or infinite.
        n_val: Number of validation items (0: no validation; the last epoch is kept).
    """

    name = "training"
    score_name = "score"
    loss_is_sum = False
    ties_to_later = False
    start_candidate = False
    tensorboard = False
    divergence_hint = "Lower the learning rate (for example by 10x), or turn mixed precision off."
    n_val = 0

    def setup(self, run) -> Setup:
        """Load the data, build the model (seeded) and compile its policy, for the started ``run``. Implement."""
        raise NotImplementedError

    def conclude(self, run, setup: Setup, state: dict[str, Any]) -> Any:
        """After the loop (the kept weights are in ``setup.model``): test, bundle, run files; return the task's result. Implement."""
        raise NotImplementedError

    def closing_line(self, result: Any, state: dict[str, Any]) -> str | None:
        """The console line after the run (the kept epoch and its test score), or None."""
        return None

    def weights(self, model: nn.Module) -> nn.Module:
        """The module whose state dict is checkpointed and kept (the model itself by default)."""
        return model

    def train_epoch(self, batches: list[np.ndarray], epoch: int) -> Iterable[Any]:
        """This process's training batches of the epoch, one for each of ``batches`` (global rows). Implement."""
        raise NotImplementedError

    def loss(self, net: nn.Module, batch: Any, autocast: Callable[[], AbstractContextManager]) -> tuple[torch.Tensor, Any]:
        """The batch's loss (a sum or a mean, see ``loss_is_sum``) and a tally for :meth:`train_metrics`. Implement."""
        raise NotImplementedError

    def train_metrics(self, tallies: list[Any], accelerator) -> dict[str, Any]:
        """The epoch's training columns of the history (``train_loss``, ...) from the batches' tallies. Implement."""
        raise NotImplementedError

    def validate(self, model: nn.Module) -> tuple[float | None, dict[str, Any]]:
        """The validation score that picks the kept epoch (higher is better) and the history's validation columns. Implement."""
        raise NotImplementedError

    def score_noise(self, score: float) -> float:
        """The standard error of a validation score of ``score`` (the kept-epoch rule's unit); 0: no noise model, exact comparison."""
        return 0.0

    def history_row(self, base: dict[str, Any], train: dict[str, Any], val: dict[str, Any], times: dict[str, float], steps: int, best: bool) -> dict[str, Any]:
        """One history row from the engine's ``base`` columns (epoch, phase, trainable_params, lr), the
        training and validation columns, the epoch's wall, training and CPU seconds, and its optimizer batches."""
        return {**base, **train, **val, "steps": steps, **times, "best": best}

    def epoch_line(self, row: dict[str, Any], epochs: int, state: dict[str, Any]) -> str:
        """The console line of an epoch (rich markup allowed)."""
        return f"epoch {row['epoch']} [{row['epoch'] + 1}/{epochs}]"

    def start_line(self, val: dict[str, Any]) -> str:
        """The console line of the start candidate's validation (see ``start_candidate``)."""
        return f"start: {val}"

    def describe(self, compiled, accelerator) -> str:
        """The console line that opens a new (not resumed) run."""
        summary = compiled.summary(0)
        return f"{self.name} on {accelerator.device}: {summary['trainable_params']:,} of {summary['total_params']:,} parameters train in epoch 0"

    def out_of_memory(self, net: nn.Module, batch: Any, batch_size: int, world: int) -> Exception | None:
        """An error that suggests a batch size that fits, or None to let torch's OutOfMemoryError through."""
        return None
