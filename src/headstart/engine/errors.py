"""How a run fails loudly: a loss that is no longer finite, and a GPU that runs out of memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from headstart.errors import HeadstartError


class TrainingDivergedError(HeadstartError):
    """The loss became NaN or infinite."""


class OutOfMemoryError(HeadstartError):
    """The GPU ran out of memory; the message suggests a batch size that fits."""


def check_finite(loss: torch.Tensor, accelerator, epoch: int, index: int, lr: float, out: Path | None, hint: str) -> None:
    """Raise :class:`TrainingDivergedError` when ``loss`` is NaN or infinite on any process.

    The message names the epoch, the batch and the learning rate, says whether the last good
    checkpoint is kept, and ends with ``hint`` (what to change).
    """
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    if bool(finite.item() == 1.0):
        return
    kept = out / "checkpoints" / "last.pt" if out is not None else None
    where = f"the last good checkpoint is kept: {kept}" if kept is not None and kept.is_file() else "no checkpoint was written yet"
    raise TrainingDivergedError(f"The training loss became {loss.item()} in epoch {epoch}, batch {index}, at learning rate {lr:.3g}; {where}. {hint}")


def suggest_batch_size(batch_size: int, fits: Callable[[int], bool]) -> int | None:
    """The largest of ``batch_size / 2, / 4, ...`` for which ``fits(size)`` is True, or None."""
    size = batch_size // 2
    while size >= 1:
        if fits(size):
            return size
        size //= 2
    return None


def out_of_memory_error(fits: Callable[[int], bool], local: int, batch_size: int, world: int) -> OutOfMemoryError:
    """Find the largest halving of this process's batch (``local`` items) that fits on this GPU, and say so."""
    suggestion = suggest_batch_size(local, fits)
    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    memory = f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free now)" if total else ""
    if suggestion is None:
        return OutOfMemoryError(f"The GPU ran out of memory even with one image per process{memory}. Use a smaller --image-size or a smaller backbone.")
    global_size = suggestion * world
    steps = max(1, batch_size // global_size)
    return OutOfMemoryError(
        f"The GPU ran out of memory at --batch-size {batch_size}{memory}; {global_size} fits. Rerun with --batch-size {global_size}"
        + (f" --accumulation-steps {steps} to keep the effective batch of {global_size * steps}." if steps > 1 else ".")
    )
