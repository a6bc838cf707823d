"""``timm:`` backbones through ``timm.create_model``.

Names are ``timm:<arch>[.<tag>]`` (``timm:tf_efficientnet_lite0``, ``timm:resnet50.a1_in1k``).
Pretrained weights come from the packaged offline files (checked against the pinned sha256) or,
for names headstart pins no hash for, from timm's own Hugging Face cache (trusted on first use; its
sha256 is recorded); nothing is downloaded when ``HEADSTART_OFFLINE=1``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from headstart.backbones.module import Backbone, split_off_classifier, stage_param_groups
from headstart.backbones.packaged import PACKAGED, PackagedWeights, check_expected_sha256, sha256_file, verify_sha256
from headstart.backbones.spec import BackboneSpec
from headstart.errors import UnknownBackboneError, WeightsMismatchError, WeightsUnavailableError, did_you_mean


def list_names() -> list[str]:
    """timm's pretrained names plus the packaged offline ones."""
    import timm

    names = {f"timm:{name}" for name in timm.list_models(pretrained=True)}
    names.update(key for key in PACKAGED if key.startswith("timm:"))
    return sorted(names)


def _check_arch(name: str) -> str:
    import timm

    body = name.removeprefix("timm:")
    arch = body.split(".", 1)[0]
    if not timm.is_model(arch):
        raise UnknownBackboneError(
            f"Unknown timm model {arch!r} in {name!r}.{did_you_mean(arch, timm.list_models())} "
            "List them with: headstart backbones 'timm:*'."
        )
    return body


def _load_positional(model: nn.Module, packaged: PackagedWeights, path, name: str) -> None:
    """Load a state dict whose keys differ but whose tensors come in the same order and shapes."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{name}: {path} holds {len(source)} tensors, but the timm model has {len(target)}; "
            f"the package {packaged.pip_name} does not match this timm version."
        )
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise WeightsUnavailableError(
                f"{name}: tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}."
            )
        mapped[dst_key] = src
    model.load_state_dict(mapped)


def load(name: str, pretrained: bool = True, *, expected_sha256: str | None = None) -> Backbone:
    """Build a ``timm:`` backbone; ``pretrained=False`` gives a seeded random initialisation.

    Where headstart pins the weights (a packaged file, :data:`~headstart.backbones.packaged.PACKAGED`),
    only a file with the pinned sha256 loads: the packaged one, or a cache file identical to it.
    Elsewhere timm's Hugging Face cache file is trusted on first use, and its sha256 recorded in the
    spec. ``expected_sha256`` (a bundle's record) is checked against the file before it is read.
    """
    import timm

    body = _check_arch(name)
    arch = body.split(".", 1)[0]
    if not pretrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(body, pretrained=False)
        return wrap_model(model, name=f"timm:{arch}@random", arch=arch, weights_id="random", sha256="random-init:seed0")

    packaged = PACKAGED.get(f"timm:{body}")
    path = packaged.path() if packaged else None
    cached = cached_file(pretrained_cfg(body))
    if packaged is not None and path is None and cached is not None:
        # Pinned weights: a cache file is used only when it is the pinned file itself.
        if sha256_file(cached) != packaged.sha256:
            raise WeightsUnavailableError(
                f"timm:{body}: headstart pins these weights to sha256 {packaged.sha256} (the packaged file), and the file in timm's "
                f"cache {cached} has sha256 {sha256_file(cached)}, so it is not loaded. Install the pinned weights with: "
                f"{packaged.install_hint()}, or load a local file with file:PATH."
            )
        path = cached
    if path is not None:
        sha256 = verify_sha256(path, packaged.sha256, name)
        check_expected_sha256(path, expected_sha256, name)
        model = timm.create_model(body, pretrained=False)
        if packaged.key_order == "positional":
            _load_positional(model, packaged, path, name)
        else:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        tag = model.pretrained_cfg.get("tag") or "default"
        return wrap_model(model, name=f"timm:{body}", arch=arch, weights_id=tag, sha256=sha256)

    if packaged is not None:
        raise WeightsUnavailableError(
            f"Weights for timm:{body} are not available offline. headstart pins them to the packaged file, which is not installed. "
            f"Fix: {packaged.install_hint()}, or load a local file with file:PATH."
        )
    if cached is not None:
        sha256 = check_expected_sha256(cached, expected_sha256, name)
        model = timm.create_model(body, pretrained=True, pretrained_cfg_overlay={"file": cached})
        return wrap_model(model, name=f"timm:{body}", arch=arch, weights_id=model.pretrained_cfg.get("tag") or "default", sha256=sha256)
    if os.environ.get("HEADSTART_OFFLINE", "0") == "1":
        raise WeightsUnavailableError(
            f"Weights for timm:{body} are not available offline. Tried: the packaged weights and timm's Hugging Face "
            f"cache (HEADSTART_OFFLINE=1, so no download). Fix: download them once on a connected machine, "
            "or load a local file with file:PATH."
        )
    try:
        fetched = _download(pretrained_cfg(body)) if expected_sha256 is not None else None
        if fetched is not None:  # a recorded hash: fetch the file, check it, then let timm read it
            check_expected_sha256(fetched, expected_sha256, name)
            model = timm.create_model(body, pretrained=True, pretrained_cfg_overlay={"file": fetched})
        else:
            model = timm.create_model(body, pretrained=True)
    except WeightsMismatchError:
        raise
    except Exception as exc:  # hub and network errors come in many types
        raise WeightsUnavailableError(
            f"Weights for timm:{body} are not available offline. Tried: the packaged weights, "
            f"timm's Hugging Face cache and download (failed: {type(exc).__name__}). "
            f"Fix: download them once on a connected machine into the Hugging Face cache, "
            "or load a local file with file:PATH."
        ) from None
    downloaded = cached_file(pretrained_cfg(body))
    sha256 = sha256_file(downloaded) if downloaded else f"timm-tag:{body}"
    return wrap_model(model, name=f"timm:{body}", arch=arch, weights_id=model.pretrained_cfg.get("tag") or "default", sha256=sha256)


def _download(cfg) -> str | None:
    """Download (without reading) the weight file of a timm pretrained cfg from the hub; None when that fails."""
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    from huggingface_hub import hf_hub_download

    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return hf_hub_download(hub_id, filename)
        except Exception:  # noqa: BLE001, S112 - a missing file or the network: try the next, then timm's own download
            continue
    return None


def pretrained_cfg(body: str):
    """timm's pretrained cfg for ``arch[.tag]`` (the default tag when none is given), or None."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(body) or timm.models.get_pretrained_cfg(body.split(".", 1)[0])
    except Exception:  # unknown tags raise different errors across timm versions
        return None


def cached_file(cfg) -> str | None:
    """The weight file of a timm pretrained cfg in the local Hugging Face cache, if present."""
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def stages_of(model: nn.Module) -> list[str]:
    """A timm model's stages, shallow to deep: its block containers, else its feature_info modules."""
    for container in ("blocks", "stages", "layers"):
        module = getattr(model, container, None)
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            return [f"{container}.{child}" for child, _ in module.named_children()]
    return [info["module"] for info in getattr(model, "feature_info", [])]


def wrap_model(model: nn.Module, *, name: str, arch: str, weights_id: str, sha256: str) -> Backbone:
    """Split off a timm model's classifier and describe it in a spec."""
    cfg = dict(model.pretrained_cfg)
    stages = stages_of(model)
    classifier_name = cfg.get("classifier")
    if isinstance(classifier_name, (list, tuple)):
        classifier_name = classifier_name[0]
    model, head, head_name = split_off_classifier(model, classifier_name)
    model.eval()
    input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    spec = BackboneSpec(
        name=name,
        source="timm",
        arch=arch,
        weights_id=weights_id,
        sha256=sha256,
        input_size=input_size,
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        feature_dim=int(getattr(model, "num_features", 0) or (head.in_features if isinstance(head, nn.Linear) else 0)),
        layers=tuple(stages),
        param_groups=stage_param_groups(model, stages, None),
        head_patterns=(f"{head_name}.*",) if head_name else (),
        num_source_classes=head.out_features if isinstance(head, nn.Linear) else 0,
    )
    return Backbone(model, spec, head)
