"""Checkpoints: everything needed to resume exactly, written atomically.

A checkpoint is one ``torch.save`` file read back with ``weights_only=True`` (no pickle of code):
the model and optimizer states, the scheduler and gradient-scaler states, the random number
generator states (Python, NumPy, torch CPU and CUDA), the policy, the unfreeze phase, the epoch, the
early-stopping state, the per-epoch history and the run's settings. It is written to a temporary
file, flushed and renamed, so a crash leaves the previous checkpoint whole.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart.errors import HeadstartError
from headstart.io import atomic_write_bytes

CHECKPOINT_FORMAT = 1


class CheckpointError(HeadstartError):
    """A checkpoint is missing, damaged, or from a different run."""


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) random number generators."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU, without unpickling code).

    Raises:
        CheckpointError: The file is missing, damaged or of a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Start without --resume, or give the --out folder of the run to resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). Delete it to start over.") from None
    if state.get("format", 0) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"Checkpoint {path} was written by a newer headstart (format {state['format']}); upgrade headstart.")
    return state


def settings_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's run settings and the current ones."""
    keys = sorted(set(saved) | set(current))
    return [f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}" for key in keys if saved.get(key) != current.get(key)]
