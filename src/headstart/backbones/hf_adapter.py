"""``hf:`` backbones: Hugging Face transformers vision models (``AutoModel``).

A folder that holds a tokenizer and no image processor is a text encoder; it loads through
:mod:`headstart.backbones.text_adapter` (``AutoModel`` + ``AutoTokenizer``, masked mean pooling).

``hf:<repo id>`` resolves from the local Hugging Face cache (and, unless ``HEADSTART_OFFLINE=1``, the
hub); ``hf:/path/to/folder`` loads a local folder holding ``config.json``, the weights and
``preprocessor_config.json``. ``trust_remote_code`` is off unless the caller turns it on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from headstart.backbones.folders import is_text_folder, packaged_folder, resolve_hub_folder
from headstart.backbones.module import Backbone, stage_param_groups
from headstart.backbones.packaged import check_expected_sha256
from headstart.backbones.spec import BackboneSpec
from headstart.backbones.text_adapter import load_folder
from headstart.errors import WeightsUnavailableError, require

SUPPORTS_REMOTE_CODE = True

_RESAMPLE = {2: "bilinear", 3: "bicubic", 0: "nearest"}


class HFVisionTrunk(nn.Module):
    """Wraps a transformers vision model: ``forward`` gives pooled features, ``forward_layer`` a hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return pooled.flatten(1)

    def forward_layer(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        index = int(layer.rsplit(".", 1)[-1])
        out = self.hf(pixel_values=x, output_hidden_states=True)
        return out.hidden_states[index]


def _block_names(trunk: nn.Module, num_layers: int) -> list[str]:
    """Names of the transformer blocks: the first ModuleList with one entry per hidden layer."""
    for name, module in trunk.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and num_layers > 0:
            return [f"{name}.{i}" for i in range(num_layers)]
    return []


def _weights_sha(folder: Path, expected: str | None = None, name: str = "") -> str:
    """The sha256 of the folder's weight file (checked against ``expected`` when given), before anything reads it."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if (folder / filename).is_file():
            return check_expected_sha256(folder / filename, expected, name)
    raise WeightsUnavailableError(f"{folder} holds no model.safetensors or pytorch_model.bin.")


def load(name: str, pretrained: bool = True, trust_remote_code: bool = False, *, expected_sha256: str | None = None) -> Backbone:
    """Load an ``hf:`` backbone: a vision model here, a text encoder through the text adapter.

    ``expected_sha256`` (a bundle's record) is checked against the folder's weight file before it is read.
    """
    transformers = require("transformers", "hf")
    repo = name.removeprefix("hf:")
    folder = packaged_folder(name) or resolve_hub_folder(repo)
    if is_text_folder(folder):
        return load_folder(folder, f"hf:{repo}", "hf", pretrained=pretrained, trust_remote_code=trust_remote_code, expected_sha256=expected_sha256)
    trust = bool(trust_remote_code)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust)
    if pretrained:
        sha256 = _weights_sha(folder, expected_sha256, name)
        model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=trust)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.AutoModel.from_config(config)
        sha256 = "random-init:seed0"
    model.eval()
    trunk = HFVisionTrunk(model)
    processor = {}
    if (folder / "preprocessor_config.json").is_file():
        processor = json.loads((folder / "preprocessor_config.json").read_text())
    size = processor.get("size", getattr(config, "image_size", 224))
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or 224
    num_layers = int(getattr(config, "num_hidden_layers", 0))
    layers = tuple(f"hidden.{i}" for i in range(num_layers + 1))
    encoder_layers = _block_names(trunk, num_layers)
    spec = BackboneSpec(
        name=f"hf:{repo}" + ("" if pretrained else "@random"),
        source="hf",
        arch=type(model).__name__,
        weights_id=(folder.name if pretrained else "random"),
        sha256=sha256,
        input_size=int(size),
        mean=tuple(processor.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(processor.get("image_std", (0.5, 0.5, 0.5))),
        interpolation=_RESAMPLE.get(processor.get("resample", 2), "bilinear"),
        crop_pct=1.0,
        feature_dim=int(getattr(config, "hidden_size", 0)),
        layers=layers,
        param_groups=stage_param_groups(trunk, encoder_layers, None),
    )
    return Backbone(trunk, spec, None)
