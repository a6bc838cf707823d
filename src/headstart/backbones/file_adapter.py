"""``file:`` backbones: a local state dict, safetensors or TorchScript file with a sidecar JSON spec.

The sidecar sits beside the weights with the suffix replaced by ``.json``
(``model.safetensors`` -> ``model.json``). It names the architecture and, optionally, the
preprocessing::

    {"arch": "tv:mobilenet_v2", "input_size": 224, "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225], "interpolation": "bilinear", "crop_pct": 0.875,
     "num_classes": 1000}

For TorchScript files, ``arch`` may be omitted; the module's output is taken as pooled features.
Loading TorchScript runs the code the file holds, so it needs an explicit opt-in:
``load_backbone(name, allow_torchscript=True)`` (``--allow-torchscript`` on the command line).
State dicts load with ``torch.load(weights_only=True)``; pickled code is never executed. A recorded
sha256 (``expected_sha256``) is checked before the file is read.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import torch

from headstart.backbones.module import Backbone
from headstart.backbones.packaged import check_expected_sha256
from headstart.backbones.spec import BackboneSpec
from headstart.errors import DataError, UnknownBackboneError, WeightsUnavailableError

PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")
SUPPORTS_TORCHSCRIPT = True


def sidecar_path(path: Path) -> Path:
    """Where the sidecar spec of a weight file lives."""
    return path.with_suffix(".json")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_sidecar(path: Path, required: bool, missing: str | None = None) -> dict:
    """The sidecar spec of ``path`` as a dict ({} when it is absent and not required).

    Args:
        path: The model file; its sidecar is :func:`sidecar_path`.
        required: Raise when the sidecar is absent.
        missing: The message for an absent sidecar (the default names ``file:`` and ``arch``).

    Raises:
        WeightsUnavailableError: The sidecar is required and absent.
        DataError: The sidecar is not valid JSON, not an object, or its preprocessing values are malformed.
    """
    side = sidecar_path(path)
    if not side.is_file():
        if required:
            raise WeightsUnavailableError(
                missing
                or f"file:{path} has no sidecar spec {side}. Write one naming the architecture, for example "
                '{"arch": "tv:mobilenet_v2", "input_size": 224}, or save it with headstart.backbones.save_backbone.'
            )
        return {}
    try:
        data = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"Sidecar spec {side} is not valid JSON ({exc}). Fix the file or delete it.") from None
    if not isinstance(data, dict):
        raise DataError(f"Sidecar spec {side} must hold a JSON object such as {{\"input_size\": 224}}, not {type(data).__name__}.")
    _check_preprocessing(data, side)
    return data


def _check_preprocessing(side: dict, where: Path) -> None:
    checks = {
        "input_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "mean": lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v),
        "std": lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in v),
        "interpolation": lambda v: v in ("bilinear", "bicubic"),
        "crop_pct": lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
    }
    for key, ok in checks.items():
        if key in side and not ok(side[key]):
            raise DataError(
                f"Sidecar spec {where}: {key}={side[key]!r} is not valid; expected input_size a positive int, mean and std "
                "three numbers (std > 0), interpolation bilinear or bicubic, crop_pct in (0, 1]."
            )


def preprocessing_overrides(side: dict) -> dict:
    """The sidecar's preprocessing settings (input_size, mean, std, interpolation, crop_pct) as BackboneSpec fields."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in side.items() if k in PREPROCESSING_KEYS}


def exported_model_file(path: Path, prefix: str, expected_sha256: str | None) -> tuple[str, str, dict]:
    """For a ``keras:`` or ``onnx:`` file (already resolved): its display name, its sha256 (checked against
    ``expected_sha256`` before anything reads the file) and its required sidecar.

    Raises:
        WeightsMismatchError: The file's sha256 is not the expected one.
        WeightsUnavailableError: The sidecar is missing.
        DataError: The sidecar is malformed.
    """
    display = f"{prefix}:{path}"
    sha256 = check_expected_sha256(path, expected_sha256, display)
    side = read_sidecar(
        path,
        required=True,
        missing=(
            f"{display} has no sidecar spec {sidecar_path(path)}. Write one with its preprocessing, for example "
            '{"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]} (docs/tensorflow.md).'
        ),
    )
    return display, sha256, side


def sized_overrides(side: dict, spatial, display: str) -> dict:
    """:func:`preprocessing_overrides`, with the input size read from a model whose input side is fixed.

    ``spatial`` is the model input's (height, width), an int where fixed. A fixed square input gives
    ``input_size`` when the sidecar has none.

    Raises:
        DataError: The model's fixed input size and the sidecar's ``input_size`` differ.
    """
    overrides = preprocessing_overrides(side)
    fixed = [d for d in spatial if isinstance(d, int)]
    if "input_size" not in overrides and len(fixed) == 2 and fixed[0] == fixed[1]:
        overrides["input_size"] = fixed[0]
    if fixed and any(d != overrides.get("input_size", 224) for d in fixed):
        raise DataError(f"{display} takes {spatial[0]}x{spatial[1]} inputs, but its sidecar says input_size {overrides.get('input_size', 224)}; make them agree.")
    return overrides


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise WeightsUnavailableError(f"file:{path} is not a readable safetensors file ({exc}). Re-save it with safetensors.torch.save_file.") from None
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(
            f"file:{path} was refused: it holds pickled objects beyond plain tensors, which torch.load(weights_only=True) "
            f"does not run ({first[:160]}). Save a state dict (torch.save(model.state_dict(), path)) or a .safetensors file."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsUnavailableError(f"file:{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc}). Save a state dict or a .safetensors file.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"file:{path} does not hold a state dict (found {type(state).__name__}).")
    return state


def _build_arch(arch: str, num_classes: int | None) -> Backbone:
    """Build a randomly initialised architecture from a ``tv:`` or ``timm:`` name (no weights read)."""
    from headstart.backbones import timm_adapter, torchvision_adapter

    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
    if arch.startswith("tv:"):
        import torchvision

        return torchvision.models.get_model(arch[3:].split(".", 1)[0], weights=None, **kwargs), torchvision_adapter
    if arch.startswith("timm:"):
        import timm

        return timm.create_model(arch[5:].split(".", 1)[0], pretrained=False, **kwargs), timm_adapter
    raise UnknownBackboneError(f"Sidecar arch {arch!r} must start with tv: or timm:, for example tv:mobilenet_v2.")


def load(name: str, pretrained: bool = True, *, allow_torchscript: bool = False, expected_sha256: str | None = None) -> Backbone:
    """Load ``file:PATH``; ``pretrained=False`` keeps the architecture and skips the weights.

    Args:
        name: ``file:PATH``.
        pretrained: False builds the sidecar's architecture without reading the weights (a
            TorchScript file is its own architecture, and is always read).
        allow_torchscript: Load a TorchScript file (``torch.jit.load`` runs the code it holds).
        expected_sha256: The sha256 the file must have; checked before the file is read.

    Raises:
        WeightsUnavailableError: The file or its sidecar is missing or unreadable, or it is
            TorchScript and ``allow_torchscript`` is off.
        WeightsMismatchError: The file's sha256 is not ``expected_sha256``.
    """
    path = Path(name.removeprefix("file:")).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"file:{path} does not exist. Give the path of a .safetensors, .pt or .pth file.")
    path = path.resolve()
    reads_weights = pretrained or _is_torchscript(path)
    sha256 = check_expected_sha256(path, expected_sha256 if reads_weights else None, f"file:{path}")
    if _is_torchscript(path):
        if not allow_torchscript:
            raise WeightsUnavailableError(
                f"file:{path} is a TorchScript file, and loading TorchScript runs the code it holds, so headstart does not load it "
                "unless asked. If you trust where it came from, pass --allow-torchscript (Python: allow_torchscript=True); "
                "or save a state dict or .safetensors file with a sidecar spec instead."
            )
        side = read_sidecar(path, required=False)
        model = torch.jit.load(str(path), map_location="cpu").eval()
        spec = BackboneSpec(
            name=f"file:{path}",
            source="file",
            arch=side.get("arch", "torchscript"),
            weights_id=path.name,
            sha256=sha256,
            feature_dim=int(side.get("feature_dim", 0)),
            **preprocessing_overrides(side),
        )
        return Backbone(model, spec, None)

    side = read_sidecar(path, required=True)
    if "arch" not in side:
        raise WeightsUnavailableError(f"Sidecar {sidecar_path(path)} has no 'arch' key; add one such as \"tv:mobilenet_v2\".")
    model, adapter = _build_arch(side["arch"], side.get("num_classes"))
    if pretrained:
        state = _load_state(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"file:{path} does not fit {side['arch']}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). Check 'arch' and 'num_classes' in "
                f"{sidecar_path(path)}."
            )
    arch_name = side["arch"].split(":", 1)[1].split(".", 1)[0]
    backbone = adapter.wrap_model(
        model,
        name=f"file:{path}",
        arch=arch_name,
        weights_id=path.name if pretrained else "random",
        sha256=sha256 if pretrained else "random-init:unseeded",
    )
    overrides = preprocessing_overrides(side)
    backbone.spec = dataclasses.replace(
        backbone.spec, source="file", extra={"arch_source": side["arch"].split(":", 1)[0]}, **overrides
    )
    return backbone


def save_backbone(backbone: Backbone, path: str | Path) -> Path:
    """Save a backbone as ``.safetensors`` plus its sidecar spec, loadable as ``file:PATH``.

    Args:
        backbone: A ``tv:`` or ``timm:`` backbone (for example after fine-tuning).
        path: Target path; the suffix becomes ``.safetensors``.

    Returns:
        The path of the weight file.
    """
    from safetensors.torch import save_file

    spec = backbone.spec
    arch_source = spec.extra.get("arch_source", spec.source)
    if arch_source not in ("tv", "timm"):
        raise UnknownBackboneError(f"save_backbone supports tv: and timm: architectures, not {spec.source}:.")
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in backbone.model.state_dict().items()}
    if backbone.source_head is not None and spec.head_patterns:
        head_name = spec.head_patterns[0].removesuffix(".*")
        state.update({f"{head_name}.{k}": v.detach().contiguous() for k, v in backbone.source_head.state_dict().items()})
    save_file(state, str(path))
    side = {"arch": f"{arch_source}:{spec.arch}", "num_classes": spec.num_source_classes or None}
    side.update(spec.preprocessing())
    sidecar_path(path).write_text(json.dumps(side, indent=2))
    return path
