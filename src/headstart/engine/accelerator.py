"""The run's Accelerator (device, processes, autocast, gradient scaler) and the process-group helpers.

Accelerate starts the process group under ``accelerate launch`` or ``torchrun`` (gloo on CPUs, NCCL
on GPUs), runs autocast and the fp16 gradient scaler. The engine wraps the model in
``DistributedDataParallel`` itself, once per unfreeze phase, because DDP must know which parameters
train.
"""

from __future__ import annotations

import atexit
import contextlib

import torch

from headstart.device import resolve_device
from headstart.errors import require


def make_accelerator(device: str, mixed_precision: str, name: str = "device"):
    """An Accelerator for this run; ``auto`` precision is bf16 (or fp16) on GPUs and none on CPUs.

    ``device`` is resolved here, once (:func:`headstart.device.resolve_device`).
    """
    require("accelerate", "finetune")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    cpu = resolve_device(device, name) == "cpu"
    if mixed_precision == "auto":
        mixed_precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    try:
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    except ValueError:
        # Accelerate keeps one state per process; a second run in the same (single) process may
        # ask for another precision or device, so start that state afresh.
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def broadcast_from_main(model: torch.nn.Module, accelerator) -> None:
    """Copy the main process's parameters and buffers to the other processes (no-op on one)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def wrap(model: torch.nn.Module, accelerator):
    """The model, in DistributedDataParallel when there are several processes (once per phase)."""
    if accelerator.num_processes == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [accelerator.local_process_index] if accelerator.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


_GROUP_AT_EXIT = {"registered": False, "clean": False}


def release_group_at_exit(clean: bool) -> None:
    """Destroy the torch.distributed process group when the interpreter exits, if the last run ended well.

    A process that exits with a gloo group still alive can abort in interpreter finalization
    (SIGABRT, "terminate called without an active exception": gloo's threads outlive Python; see
    pytorch/pytorch#190489), which turns a finished ``torchrun`` job into a failed one. After a run
    that failed, the group is left alone: destroying it while other ranks wait in a collective can
    hang. No-op without an initialized group.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    _GROUP_AT_EXIT["clean"] = clean
    if not _GROUP_AT_EXIT["registered"]:
        atexit.register(_destroy_group_if_clean)
        _GROUP_AT_EXIT["registered"] = True


def _destroy_group_if_clean() -> None:
    import torch.distributed as dist

    if _GROUP_AT_EXIT["clean"] and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
