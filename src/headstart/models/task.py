"""The model that detection and segmentation training hands to :class:`FinetunePolicy`.

It has the interface the policy and :class:`FrozenGuard` use on classification's ``FinetuneModel``:
``backbone`` (with ``spec`` and ``model``), ``policy_parameters()``, ``policy_modules()`` and
``bn_modes``, enforced on ``train()``. Names: the backbone's parameters keep the backbone's own
names (``features.13.conv.0.0.weight``), so ``spec.param_groups``, ``last-stage`` and ``last-n:K``
mean what they mean in classification; every new part (FPN, RPN, box heads, decoder) is named
``head.<name inside the torchvision model>``, so the pattern ``head.*`` (and, with the policy's
``head`` shortcut, ``head``) selects all of it.
"""

from __future__ import annotations

from torch import nn

from headstart.backbones import Backbone
from headstart.models.trunk import shared_names

HEAD = "head"


class TaskModel(nn.Module):
    """A torchvision detection or segmentation network over a headstart backbone's trunk.

    Args:
        backbone: The backbone whose modules the network's trunk reuses (not registered a second
            time: ``state_dict()`` holds each tensor once, under ``network.``).
        network: The torchvision network (or decoder) that uses them.
        config: The settings that rebuild the network (saved in bundles).
    """

    def __init__(self, backbone: Backbone, network: nn.Module, config: dict) -> None:
        super().__init__()
        self.network = network
        self.config = dict(config)
        self.bn_modes: dict[str, str] = {}
        self.__dict__["backbone"] = backbone  # shared modules; see the class docstring
        self._refresh_names()

    def _refresh_names(self) -> None:
        backbone_parameters, backbone_modules = shared_names(self.backbone, self.network)
        taken = {id(p) for p in backbone_parameters.values()}
        taken_modules = {id(m) for m in backbone_modules.values()}
        self._parameters_by_name = dict(backbone_parameters)
        for name, parameter in self.network.named_parameters():
            if id(parameter) not in taken:
                self._parameters_by_name[f"{HEAD}.{name}"] = parameter
        self._modules_by_name = dict(backbone_modules)
        for name, module in self.network.named_modules():
            if name and id(module) not in taken_modules:
                self._modules_by_name[f"{HEAD}.{name}"] = module

    def forward(self, *args, **kwargs):
        return self.network(*args, **kwargs)

    def policy_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter by policy name: the backbone's own names, then ``head.*`` for the new parts."""
        return dict(self._parameters_by_name)

    def policy_modules(self) -> dict[str, nn.Module]:
        """Every module by policy name."""
        return dict(self._modules_by_name)

    def train(self, mode: bool = True) -> TaskModel:
        """Set training mode, then enforce ``bn_modes`` (frozen BatchNorm layers stay in eval mode)."""
        super().train(mode)
        if mode:
            modules = self._modules_by_name
            for name, bn_mode in self.bn_modes.items():
                modules[name].train(bn_mode == "train")
        return self
