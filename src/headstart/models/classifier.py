"""The model that fine-tuning trains: a backbone plus a new linear head, with BatchNorm modes enforced.

Parameter and module names are the ones users see in ``backbone.spec`` and in ``print(model)``:
names inside the backbone network as they are (``features.18.0.weight``, ``layer4.1.bn2``), and the
new classifier as ``head.weight`` and ``head.bias``. Policies match fnmatch patterns against them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from headstart.backbones import Backbone

HEAD = "head"
BN_MODES = ("train", "frozen", "stats-frozen")


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` keeps running statistics (BatchNorm 1d/2d/3d, SyncBatchNorm, timm BatchNormAct)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class FinetuneModel(nn.Module):
    """A backbone with a new ``nn.Linear`` head; ``forward(x)`` returns class logits.

    Calling ``train()`` puts every BatchNorm layer in the mode that ``bn_modes`` gives it: ``train``
    (batch statistics, running statistics updated), or ``frozen`` and ``stats-frozen`` (eval mode:
    running statistics used and never updated). The policy sets ``bn_modes``; whoever calls
    ``model.train()`` (the loop, DDP, a user) gets them enforced.

    Args:
        backbone: The backbone; its source-task classifier stays frozen and unused.
        num_classes: Number of output classes.

    Attributes:
        backbone: The backbone.
        head: The new classifier, ``nn.Linear(feature_dim, num_classes)``.
        bn_modes: BatchNorm mode by module name (names as in :meth:`policy_modules`).
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        width = backbone.spec.feature_dim or _probe_width(backbone)
        self.head = nn.Linear(width, num_classes)
        self.bn_modes: dict[str, str] = {}
        if backbone.source_head is not None:
            backbone.source_head.requires_grad_(False)
        clash = sorted({f"{HEAD}.weight", f"{HEAD}.bias"} & {name for name, _ in backbone.model.named_parameters()})
        if clash:
            raise ValueError(
                f"The backbone {backbone.spec.name} has its own parameters {clash}, which clash with the new "
                "classifier's names head.weight and head.bias. Save the backbone without them (file:) and fine-tune that."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def policy_parameters(self) -> dict[str, nn.Parameter]:
        """Every trainable-in-principle parameter by policy name: backbone network ones, then the head's."""
        named = dict(self.backbone.model.named_parameters())
        for name, parameter in self.head.named_parameters():
            named[f"{HEAD}.{name}"] = parameter
        return named

    def policy_modules(self) -> dict[str, nn.Module]:
        """Every module by policy name (the backbone network's root is not listed)."""
        named = {name: module for name, module in self.backbone.model.named_modules() if name}
        named[HEAD] = self.head
        return named

    def train(self, mode: bool = True) -> FinetuneModel:
        """Set training mode, then enforce ``bn_modes`` (frozen BatchNorm layers stay in eval mode)."""
        super().train(mode)
        if self.backbone.source_head is not None:
            self.backbone.source_head.eval()
        if mode:
            modules = self.policy_modules()
            for name, bn_mode in self.bn_modes.items():
                modules[name].train(bn_mode == "train")
        return self

    def init_head_from_probe(self, probe) -> None:
        """Set the head to a fitted :class:`LinearProbe`, with its standardisation folded in.

        The probe computes ``((x - mean) / scale) @ coef.T + intercept``; the head gets
        ``W = coef / scale`` and ``b = intercept - W @ mean``, so its logits are the probe's. A binary
        probe (one sigmoid output) becomes two softmax logits ``(0, z)``, which give the same
        probabilities. Classes the probe never saw get zero weights and the lowest bias.
        """
        coef = np.asarray(probe.coef_, dtype=np.float64) / np.asarray(probe.scale_, dtype=np.float64)
        intercept = np.asarray(probe.intercept_, dtype=np.float64) - coef @ np.asarray(probe.mean_, dtype=np.float64)
        classes = np.asarray(probe.classes_, dtype=np.int64)
        n_out, width = self.head.out_features, self.head.in_features
        if coef.shape[1] != width:
            raise ValueError(f"The probe was fitted on {coef.shape[1]} features, but the head takes {width}.")
        weight = np.zeros((n_out, width))
        bias = np.zeros(n_out)
        if coef.shape[0] == 1 and len(classes) == 2:  # binary: sigmoid(z) == softmax((0, z))[1]
            weight[classes[1]] = coef[0]
            bias[classes[1]] = intercept[0]
        else:
            weight[classes] = coef
            bias[classes] = intercept
        missing = np.setdiff1d(np.arange(n_out), classes)
        if len(missing):
            bias[missing] = bias[classes].min() - 10.0
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=self.head.bias.dtype))


def head_to_probe_state(head: nn.Linear) -> tuple[dict[str, np.ndarray], dict]:
    """The ``(arrays, meta)`` state of a fitted :class:`LinearProbe` whose predictions equal ``head``'s.

    The probe has no standardisation (``mean_ = 0``, ``scale_ = 1``); two classes become one
    sigmoid output (``z1 - z0``), as a binary LinearProbe stores them.
    """
    from headstart.heads import LinearProbe
    from headstart.heads._base import STATE_FORMAT_VERSION, to_jsonable

    weight = head.weight.detach().cpu().double().numpy()
    bias = head.bias.detach().cpu().double().numpy()
    n_classes, width = weight.shape
    if n_classes == 2:
        weight = (weight[1] - weight[0])[None]
        bias = np.array([bias[1] - bias[0]])
    arrays = {
        "mean_": np.zeros(width),
        "scale_": np.ones(width),
        "coef_": np.ascontiguousarray(weight),
        "intercept_": np.ascontiguousarray(bias),
    }
    meta = {
        "class": "LinearProbe",
        "format_version": STATE_FORMAT_VERSION,
        "params": {key: to_jsonable(value) for key, value in LinearProbe().get_params().items()},
        "classes": list(range(n_classes)),
        "classes_dtype": np.dtype(np.int64).str,
        "fitted": {
            "C_": None,
            "val_curve_": [],
            "val_loss_curve_": [],
            "n_iter_": 0,
            "n_features_in_": int(width),
            "multilabel_": False,
        },
    }
    return arrays, meta


def _probe_width(backbone: Backbone) -> int:
    size = backbone.spec.input_size
    with torch.no_grad():
        was_training = backbone.training
        backbone.eval()
        out = backbone(torch.zeros(1, 3, size, size))
        backbone.train(was_training)
    return int(out.shape[1])
