"""The frozen description of a backbone: where its weights come from and how to feed it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to reproduce a backbone's features, saved with every store entry and bundle.

    Attributes:
        name: The full prefixed name, for example ``tv:mobilenet_v2.IMAGENET1K_V1``.
        source: One of ``tv``, ``timm``, ``hf``, ``st``, ``file``, ``onnx``, ``keras``.
        arch: The architecture name inside that source, for example ``mobilenet_v2``.
        weights_id: The weights' identifier (``IMAGENET1K_V1``, a timm tag, a file name) or
            ``random`` for a seeded random initialisation.
        sha256: The sha256 of the weight file, or ``random-init:seed<N>`` for random weights.
        modality: ``image`` or ``text``.
        input_size: Square input side in pixels.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        interpolation: ``bilinear`` or ``bicubic``.
        crop_pct: Resize to ``input_size / crop_pct``, then centre-crop ``input_size``.
        feature_dim: Width of the pooled penultimate features.
        layers: Names of the layers that features can be taken from, shallow to deep.
        default_layer: The layer taken when none is named (the pooled penultimate one).
        param_groups: Ordered ``(group name, fnmatch patterns)`` pairs, input side first, used by
            fine-tuning for stage freezing and layer-wise learning rates.
        head_patterns: Patterns that match the source-task classifier's parameters.
        num_source_classes: Number of source-task classes, or 0 when there is no classifier.
        extra: Source-specific settings (JSON-able).
    """

    name: str
    source: str
    arch: str
    weights_id: str
    sha256: str
    modality: str = "image"
    input_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    feature_dim: int = 0
    layers: tuple[str, ...] = ()
    default_layer: str = "pooled"
    param_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    head_patterns: tuple[str, ...] = ()
    num_source_classes: int = 0
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    @property
    def pretrained(self) -> bool:
        """Whether the weights are pretrained (not a random initialisation)."""
        return self.weights_id != "random"

    def with_input_size(self, size: int | None) -> BackboneSpec:
        """Return a copy with another input size, or this spec when ``size`` is None."""
        if size is None or size == self.input_size:
            return self
        return dataclasses.replace(self, input_size=int(size))

    def preprocessing(self) -> dict[str, Any]:
        """The settings that change what a backbone sees (part of every store key).

        For images: size, normalisation, interpolation and crop (and, for ``onnx:`` and ``keras:``
        models, ``extra["model_io"]``: the input layout and the output taken as features). For text: the tokenizer, max
        length, pooling and normalisation recorded in ``extra``.
        """
        if self.modality == "text":
            keys = ("tokenizer_sha256", "max_length", "lowercase", "pooling", "normalize")
            return {"text": {key: self.extra.get(key) for key in keys}}
        settings = {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "small_images": "upscale-without-crop",
        }
        if self.extra.get("model_io"):  # onnx: and keras: sources: input layout and which output is the features
            settings["model_io"] = dict(self.extra["model_io"])
        return settings

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal spec."""
        data = dataclasses.asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["layers"] = list(self.layers)
        data["head_patterns"] = list(self.head_patterns)
        data["param_groups"] = [[name, list(patterns)] for name, patterns in self.param_groups]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        """Rebuild a spec from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown BackboneSpec fields {unknown}; expected a subset of {sorted(known)}.")
        values = dict(data)
        for key in ("mean", "std", "layers", "head_patterns"):
            if key in values:
                values[key] = tuple(values[key])
        if "param_groups" in values:
            values["param_groups"] = tuple((name, tuple(patterns)) for name, patterns in values["param_groups"])
        return cls(**values)

    def to_json(self) -> str:
        """The spec as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
