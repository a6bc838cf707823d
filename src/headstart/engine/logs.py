"""Per-epoch logs: a console line (rich), ``metrics.csv`` and, where the task asks, TensorBoard events."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from headstart.io import atomic_write_bytes

TENSORBOARD_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "trainable_params", "seconds")


def say(message: str) -> None:
    """One line on stderr (rich markup allowed), never wrapped."""
    from headstart.console import err_console

    err_console.print(message, highlight=False, soft_wrap=True)


class EpochLog:
    """The run's per-epoch logs, written by the main process only.

    Args:
        out: The run directory, or None (console only).
        main: Whether this is the main process (the others log nothing).
        quiet: No console lines.
        resumed_epoch: The epoch a resumed run continues from (TensorBoard drops later events), or None.
        tensorboard: Also write TensorBoard events to ``out/tensorboard``.
    """

    def __init__(self, out: Path | None, main: bool, quiet: bool, resumed_epoch: int | None, tensorboard: bool) -> None:
        self.out = out if main else None
        self.quiet = quiet or not main
        self.writer = None
        if self.out is None or not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=resumed_epoch)
        except ImportError:
            say("tensorboard is not installed, so no TensorBoard logs: pip install 'headstart[finetune]'")

    def epoch(self, line: str, history: list[dict[str, Any]]) -> None:
        """Print the epoch's line, rewrite ``metrics.csv`` from the whole history, and add the last row's events."""
        if not self.quiet:
            say(line)
        if self.out is None:
            return
        write_history(self.out, history)
        if self.writer is not None:
            row = history[-1]
            for key in TENSORBOARD_KEYS:
                if row.get(key) is not None:
                    group = key.split("_", 1)[0] if key.startswith(("train", "val")) else "run"
                    self.writer.add_scalar(f"{group}/{key.split('_', 1)[-1] if group != 'run' else key}", row[key], row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    """``out/metrics.csv``: one row per epoch, the columns of the first row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]) if history else [])
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buffer.getvalue().encode())
