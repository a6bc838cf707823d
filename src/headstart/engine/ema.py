"""An exponential moving average (EMA) of the weights, evaluated and saved instead of the raw weights.

AdamW's first steps on a pretrained network are noisy; averaging the weights along the trajectory
cancels much of that noise. With a constant decay the average starts at the initial weights and
moves away from them gradually, which suits LP-FT: the average begins as the probe.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from headstart.errors import OptionError


class WeightEMA:
    """A copy of a model whose weights (and floating buffers) follow ``ema = decay * ema + (1 - decay) * live``.

    Args:
        model: The model being trained (not wrapped in DDP).
        decay: Weight of the old average at each optimizer step, for example 0.99.

    Attributes:
        model: The averaged copy, in eval mode and without gradients.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise OptionError(f"--ema-decay (ema_decay) must be in (0, 1), got {decay!r}; 0.99 averages over about 100 steps.")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimizer step)."""
        for average, live in zip(self.model.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(live, 1.0 - self.decay)
            else:
                average.copy_(live)
