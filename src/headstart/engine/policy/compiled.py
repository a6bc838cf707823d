"""A policy resolved against one model: parameter names, layer groups, learning rates, phases, BatchNorm modes.

:meth:`FinetunePolicy.compile <headstart.engine.policy.policy.FinetunePolicy.compile>` returns a
:class:`CompiledPolicy`; the engine takes its optimizer groups and applies its phases.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from torch import nn

from headstart.engine.policy.names import NON_STAGE_GROUPS, SHORTCUTS, PolicyError, matches
from headstart.models.classifier import HEAD, FinetuneModel, is_batchnorm


@dataclass
class LayerGroup:
    """Parameters that share a depth (for layer-wise decay) and a row in ``explain``."""

    name: str
    patterns: tuple[str, ...]
    layer: int
    params: list[str]


class CompiledPolicy:
    """A policy resolved against one model: names, groups, per-parameter lr scale and phases.

    Attributes:
        policy: The policy.
        lr: The base (head) learning rate.
        names: Every policy parameter name, in model order.
        groups: Layer groups, input side first; the head is last.
        lr_scale: Learning-rate multiplier per parameter (``lr_mult`` times the layer decay).
        decay: Whether weight decay applies to each parameter (not to biases and 1-D ones).
        group_source: Where the layer groups came from: ``timm group_matcher``,
            ``spec.param_groups`` or ``module order``.
    """

    def __init__(self, policy: Any, model: FinetuneModel, lr: float) -> None:
        self.policy = policy
        self.lr = float(lr)
        self.model = model
        self.spec = model.backbone.spec
        if policy.lora_rank:
            from headstart.backbones.lora import add_lora, lora_settings

            if lora_settings(model.backbone.model) is None:
                add_lora(model.backbone.model, policy.lora_rank, policy.lora_alpha, policy.lora_targets, policy.lora_dropout)
        self.parameters = model.policy_parameters()
        self.names = list(self.parameters)
        # The head is every parameter under the ``head`` module: a Linear for classification
        # (head.weight, head.bias); the FPN, RPN and box or mask heads for detection and segmentation.
        self.head_names = [name for name in self.names if name.startswith(f"{HEAD}.")]
        self.module_names = list(model.policy_modules())
        self.bn_modules = {name: module for name, module in model.policy_modules().items() if is_batchnorm(module)}
        self.groups, self.group_source = _layer_groups(model, self.names, self.head_names)
        self.group_of = {name: group for group in self.groups for name in group.params}
        self.decay = {name: self.parameters[name].ndim > 1 and not name.endswith(".bias") for name in self.names}
        self._frozen = self._select(policy.frozen, "frozen") if policy.frozen else set()
        self.lr_scale = self._lr_scales()
        self._phases: dict[int, tuple[set[str], dict[str, str]]] = {}
        for epoch in sorted({0, *policy.unfreeze}):
            trainable, _ = self.phase(epoch)
            if not trainable:
                raise PolicyError(
                    f"The policy leaves nothing trainable in epoch {epoch} (trainable={list(policy.patterns_at(epoch))}, "
                    f"frozen={list(policy.frozen)}, bn={policy.bn!r}). Add patterns to trainable (for example 'head'), "
                    "or remove them from frozen."
                )

    # ----- pattern resolution -----------------------------------------------------------------

    def _select(self, patterns: tuple[str, ...], where: str) -> set[str]:
        selected: set[str] = set()
        for pattern in patterns:
            selected |= self.resolve(pattern, where)
        return selected

    def resolve(self, pattern: str, where: str = "pattern") -> set[str]:
        """The parameter names a pattern, group name or shortcut selects.

        Raises:
            PolicyError: It selects nothing; the message lists similar names.
        """
        backbone_names = [n for n in self.names if n not in self.head_names]
        if pattern in ("*", "all"):
            return set(self.names)
        if pattern == "backbone":
            return set(backbone_names)
        if pattern == HEAD:
            return set(self.head_names)
        if pattern == "last-stage" or pattern.startswith("last-n:"):
            return self._last_stages(pattern, where)
        groups = dict(self.spec.param_groups)
        if pattern in groups:
            return {n for n in backbone_names if any(fnmatch.fnmatchcase(n, p) for p in groups[pattern])}
        matched = {n for n in self.names if matches(n, pattern)}
        if not matched:
            raise PolicyError(
                f"Pattern {pattern!r} in policy.{where} matches no parameter or module of {self.spec.name} + head."
                f"{self._similar(pattern)} Groups: {', '.join(list(groups) + [HEAD]) or HEAD}. "
                f"Shortcuts: {', '.join(SHORTCUTS)}. Patterns are fnmatch over names like {backbone_names[0] if backbone_names else 'head.weight'}."
            )
        return matched

    def _last_stages(self, pattern: str, where: str) -> set[str]:
        groups = list(self.spec.param_groups)
        stage_positions = [i for i, (name, _) in enumerate(groups) if name not in NON_STAGE_GROUPS]
        if not stage_positions:
            raise PolicyError(
                f"{pattern!r} in policy.{where} needs the backbone's stages, but {self.spec.name} lists none in "
                "spec.param_groups. Name the layers with fnmatch patterns instead (for example 'layer4.*')."
            )
        if pattern == "last-stage":
            count = 1
        else:
            text = pattern.split(":", 1)[1]
            if not text.isdigit() or int(text) < 1:
                raise PolicyError(f"{pattern!r} in policy.{where}: write last-n:K with K a positive whole number, like last-n:2.")
            count = int(text)
        if count > len(stage_positions):
            raise PolicyError(
                f"{pattern!r} in policy.{where} asks for {count} stages, but {self.spec.name} has {len(stage_positions)} "
                f"({', '.join(groups[i][0] for i in stage_positions)}). Use at most last-n:{len(stage_positions)}, or 'backbone'."
            )
        first = stage_positions[-count]
        patterns = [p for _, group_patterns in groups[first:] for p in group_patterns]
        backbone_names = [n for n in self.names if n not in self.head_names]
        return {n for n in backbone_names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}

    def _similar(self, pattern: str) -> str:
        candidates = set(dict(self.spec.param_groups)) | {HEAD, "backbone", "last-stage"}
        for name in self.module_names:
            candidates.add(name)
            candidates.add(f"{name}.*")
        candidates.update(self.names)
        close = difflib.get_close_matches(pattern, sorted(candidates), n=5, cutoff=0.6)
        if not close:
            bare = pattern.strip("*.")
            close = sorted(c for c in candidates if bare and bare in c)[:5]
        return f" Similar names: {', '.join(close)}." if close else ""

    # ----- learning rates ---------------------------------------------------------------------

    def _lr_scales(self) -> dict[str, float]:
        mult = {name: 1.0 for name in self.names}
        for pattern, value in self.policy.lr_mult.items():
            for name in self.resolve(pattern, f"lr_mult[{pattern!r}]"):
                mult[name] = value
        if self.policy.layer_decay is not None:
            top = self.groups[-1].layer
            for name in self.names:
                mult[name] *= self.policy.layer_decay ** (top - self.group_of[name].layer)
        return mult

    # ----- phases -----------------------------------------------------------------------------

    def phase(self, epoch: int) -> tuple[set[str], dict[str, str]]:
        """The trainable parameter names and the BatchNorm mode of each BN layer in ``epoch``."""
        key = max([0] + [k for k in self.policy.unfreeze if k <= epoch])
        if key in self._phases:
            return self._phases[key]
        wanted = self._select(self.policy.patterns_at(epoch), "trainable" if key == 0 else f"unfreeze[{key}]") - self._frozen
        modes: dict[str, str] = {}
        frozen_bn_params: set[str] = set()
        for module_name, module in self.bn_modules.items():
            own = [f"{module_name}.{p}" for p, value in module.named_parameters(recurse=False)]
            if own:
                trains = any(p in wanted for p in own)
            else:
                parent = module_name.rpartition(".")[0]
                trains = any(n.startswith(f"{parent}.") for n in wanted) if parent else bool(wanted)
            mode = self.policy.bn if trains else self.policy.frozen_bn
            if not trains and mode == "stats-frozen":
                mode = "frozen"
            modes[module_name] = mode
            if mode == "frozen":
                frozen_bn_params.update(own)
        trainable = wanted - frozen_bn_params
        self._phases[key] = (trainable, modes)
        return trainable, modes

    def ever_trainable(self) -> list[str]:
        """Parameters trainable in some phase, in model order (the optimizer holds exactly these)."""
        union: set[str] = set()
        for epoch in {0, *self.policy.unfreeze}:
            union |= self.phase(epoch)[0]
        return [name for name in self.names if name in union]

    def first_trainable_epoch(self, name: str) -> int | None:
        """The epoch a parameter starts training, or None if it never does."""
        for epoch in sorted({0, *self.policy.unfreeze}):
            if name in self.phase(epoch)[0]:
                return epoch
        return None

    def apply(self, model: FinetuneModel, epoch: int) -> None:
        """Set ``requires_grad`` and the BatchNorm modes of ``epoch``'s phase on ``model``."""
        trainable, modes = self.phase(epoch)
        for name, parameter in model.policy_parameters().items():
            parameter.requires_grad_(name in trainable)
        model.bn_modes = dict(modes)
        model.train(model.training)

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """AdamW/SGD parameter groups: one per (layer group, lr scale, decay or not), frozen-forever left out."""
        ever = set(self.ever_trainable())
        grouped: dict[tuple[int, float, bool], dict[str, Any]] = {}
        for index, group in enumerate(self.groups):
            for name in group.params:
                if name not in ever:
                    continue
                key = (index, self.lr_scale[name], self.decay[name])
                if key not in grouped:
                    label = group.name if self.decay[name] else f"{group.name} (no decay)"
                    grouped[key] = {
                        "params": [],
                        "names": [],
                        "name": label,
                        "lr": self.lr * self.lr_scale[name],
                        "lr_scale": self.lr_scale[name],
                        "weight_decay": self.policy.weight_decay if self.decay[name] else 0.0,
                    }
                grouped[key]["params"].append(self.parameters[name])
                grouped[key]["names"].append(name)
        return list(grouped.values())

    def rows(self, epoch: int = 0) -> list[dict[str, Any]]:
        """One row per layer group, for :meth:`FinetunePolicy.explain`."""
        trainable, modes = self.phase(epoch)
        bn_by_param = {f"{m}.{p}": modes[m] for m, module in self.bn_modules.items() for p, _ in module.named_parameters(recurse=False)}
        rows = []
        for group in self.groups:
            count = sum(self.parameters[n].numel() for n in group.params)
            trainable_count = sum(self.parameters[n].numel() for n in group.params if n in trainable)
            starts = [self.first_trainable_epoch(n) for n in group.params]
            starts = [s for s in starts if s is not None]
            scales = sorted({self.lr_scale[n] for n in group.params if self.first_trainable_epoch(n) is not None})
            lr = None if not scales else self.lr * scales[0]
            decayed = [n for n in group.params if self.decay[n]]
            no_decay = len(group.params) - len(decayed)
            wd = f"{self.policy.weight_decay:g}" + (" / 0" if no_decay else "")
            bn = sorted({bn_by_param[n] for n in group.params if n in bn_by_param})
            rows.append(
                {
                    "group": group.name,
                    "patterns": list(group.patterns),
                    "params": count,
                    "trainable": trainable_count,
                    "from_epoch": min(starts) if starts else None,
                    "lr": lr,
                    "lr_all": [self.lr * s for s in scales],
                    "weight_decay": wd,
            "no_decay_params": no_decay,
                    "bn": ", ".join(bn) if bn else "-",
                }
            )
        return rows

    def summary(self, epoch: int = 0) -> dict[str, Any]:
        """Counts for logs: trainable and total parameters, and BN layers per mode, in ``epoch``."""
        trainable, modes = self.phase(epoch)
        counts: dict[str, int] = {}
        for mode in modes.values():
            counts[mode] = counts.get(mode, 0) + 1
        return {
            "trainable_params": sum(self.parameters[n].numel() for n in trainable),
            "total_params": sum(p.numel() for p in self.parameters.values()),
            "bn_layers": counts,
            "group_source": self.group_source,
        }


def _layer_groups(model: FinetuneModel, names: list[str], head_names: list[str]) -> tuple[list[LayerGroup], str]:
    """Backbone parameters in layer groups, input side first, then the head as the last group."""
    backbone_names = [n for n in names if n not in head_names]
    groups, source = _timm_groups(model.backbone.model, backbone_names)
    if groups is None:
        groups, source = _spec_groups(model.backbone.spec.param_groups, backbone_names)
    if groups is None:
        groups, source = _module_order_groups(backbone_names), "module order"
    groups.append(LayerGroup(HEAD, (HEAD,), len(groups), list(head_names)))
    return groups, source


def _timm_groups(network: nn.Module, names: list[str]) -> tuple[list[LayerGroup] | None, str]:
    matcher = getattr(network, "group_matcher", None)
    if matcher is None or not names:
        return None, ""
    try:
        from timm.models import group_parameters

        grouped = group_parameters(network, matcher(coarse=False))
    except Exception:  # a custom model's group_matcher may not follow timm's conventions
        return None, ""
    known = set(names)
    groups = []
    for _, members in sorted(grouped.items()):
        members = [m for m in members if m in known]
        if members:
            name, patterns = _describe(members)
            groups.append(LayerGroup(name, patterns, len(groups), members))
    if sum(len(g.params) for g in groups) != len(names):
        return None, ""
    order = {n: i for i, n in enumerate(names)}
    for group in groups:
        group.params.sort(key=order.__getitem__)
    return groups, "timm group_matcher"


def _spec_groups(param_groups, names: list[str]) -> tuple[list[LayerGroup] | None, str]:
    if not param_groups:
        return None, ""
    members: dict[str, list[str]] = {group: [] for group, _ in param_groups}
    for name in names:
        group = next((g for g, patterns in param_groups if any(fnmatch.fnmatchcase(name, p) for p in patterns)), None)
        if group is None:
            return None, ""
        members[group].append(name)
    groups = []
    for group, patterns in param_groups:
        if members[group]:
            groups.append(LayerGroup(group, tuple(patterns), len(groups), members[group]))
    return groups, "spec.param_groups"


def _module_order_groups(names: list[str]) -> list[LayerGroup]:
    order: dict[str, list[str]] = {}
    for name in names:
        order.setdefault(name.split(".", 1)[0], []).append(name)
    return [LayerGroup(top, (f"{top}.*",), index, members) for index, (top, members) in enumerate(order.items())]


def _describe(members: list[str]) -> tuple[str, tuple[str, ...]]:
    """A name and patterns for parameter names: the common module prefix under each top-level module."""
    by_top: dict[str, list[list[str]]] = {}
    for member in members:
        by_top.setdefault(member.split(".", 1)[0], []).append(member.split(".")[:-1])
    prefixes = []
    for top, paths in by_top.items():
        common: list[str] = []
        for parts in zip(*paths):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        prefixes.append(".".join(common) or top)
    return "+".join(prefixes), tuple(f"{prefix}.*" for prefix in prefixes)
