"""LoRA adapters (through ``peft``) on a backbone's linear layers, for fine-tuning with ``--strategy lora``.

:func:`add_lora` puts low-rank adapters beside the linear layers whose module names end with one of
the target names (``query``, ``value`` in BERT-style encoders). The adapter parameters are named
``<layer>.lora_A.default.weight`` and ``<layer>.lora_B.default.weight``, so the policy pattern
``*.lora_*`` selects them, and ``spec.param_groups`` patterns (``hf.encoder.layer.3.*``) still place
them in their layer for layer-wise decay. ``lora_B`` starts at zero: the network computes exactly
what it did before until training moves it.

A bundle stores the adapters on their own (``adapter.safetensors``, a few hundred kB) beside the
settings in ``bundle.json``; the backbone's weights are the original, sha256-checked ones.
:func:`merge_lora` folds the adapters into the linear weights (``W + B A * alpha / rank``) and
removes them, for export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from headstart.errors import LayerError, require

ADAPTER_PATTERN = "*.lora_*"
SETTINGS_ATTRIBUTE = "lora_settings"


def add_lora(network: nn.Module, rank: int, alpha: float, targets: Sequence[str], dropout: float = 0.0) -> list[str]:
    """Inject LoRA adapters into ``network`` in place and return the adapter parameter names.

    Args:
        network: The backbone's network (``backbone.model``).
        rank: The adapters' rank r.
        alpha: The scaling numerator: updates are scaled by ``alpha / rank``.
        targets: Module name suffixes of the linear layers to adapt, e.g. ``("query", "value")``.
        dropout: Dropout on the adapters' input during training.

    Raises:
        LayerError: No linear layer matches the targets (the message lists the linear layer names).
    """
    peft = require("peft", "text")
    targets = list(targets)
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, module in network.named_modules() if isinstance(module, nn.Linear)})
    if not any(name.rsplit(".", 1)[-1] in targets for name, module in network.named_modules() if isinstance(module, nn.Linear)):
        raise LayerError(
            f"LoRA targets {targets} match no linear layer of this backbone. Its linear layers are named {', '.join(linear_names)}; "
            "pass some of them (--lora-targets query,value for BERT-style encoders)."
        )
    config = peft.LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=targets, lora_dropout=float(dropout), bias="none")
    peft.inject_adapter_in_model(config, network)
    setattr(network, SETTINGS_ATTRIBUTE, {"rank": int(rank), "alpha": float(alpha), "targets": targets, "dropout": float(dropout)})
    return [name for name, _ in network.named_parameters() if ".lora_" in name]


def lora_settings(network: nn.Module) -> dict[str, Any] | None:
    """The settings :func:`add_lora` used on ``network``, or None when it has no adapters."""
    return getattr(network, SETTINGS_ATTRIBUTE, None)


def adapter_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors alone (CPU, contiguous), by parameter name."""
    return {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items() if ".lora_" in name}


def load_adapters(network: nn.Module, settings: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Inject adapters with ``settings`` and load their tensors.

    Raises:
        ValueError: The saved tensors do not match the adapters the settings create.
    """
    add_lora(network, settings["rank"], settings["alpha"], settings["targets"], settings.get("dropout", 0.0))
    expected = set(adapter_state(network))
    if expected != set(state):
        missing = sorted(expected - set(state))[:3]
        extra = sorted(set(state) - expected)[:3]
        raise ValueError(f"The saved LoRA adapters do not fit this backbone: missing {missing}, unexpected {extra}.")
    network.load_state_dict(state, strict=False)


def merge_lora(network: nn.Module) -> int:
    """Fold every adapter into its linear layer and put the plain layer back; return how many were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(network.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, child, module.get_base_layer())
        merged += 1
    if hasattr(network, SETTINGS_ATTRIBUTE):
        delattr(network, SETTINGS_ATTRIBUTE)
    return merged
