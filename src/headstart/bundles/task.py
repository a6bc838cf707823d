"""Detection and segmentation bundles: save, load, predict, and draw the predictions.

::

    bundle/
      bundle.json        kind and task ("detection" or "segmentation"), backbone spec (with the pretrained
                         weights' sha256), network config, classes, metrics, manifest
      model.safetensors  the whole trained network (trunk, pyramid, heads); its sha256 is in bundle.json

Loading rebuilds the architecture from the spec (no pretrained weights needed) and loads
``model.safetensors`` after checking its sha256. :meth:`TaskBundle.predict_batch` returns one
:class:`TaskPrediction` per input, with the fields ``headstart predict`` prints for classification
(``input``, ``label``, ``top_k``, ``error``) plus the boxes or the mask; :meth:`TaskBundle.write_outputs`
writes ``predictions.json`` and, per image, the image with its boxes drawn (detection) or the mask
PNG and an overlay (segmentation); the drawing is :mod:`headstart.bundles.draw`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.backbones import BackboneSpec
from headstart.backbones.registry import allows_remote_code
from headstart.bundles.base import (
    BUNDLE_FORMAT,
    DAMAGED,
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
from headstart.bundles.draw import draw_boxes, overlay, read_image, unique_stem
from headstart.data.scenes.scene import IGNORE_INDEX
from headstart.errors import DataError, WeightsMismatchError

TASKS = ("detection", "segmentation")
# The fields every detection/segmentation bundle.json holds (every version has written them), and their types.
REQUIRED = {"backbone": dict, "model": dict, "model_sha256": str, "classes": list}
OPTIONAL = {"score_threshold": (int, float), "ignore_index": int, "metrics": dict, "manifest": dict, "modality": str}


@dataclass
class TaskPrediction:
    """One input's predictions.

    Attributes:
        input: The input's name (path).
        label: Detection: the class of the most confident box; segmentation: the non-background
            class covering most pixels. None when nothing was found or the input failed.
        top_k: Detection: ``(class, score)`` of the most confident boxes; segmentation:
            ``(class, share of pixels)`` of the largest classes.
        error: Why the input could not be read, or None.
        boxes: Detection: ``{"label", "score", "box": [x0, y0, x1, y1]}`` per box above the threshold.
        mask: Segmentation: the class-index mask (H, W) (not in the JSON; written as PNG).
        files: Files written for this input by :meth:`TaskBundle.write_outputs`.
        image: The input's pixels (uint8 RGB), kept for drawing; not in the JSON.
    """

    input: str
    label: str | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    boxes: list[dict[str, Any]] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    files: list[str] = field(default_factory=list)
    image: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "input": self.input,
            "label": self.label,
            "top_k": [{"label": label, "p": round(p, 6)} for label, p in self.top_k],
            "error": self.error,
        }
        if self.boxes is not None:
            data["boxes"] = self.boxes
        if self.mask is not None:
            data["mask_shape"] = list(self.mask.shape)
        if self.files:
            data["files"] = list(self.files)
        return data


@register_kind(*TASKS)
class TaskBundle:
    """A trained detector or segmenter with everything needed to predict.

    Args:
        task: ``detection`` or ``segmentation``.
        spec: The backbone's spec (name and pretrained weights' sha256).
        config: The network's settings (``model.config``).
        classes: Object classes (detection) or mask classes (segmentation, background first).
        model: The trained :class:`TaskModel`, or None to build it from the bundle folder on first use.
        metrics: Evaluation results to keep with the model.
        manifest: Provenance: seed, data, settings, times.
        score_threshold: Detection: boxes below this score are not reported.
        ignore_index: Segmentation: the mask value of unscored pixels.
        trust_remote_code: Let an ``hf:``/``st:`` backbone folder run the code it ships when the
            network is built (``--trust-remote-code``).
        allow_torchscript: Let a ``file:`` TorchScript backbone load when the network is built
            (``--allow-torchscript``; it runs the code it holds).
    """

    def __init__(
        self,
        task: str,
        spec: BackboneSpec,
        config: dict[str, Any],
        classes: list[str],
        model=None,
        metrics: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
        score_threshold: float = 0.5,
        ignore_index: int = IGNORE_INDEX,
        trust_remote_code: bool = False,
        allow_torchscript: bool = False,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {', '.join(TASKS)}.")
        self.task = task
        self.spec = spec
        self.config = dict(config)
        self.classes = list(classes)
        self._model = model
        self.metrics = metrics or {}
        self.manifest = manifest or {}
        self.score_threshold = score_threshold
        self.ignore_index = ignore_index
        self.trust_remote_code = trust_remote_code
        self.allow_torchscript = allow_torchscript
        self.path: Path | None = None
        self._model_sha: str | None = None

    # ----- saving and loading -----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bundle folder (files replaced atomically) and return its path."""
        from safetensors.torch import save as save_tensors

        from headstart.backbones.packaged import sha256_file
        from headstart.versions import package_versions
        from headstart.io import atomic_write_bytes, atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.network.state_dict().items()}
        atomic_write_bytes(path / "model.safetensors", save_tensors(state))
        document = {
            "format": BUNDLE_FORMAT,
            "kind": self.task,
            "task": self.task,
            "modality": "image",
            "backbone": self.spec.to_dict(),
            "model": self.config,
            "model_sha256": sha256_file(path / "model.safetensors"),
            "classes": self.classes,
            "score_threshold": self.score_threshold,
            "ignore_index": self.ignore_index,
            "metrics": self.metrics,
            "manifest": {"versions": package_versions(), "saved": time.time(), **self.manifest},
        }
        atomic_write_json(path / "bundle.json", document)
        self.path = path
        return path

    @property
    def kind(self) -> str:
        """The bundle's kind in bundle.json: its task."""
        return self.task

    @classmethod
    def load(
        cls, path: str | Path, document: dict[str, Any] | None = None, *, trust_remote_code: bool = False, allow_torchscript: bool = False
    ) -> TaskBundle:
        """Load a bundle folder; the network is built on first use.

        Args:
            path: The bundle folder, or a run's ``--out`` folder (its ``bundle/`` is loaded).
            document: Its parsed ``bundle.json``, when the caller has read it already.
            trust_remote_code: Let an ``hf:``/``st:`` backbone folder run the code it ships.
            allow_torchscript: Let a ``file:`` TorchScript backbone load (it runs the code it holds).

        Raises:
            DataError: Not a detection or segmentation bundle, from a newer headstart, or damaged
                (a field of bundle.json missing or of the wrong type).
        """
        if document is None:
            path, _ = locate_bundle(path)
            document = read_document(path, "Give the --out folder's bundle/ of a detect or segment run.")
        path = Path(path)
        kind = bundle_kind(document)
        if kind not in TASKS:
            raise DataError(f"{path} is a {kind} bundle, not a detection or segmentation one.")
        check_format(document, path)
        require_fields(document, path, REQUIRED, OPTIONAL)
        try:
            spec = BackboneSpec.from_dict(document["backbone"])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path / 'bundle.json'}: the 'backbone' field is not a backbone spec ({one_line(exc)}); {DAMAGED}.") from None
        bundle = cls(
            task=kind,
            spec=spec,
            config=document["model"],
            classes=document["classes"],
            metrics=document.get("metrics", {}),
            manifest=document.get("manifest", {}),
            score_threshold=float(document.get("score_threshold", 0.5)),
            ignore_index=int(document.get("ignore_index", IGNORE_INDEX)),
            trust_remote_code=trust_remote_code,
            allow_torchscript=allow_torchscript,
        )
        bundle.path = path
        bundle._model_sha = document["model_sha256"]
        return bundle

    @property
    def model(self):
        """The network, rebuilt from the spec and ``model.safetensors`` on first use (eval mode)."""
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self):
        from safetensors.torch import load_file

        from headstart.backbones import load_backbone
        from headstart.backbones.packaged import sha256_file

        weights = self.path / "model.safetensors"
        if not weights.is_file():
            raise DataError(f"{self.path} has no model.safetensors; the bundle is incomplete.")
        actual = sha256_file(weights)
        if actual != self._model_sha:
            raise WeightsMismatchError(f"{weights} has sha256 {actual}, not the recorded {self._model_sha}; {DAMAGED}.")
        trust = self.trust_remote_code and allows_remote_code(self.spec.name)
        # The architecture only: no pretrained weights are read (a TorchScript file is, after its sha256 is checked).
        backbone = load_backbone(
            self.spec.name, pretrained=False, trust_remote_code=trust, allow_torchscript=self.allow_torchscript, expected_sha256=self.spec.sha256,
        )
        try:
            model = build_model(self.task, backbone, self.config)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{self.path / 'bundle.json'}: the 'model' field does not describe a {self.task} network ({one_line(exc)}); {DAMAGED}.") from None
        try:
            model.network.load_state_dict(load_file(str(weights)))
        except Exception as exc:  # noqa: BLE001 - safetensors and load_state_dict raise many types for a bad file
            raise damaged_file(weights, exc) from None
        return model.eval()

    # ----- prediction -------------------------------------------------------------------------

    def predict_images(self, images: list[np.ndarray], device: str | Any = "cpu") -> list:
        """Raw predictions for uint8 RGB arrays: detection dicts (``boxes``, ``scores``, ``labels``) or ``(mask, confidence)`` pairs.

        ``device`` is where the inputs go: the device the model is on.
        """
        if self.task == "detection":
            from headstart.models.detection import detect

            return detect(self.model, images, score_threshold=self.score_threshold, device=device)
        from headstart.models.segmentation import segment

        return segment(self.model, images, device=device)

    def predict_batch(self, inputs: list, top_k: int = 3, device: str | Any = "cpu") -> list[TaskPrediction]:
        """Per-input predictions for image paths or arrays; an input that fails gets its error, the others still predict."""
        loaded, positions, results = [], [], [None] * len(inputs)
        for position, item in enumerate(inputs):
            try:
                loaded.append(read_image(item))
                positions.append(position)
            except (OSError, ValueError, SyntaxError) as exc:
                results[position] = TaskPrediction(describe(item), None, [], f"{type(exc).__name__}: {exc}")
        raw = self.predict_images(loaded, device=device) if loaded else []
        for position, image, output in zip(positions, loaded, raw):
            name = describe(inputs[position])
            results[position] = self._detection(name, output, top_k) if self.task == "detection" else self._segmentation(name, output, top_k)
            results[position].image = image
        return results  # type: ignore[return-value]

    def _detection(self, name: str, output: dict, top_k: int) -> TaskPrediction:
        order = np.argsort(-output["scores"])
        boxes = [
            {"label": self.classes[int(output["labels"][i])], "score": round(float(output["scores"][i]), 6), "box": [round(float(v), 2) for v in output["boxes"][i]]}
            for i in order
        ]
        ranked = [(b["label"], b["score"]) for b in boxes[: max(1, top_k)]]
        return TaskPrediction(name, boxes[0]["label"] if boxes else None, ranked, None, boxes=boxes)

    def _segmentation(self, name: str, output: tuple, top_k: int) -> TaskPrediction:
        mask, _ = output
        counts = np.bincount(mask.reshape(-1), minlength=len(self.classes))[: len(self.classes)]
        shares = counts / max(1, mask.size)
        order = [i for i in np.argsort(-shares) if shares[i] > 0]
        ranked = [(self.classes[i], float(shares[i])) for i in order[: max(1, top_k)]]
        objects = [i for i in order if i != 0]
        return TaskPrediction(name, self.classes[objects[0]] if objects else None, ranked, None, mask=mask)

    def write_outputs(self, results: list[TaskPrediction], out: str | Path) -> Path:
        """Write ``predictions.json`` and the drawn images (boxes) or masks and overlays to ``out``."""
        from headstart.io import atomic_write_json
        from headstart.data.scenes.coco import class_palette, save_palette_png

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        palette = class_palette(len(self.classes), self.ignore_index)
        used: set[str] = set()
        for result in results:
            if result.error is not None:
                continue
            stem = unique_stem(result.input, used)
            image = result.image if result.image is not None else read_image(result.input)
            if self.task == "detection":
                path = out / f"{stem}.boxes.png"
                draw_boxes(image, result.boxes or [], self.classes, palette).save(path)
                result.files = [str(path)]
            else:
                mask_path = out / f"{stem}.mask.png"
                overlay_path = out / f"{stem}.overlay.png"
                save_palette_png(result.mask, mask_path, palette)
                overlay(image, result.mask, palette).save(overlay_path)
                result.files = [str(mask_path), str(overlay_path)]
        document = {
            "task": self.task,
            "bundle": str(self.path) if self.path else None,
            "classes": self.classes,
            "score_threshold": self.score_threshold if self.task == "detection" else None,
            "predictions": [r.to_dict() for r in results],
        }
        atomic_write_json(out / "predictions.json", document)
        return out


def build_model(task: str, backbone, config: dict[str, Any]):
    """Rebuild a task network from its saved config."""
    if task == "detection":
        from headstart.models.detection import build_detector

        return build_detector(backbone, int(config["num_classes"]), arch=config["arch"], image_size=int(config["image_size"]),
                              fpn_channels=int(config["fpn_channels"]), strides=tuple(config["strides"]))
    from headstart.models.segmentation import build_segmenter

    return build_segmenter(backbone, int(config["num_classes"]), head=config["head"], image_size=int(config["image_size"]),
                           channels=int(config["channels"]), strides=tuple(config["strides"]))
