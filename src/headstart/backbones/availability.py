"""Cheap facts about catalog entries: offline availability, parameter count, feature width."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from headstart.backbones.packaged import PACKAGED


def is_offline(name: str) -> bool:
    """Whether the weights for ``name`` can be loaded right now without a network."""
    packaged = PACKAGED.get(name)
    if packaged is not None and packaged.path() is not None:
        return True
    if name.startswith("tv:"):
        import torchvision

        arch, _, weights_name = name[3:].partition(".")
        try:
            weights = torchvision.models.get_model_weights(arch)[weights_name]
        except (KeyError, ValueError):
            return False
        filename = weights.url.rsplit("/", 1)[-1]
        return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()
    if name.startswith("timm:"):
        return _in_hf_cache(name[5:])
    return False


def _in_hf_cache(body: str) -> bool:
    from headstart.backbones.timm_adapter import cached_file, pretrained_cfg

    return cached_file(pretrained_cfg(body)) is not None


@functools.lru_cache(maxsize=4096)
def describe(name: str) -> tuple[int | None, int | None]:
    """Parameter count and pooled feature width, from the model built on the meta device."""
    try:
        with torch.device("meta"):
            if name.startswith("tv:"):
                import torchvision

                arch = name[3:].split(".", 1)[0]
                model = torchvision.models.get_model(arch, weights=None)
                linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
                dim = linears[-1].in_features if linears else None
            elif name.startswith("timm:"):
                import timm

                model = timm.create_model(name[5:].split(".", 1)[0], pretrained=False)
                dim = int(getattr(model, "num_features", 0)) or None
            else:
                return None, None
            params = sum(p.numel() for p in model.parameters())
        return params, dim
    except Exception:  # a model that cannot build on meta still lists, without numbers
        return None, None
