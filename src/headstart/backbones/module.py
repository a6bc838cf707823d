"""The Backbone module: a pretrained network with its source classifier set aside."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from headstart.backbones.spec import BackboneSpec
from headstart.errors import LayerError

POOLS = ("avg", "max", "avgmax", "token", "none")


class _StopForward(Exception):
    """Raised inside a forward hook once the wanted layer has produced its output."""


class Backbone(nn.Module):
    """A feature extractor: ``forward(x)`` returns pooled penultimate features of shape (N, D).

    Attributes:
        model: The network with its source classifier replaced by ``nn.Identity``.
        source_head: The source-task classifier (for LEEP and ImageNet predictions), or None.
        spec: The frozen :class:`BackboneSpec`.
    """

    def __init__(self, model: nn.Module, spec: BackboneSpec, source_head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.source_head = source_head
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1) if out.dim() > 2 else out

    def source_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Source-task logits from pooled penultimate features.

        Raises:
            ValueError: The backbone has no source classifier.
        """
        if self.source_head is None:
            raise ValueError(f"{self.spec.name} has no source-task classifier.")
        return self.source_head(pooled)

    def check_layer(self, layer: str | None) -> str:
        """Return the resolved layer name, or raise a LayerError that lists the valid ones."""
        if layer is None or layer == self.spec.default_layer:
            return self.spec.default_layer
        if layer in self.spec.layers:
            return layer
        raise LayerError(
            f"Layer {layer!r} is not a layer of {self.spec.name}. "
            f"Valid layers: {self.spec.default_layer}, {', '.join(self.spec.layers)}."
        )

    def features(self, x: torch.Tensor, layer: str | None = None, pool: str = "avg") -> torch.Tensor:
        """Features of ``x`` at ``layer``, pooled to shape (N, D).

        Args:
            x: A batch of preprocessed inputs.
            layer: A name from ``spec.layers``, or None for the pooled penultimate layer.
            pool: ``avg``, ``max`` or ``avgmax`` over spatial positions or tokens, ``token`` for
                the first (class) token of a transformer, or ``none`` to flatten unpooled.
        """
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not one of {', '.join(POOLS)}.")
        layer = self.check_layer(layer)
        if layer == self.spec.default_layer:
            return self.forward(x)
        forward_layer = getattr(self.model, "forward_layer", None)
        if forward_layer is not None:
            return pool_features(forward_layer(x, layer), pool)
        return pool_features(self._capture(x, layer), pool)

    def _capture(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        module = self.model.get_submodule(layer)
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise _StopForward

        handle = module.register_forward_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        assert captured, f"layer {layer} produced no output"
        return captured[0]


def pool_features(out: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool a feature map (N, C, H, W) or token sequence (N, T, C) to (N, D)."""
    if out.dim() == 2:
        return out
    if pool == "none":
        return out.flatten(1)
    if out.dim() == 3:  # tokens: (N, T, C)
        if pool == "token":
            return out[:, 0]
        if pool == "avg":
            return out.mean(dim=1)
        if pool == "max":
            return out.amax(dim=1)
        return torch.cat([out.mean(dim=1), out.amax(dim=1)], dim=1)
    if pool == "token":
        raise ValueError("pool='token' needs a transformer layer (N, tokens, C); this layer gives a feature map.")
    spatial = out.flatten(2)
    if pool == "avg":
        return spatial.mean(dim=2)
    if pool == "max":
        return spatial.amax(dim=2)
    return torch.cat([spatial.mean(dim=2), spatial.amax(dim=2)], dim=1)


def split_off_classifier(model: nn.Module, classifier_name: str | None = None) -> tuple[nn.Module, nn.Module | None, str | None]:
    """Replace the source classifier (the last ``nn.Linear``, or the named module) with Identity.

    Returns:
        The model, the removed classifier (or None), and its dotted name (or None).
    """
    name = classifier_name
    if name is None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        name = linears[-1] if linears else None
    if not name:
        return model, None, None
    head = model.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return model, head, name


def stage_param_groups(model: nn.Module, stages: Sequence[str], head_name: str | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Ordered parameter groups: ``stem`` (before the first stage), one per stage, ``neck``, ``head``.

    Groups are fnmatch patterns over parameter names, as :class:`FinetunePolicy` uses them.
    """
    stage_patterns = [(stage, (f"{stage}.*",)) for stage in stages]
    stem: list[str] = []
    neck: list[str] = []
    seen_stage = False
    for name, _ in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for _, patterns in stage_patterns for pattern in patterns):
            seen_stage = True
            continue
        prefix = name.rsplit(".", 1)[0] + ".*" if "." in name else name
        target = neck if seen_stage else stem
        if prefix not in target:
            target.append(prefix)
    groups: list[tuple[str, tuple[str, ...]]] = []
    if stem:
        groups.append(("stem", tuple(stem)))
    groups.extend(stage_patterns)
    if neck:
        groups.append(("neck", tuple(neck)))
    if head_name:
        groups.append(("head", (f"{head_name}.*",)))
    return tuple(groups)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device too)."""
    return sum(p.numel() for p in module.parameters())
