"""Multi-scale feature maps from a headstart :class:`Backbone`, for detection and segmentation heads.

The trunk reuses the backbone's own modules (the weights that ``load_backbone`` loaded and checked
by sha256), so nothing is copied and parameter names stay the backbone's (``features.13.conv.0.0.weight``,
``blocks.4.0.conv_pw.weight``): fine-tuning policies and ``spec.param_groups`` apply unchanged.

* ``tv:`` (and ``file:``) backbones: torchvision's ``create_feature_extractor`` over the stages in
  ``spec.layers``; for each wanted stride the deepest stage at that stride is returned.
* ``timm:`` backbones: timm's ``features_only`` machinery, ``FeatureGetterNet`` (what
  ``timm.create_model(..., features_only=True, feature_cls="getter")`` builds) over the loaded
  model, with the stages chosen from its ``feature_info``. Layers after the last one used (the
  1x1 head convolution) are pruned.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from headstart.backbones import Backbone
from headstart.errors import HeadstartError

DEFAULT_STRIDES = (8, 16, 32)


class Trunk(nn.Module):
    """``forward(x)`` returns an ``OrderedDict`` of feature maps ``"0", "1", ...``, shallow to deep.

    Args:
        backbone: A loaded backbone (its network is reused, and may be pruned in place).
        strides: Output strides to return, for example ``(8, 16, 32)``.

    Attributes:
        stages: The backbone layer behind each returned map.
        channels: Channels of each returned map.
        strides: Stride of each returned map.
        body: The feature extractor (shares modules with ``backbone.model``).
    """

    def __init__(self, backbone: Backbone, strides: tuple[int, ...] = DEFAULT_STRIDES) -> None:
        super().__init__()
        network = backbone.model
        self.spec_name = backbone.spec.name
        if backbone.spec.source == "timm" and hasattr(network, "forward_intermediates") and getattr(network, "feature_info", None):
            self._init_timm(network, tuple(strides))
        else:
            self._init_fx(backbone, tuple(strides))

    def _init_timm(self, network: nn.Module, strides: tuple[int, ...]) -> None:
        from timm.models._features import FeatureGetterNet

        info = list(network.feature_info)
        chosen = _deepest_per_stride([(i, int(f["reduction"]), int(f["num_chs"]), f["module"]) for i, f in enumerate(info)], strides, self.spec_name)
        self.stages = [module for _, _, _, module in chosen]
        self.channels = [channels for _, _, channels, _ in chosen]
        self.strides = [stride for _, stride, _, _ in chosen]
        self.kind = "timm features_only (FeatureGetterNet)"
        self.body = FeatureGetterNet(network, out_indices=tuple(index for index, _, _, _ in chosen), prune=True)

    def _init_fx(self, backbone: Backbone, strides: tuple[int, ...]) -> None:
        from torchvision.models.feature_extraction import create_feature_extractor

        shapes = _stage_shapes(backbone)
        candidates = [(name, stride, channels, name) for name, (channels, stride) in shapes.items()]
        chosen = _deepest_per_stride(candidates, strides, backbone.spec.name)
        self.stages = [name for name, _, _, _ in chosen]
        self.channels = [channels for _, _, channels, _ in chosen]
        self.strides = [stride for _, stride, _, _ in chosen]
        self.kind = "torchvision create_feature_extractor"
        was_training = backbone.model.training
        backbone.model.eval()
        self.body = create_feature_extractor(backbone.model, return_nodes={name: str(i) for i, name in enumerate(self.stages)})
        backbone.model.train(was_training)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = self.body(x)
        if isinstance(out, dict):
            return OrderedDict((str(i), out[str(i)]) for i in range(len(self.stages)))
        return OrderedDict((str(i), feature) for i, feature in enumerate(out))

    def describe(self) -> dict:
        """Stages, channels and strides, for logs and bundles."""
        return {"kind": self.kind, "stages": list(self.stages), "channels": list(self.channels), "strides": list(self.strides)}


def _stage_shapes(backbone: Backbone) -> dict[str, tuple[int, int]]:
    """``{stage: (channels, stride)}`` of every stage that outputs a feature map, from one blank image."""
    network = backbone.model
    probe = max(64, backbone.spec.input_size // 32 * 32)  # some networks (ViT) take their own size only
    shapes: dict[str, tuple[int, int]] = {}
    handles = []
    for name in backbone.spec.layers:
        module = network.get_submodule(name)

        def hook(_module, _inputs, output, name=name):
            output = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                shapes[name] = (int(output.shape[1]), probe // int(output.shape[-1]))

        handles.append(module.register_forward_hook(hook))
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(torch.zeros(1, 3, probe, probe))
    except Exception as exc:  # a network that cannot run on a blank square image has no usable stages here
        raise HeadstartError(
            f"{backbone.spec.name} did not run on a {probe}x{probe} image to find its feature maps ({type(exc).__name__}: {exc}). "
            "Detection and segmentation need a convolutional backbone, for example tv:mobilenet_v2.IMAGENET1K_V1."
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return shapes


def _deepest_per_stride(candidates: list[tuple], strides: tuple[int, ...], name: str) -> list[tuple]:
    """For each wanted stride, the last (deepest) candidate ``(key, stride, channels, module)`` at that stride."""
    chosen = []
    for stride in strides:
        at_stride = [c for c in candidates if c[1] == stride]
        if not at_stride:
            found = sorted({c[1] for c in candidates})
            raise HeadstartError(
                f"{name} has no feature map at stride {stride} (its stages give strides {found or 'none'}). "
                "Detection and segmentation need a convolutional backbone with maps at strides 8, 16 and 32 "
                "(for example tv:mobilenet_v2.IMAGENET1K_V1, tv:resnet50.IMAGENET1K_V2 or timm:tf_efficientnet_lite0)."
            )
        chosen.append(at_stride[-1])
    return chosen


def shared_names(backbone: Backbone, network: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Module]]:
    """The backbone's parameters and modules (by the backbone's own names) that ``network`` uses."""
    used_parameters = {id(p) for p in network.parameters()}
    used_modules = {id(m) for m in network.modules()}
    parameters = {n: p for n, p in backbone.model.named_parameters() if id(p) in used_parameters}
    modules = {n: m for n, m in backbone.model.named_modules() if n and id(m) in used_modules}
    return parameters, modules
