"""Runtime proof that frozen means frozen: checksums of frozen weights and frozen BatchNorm buffers.

Before an epoch, :class:`FrozenGuard` records a checksum of every parameter that does not train in
that epoch and of the running statistics of every BatchNorm layer in ``frozen`` or
``stats-frozen`` mode. After the epoch, :meth:`FrozenGuard.check` recomputes them; any change is an
error that names the module. The checksum runs on the tensors' own device over their raw bits, so a
change of a single bit is caught and nothing is copied to the host but two integers per tensor.
"""

from __future__ import annotations

import torch

from headstart.errors import HeadstartError
from headstart.models.classifier import FinetuneModel

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class FrozenWeightsChangedError(HeadstartError):
    """A parameter or BatchNorm statistic that the policy froze changed during training."""


def checksum(tensor: torch.Tensor) -> tuple[int, int]:
    """Two integers that change when any bit of ``tensor`` changes: the sum and a position-weighted sum of its bits."""
    flat = tensor.detach().reshape(-1)
    if flat.is_floating_point() or flat.is_complex():
        flat = flat.view(_INT_VIEW[flat.element_size()])
    values = flat.to(torch.int64)
    weights = torch.arange(values.numel(), device=values.device, dtype=torch.int64) % 1_000_003 + 1
    return int(values.sum()), int((values * weights).sum())


class FrozenGuard:
    """Checksums of what must not change in one epoch.

    Args:
        model: The model, with the epoch's phase already applied (``requires_grad`` and ``bn_modes``).
        epoch: The epoch, for error messages.
    """

    def __init__(self, model: FinetuneModel, epoch: int) -> None:
        self.epoch = epoch
        self.tensors: dict[str, tuple[str, str, torch.Tensor]] = {}
        for name, parameter in model.policy_parameters().items():
            if not parameter.requires_grad:
                self.tensors[name] = ("parameter", name.rpartition(".")[0], parameter)
        modules = model.policy_modules()
        for module_name, mode in model.bn_modes.items():
            if mode in ("frozen", "stats-frozen"):
                for buffer_name, buffer in modules[module_name].named_buffers(recurse=False):
                    if buffer is not None:
                        self.tensors[f"{module_name}.{buffer_name}"] = (f"BatchNorm buffer ({mode})", module_name, buffer)
        self.sums = {name: checksum(tensor) for name, (_, _, tensor) in self.tensors.items()}

    def check(self) -> None:
        """Recompute the checksums.

        Raises:
            FrozenWeightsChangedError: Something frozen changed; the message names the modules.
        """
        changed = [name for name, (_, _, tensor) in self.tensors.items() if checksum(tensor) != self.sums[name]]
        if not changed:
            return
        first_kind, first_module, _ = self.tensors[changed[0]]
        module = first_module or "(root)"
        listed = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise FrozenWeightsChangedError(
            f"Frozen {first_kind} {changed[0]} of module {module} changed during epoch {self.epoch} "
            f"({len(changed)} frozen tensor(s) changed: {listed}). Something outside the policy trains or updates it: "
            "code that calls requires_grad_(True) or .train() on a frozen module, a second optimizer, or in-place edits. "
            "The last checkpoint from before this epoch is kept."
        )
