"""Where computation runs: ``device="auto"`` and its checks, resolved in this one place.

Every public function that takes ``device`` accepts ``"auto"``, ``"cpu"``, ``"cuda"`` or
``"cuda:N"`` (or None, which means ``"auto"``) and calls :func:`resolve_device` once, at its entry;
the layers below receive a concrete device.
"""

from __future__ import annotations

from headstart.errors import OptionError


def resolve_device(device: object = "auto", name: str = "device") -> str:
    """``"auto"``/None -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values are checked.

    Raises:
        OptionError: an unknown device, or ``cuda`` on a machine where torch sees no GPU. The
            message starts with ``name`` (the function or option that was given the value).
    """
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise OptionError(f"{name}: device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"{name}: device={device!r}, but torch sees no CUDA device. Use device='auto' or 'cpu'.")
    return device


def torch_device(device: object = "auto", name: str = "device"):
    """:func:`resolve_device` as a ``torch.device``."""
    import torch

    return torch.device(resolve_device(device, name))


__all__ = ["resolve_device", "torch_device"]
