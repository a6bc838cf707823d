"""Classification bundles: a trained model saved as a plain directory, with no pickle anywhere.

::

    bundle/
      bundle.json          kind ("classification"), backbone spec (with sha256), layer, pooling,
                           classes, head metadata, calibration (temperature and log prior shift;
                           a bundle without it predicts uncalibrated), metrics and a manifest
                           (package versions, seed, data fingerprint, store key)
      head.safetensors     the head's arrays
      backbone.safetensors only for fine-tuned bundles: the backbone's own weights
      adapter.safetensors  only for LoRA fine-tuned bundles: the adapter weights alone (the backbone's
                           are the original ones, sha256-checked); ``merge_adapters()`` folds them in

``Bundle.load(path).predict(inputs)`` takes image paths, PIL images or arrays, or texts for a
bundle trained on a text backbone. :func:`headstart.bundles.load_bundle` loads any kind of bundle.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart.backbones import Backbone, BackboneSpec, load_backbone
from headstart.backbones.packaged import sha256_file
from headstart.backbones.registry import allows_remote_code
from headstart.bundles.base import (
    BUNDLE_FORMAT,
    DAMAGED,
    bundle_class,
    bundle_kind,
    check_format,
    damaged_file,
    describe,
    locate_bundle,
    one_line,
    read_document,
    register_kind,
    require_fields,
)
from headstart.errors import DataError, WeightsMismatchError
from headstart.evaluate.calibration import Calibration
from headstart.io import atomic_write_bytes, atomic_write_json
from headstart.versions import package_versions

KIND = "classification"
# The fields every classification bundle.json holds (every version has written them), and their types.
REQUIRED = {"backbone": dict, "classes": list, "head": dict, "finetuned_backbone_sha256": (str, type(None))}
OPTIONAL = {"adapter": (dict, type(None)), "layer": str, "pool": str, "metrics": dict, "manifest": dict, "modality": str,
            "calibration": (dict, type(None))}


@dataclass
class Prediction:
    """One input's prediction: its label and top-k probabilities, or the reason it failed."""

    input: str
    label: str | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "label": self.label, "top_k": [{"label": l, "p": round(p, 6)} for l, p in self.top_k], "error": self.error}


@register_kind(KIND)
class Bundle:
    """A backbone reference plus a fitted head: everything needed to predict on new inputs.

    Args:
        spec: The backbone's spec, with the input size used for training.
        head: A fitted head (see :mod:`headstart.heads`).
        classes: Class names, in the head's label order.
        layer: Layer the head was trained on.
        pool: Pooling used.
        metrics: Evaluation results to keep with the model.
        manifest: Provenance: seed, data fingerprint, store key, command line, wall times.
        backbone: A loaded backbone, to reuse instead of loading it again; fine-tuned bundles save
            its weights.
        finetuned: Whether the backbone's weights differ from ``spec`` (saved in the bundle).
        trust_remote_code: Let an ``hf:``/``st:`` backbone folder run the code it ships when the
            backbone loads (``--trust-remote-code``).
        allow_torchscript: Let a ``file:`` TorchScript backbone load when the backbone loads
            (``--allow-torchscript``; it runs the code it holds).
        calibration: The temperature and class-prior correction applied to the head's probabilities
            (:class:`~headstart.evaluate.calibration.Calibration`); None predicts with the head's own.
    """

    kind = KIND

    def __init__(
        self,
        spec: BackboneSpec,
        head: Any,
        classes: list[str],
        layer: str = "pooled",
        pool: str = "avg",
        metrics: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
        backbone: Backbone | None = None,
        finetuned: bool = False,
        trust_remote_code: bool = False,
        allow_torchscript: bool = False,
        calibration: Calibration | None = None,
    ) -> None:
        self.spec = spec
        self.head = head
        self.classes = list(classes)
        self.layer = layer
        self.pool = pool
        self.metrics = metrics or {}
        self.manifest = manifest or {}
        self._backbone = backbone
        self.finetuned = finetuned
        self.trust_remote_code = trust_remote_code
        self.allow_torchscript = allow_torchscript
        self.calibration = calibration or Calibration()
        self.path: Path | None = None
        self._finetuned_sha: str | None = None
        self._adapter: dict[str, Any] | None = None

    # ----- saving and loading -----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bundle directory (files replaced atomically) and return its path."""
        from safetensors.numpy import save as save_arrays

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays, head_meta = self.head.to_state()
        atomic_write_bytes(path / "head.safetensors", save_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
        backbone_sha = None
        adapter = None
        settings = self._adapter_settings()
        if settings is not None:
            from safetensors.torch import save as save_tensors

            from headstart.backbones.lora import adapter_state

            atomic_write_bytes(path / "adapter.safetensors", save_tensors(adapter_state(self.backbone.model)))
            adapter = {**settings, "sha256": sha256_file(path / "adapter.safetensors")}
        if self.finetuned:
            from safetensors.torch import save as save_tensors

            state = {k: v.detach().cpu().contiguous() for k, v in self.backbone.model.state_dict().items()}
            atomic_write_bytes(path / "backbone.safetensors", save_tensors(state))
            backbone_sha = sha256_file(path / "backbone.safetensors")
        document = {
            "format": BUNDLE_FORMAT,
            "kind": KIND,
            "task": KIND,
            "modality": self.spec.modality,
            "backbone": self.spec.to_dict(),
            "finetuned_backbone_sha256": backbone_sha,
            "adapter": adapter,
            "layer": self.layer,
            "pool": self.pool,
            "classes": self.classes,
            "head": head_meta,
            "calibration": self.calibration.to_dict(),
            "metrics": self.metrics,
            "manifest": {"versions": package_versions(), "saved": time.time(), **self.manifest},
        }
        atomic_write_json(path / "bundle.json", document)
        self.path = path
        return path

    @classmethod
    def load(
        cls, path: str | Path, document: dict[str, Any] | None = None, *, trust_remote_code: bool = False, allow_torchscript: bool = False
    ) -> Bundle:
        """Load a bundle directory; the backbone itself loads on first use.

        A detection or segmentation bundle (its ``kind`` in bundle.json) loads as the class that kind
        names, as with :func:`headstart.bundles.load_bundle`: a :class:`headstart.bundles.TaskBundle`,
        which predicts with the same ``predict_batch`` contract.

        Args:
            path: The bundle folder, or a run's ``--out`` folder (its ``bundle/`` is loaded).
            document: Its parsed ``bundle.json``, when the caller has read it already.
            trust_remote_code: Let an ``hf:``/``st:`` backbone folder run the code it ships.
            allow_torchscript: Let a ``file:`` TorchScript backbone load (it runs the code it holds).

        Raises:
            DataError: The folder is not a bundle, or it is damaged: a field of bundle.json missing or
                of the wrong type, ``head.safetensors`` missing or unreadable.
        """
        from safetensors.numpy import load_file

        from headstart.heads import head_from_state

        if document is None:
            path, _ = locate_bundle(path)
            document = read_document(path, "Give the --out folder of a probe or finetune run.")
        path = Path(path)
        kind = bundle_kind(document)
        if kind != KIND:
            # Detection and segmentation bundles: same folder layout idea, same predict_batch contract.
            return bundle_class(kind, path).load(path, document, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript)
        check_format(document, path)
        require_fields(document, path, REQUIRED, OPTIONAL)
        if not all(isinstance(c, str) for c in document["classes"]):
            raise DataError(f"{path / 'bundle.json'}: the 'classes' field holds something other than class names; {DAMAGED}.")
        adapter = document.get("adapter")
        if adapter is not None and not isinstance(adapter.get("sha256"), str):
            raise DataError(f"{path / 'bundle.json'}: the 'adapter' field has no 'sha256' of adapter.safetensors; {DAMAGED}.")
        try:
            spec = BackboneSpec.from_dict(document["backbone"])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path / 'bundle.json'}: the 'backbone' field is not a backbone spec ({one_line(exc)}); {DAMAGED}.") from None
        head_file = path / "head.safetensors"
        try:
            arrays = load_file(str(head_file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError, OSError and more for a bad file
            raise damaged_file(head_file, exc) from None
        try:
            head = head_from_state(arrays, document["head"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{head_file} does not fit the 'head' field of bundle.json ({one_line(exc)}); {DAMAGED}.") from None
        calibration = read_calibration(document, path, head)
        bundle = cls(
            spec=spec,
            head=head,
            classes=document["classes"],
            layer=document.get("layer", "pooled"),
            pool=document.get("pool", "avg"),
            metrics=document.get("metrics", {}),
            manifest=document.get("manifest", {}),
            finetuned=bool(document["finetuned_backbone_sha256"]),
            trust_remote_code=trust_remote_code,
            allow_torchscript=allow_torchscript,
            calibration=calibration,
        )
        bundle.path = path
        bundle._finetuned_sha = document["finetuned_backbone_sha256"]
        bundle._adapter = adapter
        return bundle

    def _adapter_settings(self) -> dict[str, Any] | None:
        """The LoRA settings of the backbone's adapters, or None (without loading the backbone)."""
        if self._backbone is None:
            return self._adapter
        from headstart.backbones.lora import lora_settings

        return lora_settings(self._backbone.model)

    @property
    def has_adapters(self) -> bool:
        """Whether the backbone carries LoRA adapters (saved apart from its weights)."""
        return self._adapter_settings() is not None

    @property
    def finetuned_sha256(self) -> str | None:
        """The sha256 of ``backbone.safetensors`` for a fine-tuned bundle loaded from disk, else None."""
        return self._finetuned_sha if self.finetuned else None

    def merge_adapters(self) -> int:
        """Fold LoRA adapters into the backbone's weights (for export); return how many layers were merged.

        The bundle then holds a plain fine-tuned backbone: saving it writes ``backbone.safetensors``
        and no ``adapter.safetensors``.
        """
        from headstart.backbones.lora import merge_lora

        merged = merge_lora(self.backbone.model)
        if merged:
            self.finetuned = True
        self._adapter = None
        return merged

    @property
    def backbone(self) -> Backbone:
        """The backbone, loaded (and checked against the recorded sha256) on first use."""
        if self._backbone is None:
            self._backbone = self._load_backbone()
        return self._backbone

    def _load_backbone(self) -> Backbone:
        recorded = self.spec
        name = recorded.name
        try:
            # The recorded sha256 is checked against the weight file before anything reads it.
            backbone = load_backbone(
                name, trust_remote_code=self.trust_remote_code and allows_remote_code(name), allow_torchscript=self.allow_torchscript,
                expected_sha256=recorded.sha256,
            )
        except WeightsMismatchError as exc:
            raise WeightsMismatchError(f"The bundle {self.path} was trained on {name} with weights sha256 {recorded.sha256}: {exc}") from None
        if backbone.spec.sha256 != recorded.sha256:
            raise WeightsMismatchError(
                f"The bundle {self.path} was trained on {name} with weights sha256 {recorded.sha256}, "
                f"but the weights found now have sha256 {backbone.spec.sha256}. Install the original weights, "
                "or retrain the head on these."
            )
        adapter = self._adapter
        if adapter:
            from headstart.backbones.lora import load_adapters

            load_adapters(backbone.model, adapter, self._read_weights("adapter.safetensors", adapter["sha256"]))
        if self.finetuned:
            state = self._read_weights("backbone.safetensors", self._finetuned_sha)
            try:
                backbone.model.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError) as exc:
                raise DataError(f"{self.path / 'backbone.safetensors'} does not fit {name} ({one_line(exc)}); {DAMAGED}.") from None
        backbone.spec = dataclasses.replace(backbone.spec, input_size=recorded.input_size)
        return backbone.eval()

    def _read_weights(self, filename: str, recorded: str) -> dict[str, torch.Tensor]:
        """A safetensors file of the bundle, read only after its sha256 matched the recorded one."""
        from safetensors.torch import load_file

        weights = self.path / filename
        try:
            actual = sha256_file(weights)
        except OSError as exc:
            raise damaged_file(weights, exc) from None
        if actual != recorded:
            raise WeightsMismatchError(f"{weights} has sha256 {actual}, not the recorded {recorded}; {DAMAGED}.")
        try:
            return load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError, OSError and more for a bad file
            raise damaged_file(weights, exc) from None

    # ----- prediction -------------------------------------------------------------------------

    def features(self, inputs: list) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Features of the inputs that decode, their positions, and the failures with reasons.

        Image bundles take paths, PIL images or arrays; text bundles take strings (an empty text
        fails with its reason).
        """
        from headstart.data.transforms import to_tensor_batch

        backbone = self.backbone
        if self.spec.modality == "text":
            from headstart.backbones.text_adapter import encode_texts

            return encode_texts(backbone, list(inputs), self.layer, self.pool)
        batch, ok, failed = to_tensor_batch(list(inputs), backbone.spec)
        rows = []
        with torch.inference_mode():
            for start in range(0, len(batch), 64):
                chunk = batch[start : start + 64].contiguous(memory_format=torch.channels_last)
                rows.append(backbone.features(chunk, self.layer, self.pool).float().numpy())
        width = self.head.n_features_in_
        X = np.concatenate(rows) if rows else np.zeros((0, width), np.float32)
        return X, ok, failed

    def predict_proba(self, inputs: list) -> np.ndarray:
        """Class probabilities (N, C) for image paths, PIL images or arrays (or texts), calibrated.

        The head's probabilities go through the bundle's calibration: ``softmax(scores / T + shift)``,
        a fitted temperature and the class-prior correction (identity for a bundle without them).

        Raises:
            DataError: An input could not be read (the message names each one).
        """
        X, ok, failed = self.features(inputs)
        if failed:
            details = "; ".join(f"{describe(inputs[i])}: {reason}" for i, reason in failed)
            raise DataError(f"{len(failed)} input(s) could not be read: {details}")
        return self.calibration.apply(self.head.predict_proba(X))

    def predict(self, inputs: list) -> list[str]:
        """Predicted class names for the inputs."""
        proba = self.predict_proba(inputs)
        names = self.column_names()
        return [names[i] for i in np.argmax(proba, axis=1)]

    def column_names(self) -> list[str]:
        """Class names of the head's probability columns (classes absent from training have none)."""
        return [self.classes[int(c)] for c in self.head.classes_]

    def predict_batch(self, inputs: list, top_k: int = 3) -> list[Prediction]:
        """Per-input predictions; an input that fails gets its error, and the others still predict."""
        X, ok, failed = self.features(inputs)
        proba = self.calibration.apply(self.head.predict_proba(X)) if len(X) else X
        return ranked_predictions(inputs, proba, ok, failed, self.column_names(), top_k)


def ranked_predictions(inputs: list, proba: np.ndarray, ok: list[int], failed: list[tuple[int, str]], names: list[str], top_k: int) -> list[Prediction]:
    """One :class:`Prediction` per input: the top-k classes of its row of ``proba`` (rows in the order of the
    positions ``ok``), or the reason it failed (``failed``: ``(position, reason)``)."""
    results: list[Prediction | None] = [None] * len(inputs)
    k = max(1, min(top_k, len(names)))
    for row, position in enumerate(ok):
        order = np.argsort(-proba[row])[:k]
        ranked = [(names[i], float(proba[row, i])) for i in order]
        results[position] = Prediction(describe(inputs[position]), ranked[0][0], ranked)
    for position, reason in failed:
        results[position] = Prediction(describe(inputs[position]), None, [], reason)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def read_calibration(document: dict[str, Any], path: Path, head: Any) -> Calibration:
    """The ``calibration`` field of a bundle.json (absent in bundles saved before it existed: ``T = 1``, no shift).

    Raises:
        DataError: The field is malformed, or its prior shift does not have one entry per probability column.
    """
    try:
        calibration = Calibration.from_dict(document.get("calibration"))
        columns = len(getattr(head, "classes_", ()))
        if calibration.has_shift and len(calibration.log_prior_shift) != columns:
            raise ValueError(f"log_prior_shift has {len(calibration.log_prior_shift)} entries for {columns} classes")
    except (TypeError, ValueError) as exc:
        raise DataError(f"{Path(path) / 'bundle.json'}: the 'calibration' field is not valid ({one_line(exc)}); {DAMAGED}.") from None
    return calibration


__all__ = ["Bundle", "Prediction", "ranked_predictions", "read_calibration"]
