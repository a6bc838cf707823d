"""Run an exported ``.onnx`` model (``headstart export``) with onnxruntime, as ``headstart predict`` runs a bundle.

:class:`OnnxModel` reads the metadata that :func:`~headstart.bundles.export.export_bundle` wrote
into the file (classes, input size, resizing, tokenizer settings), preprocesses inputs exactly as
the bundle does, and gives the same :class:`~headstart.bundles.Prediction` per input. It needs
onnxruntime (``pip install 'headstart[onnx]'``), not the backbone's weights: the graph holds them.

:func:`load_predictor` takes either a bundle folder or an export (an ``.onnx`` file, or a text
export's folder holding ``model.onnx`` and ``headstart.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from headstart.backbones import BackboneSpec
from headstart.bundles.base import describe, load_bundle, one_line
from headstart.bundles.classifier import Prediction, ranked_predictions
from headstart.errors import DataError, MissingDependencyError

BATCH = 32


def is_onnx_export(path: str | Path) -> bool:
    """Whether ``path`` is an exported ONNX model: a ``.onnx`` file, or a folder with ``model.onnx`` and ``headstart.json``."""
    path = Path(path)
    return (path.is_file() and path.suffix.lower() == ".onnx") or ((path / "model.onnx").is_file() and (path / "headstart.json").is_file())


def load_predictor(path: str | Path, *, trust_remote_code: bool = False, allow_torchscript: bool = False):
    """A bundle (:func:`~headstart.bundles.load_bundle`) or an ONNX export (:class:`OnnxModel`); both predict with ``predict_batch``."""
    if is_onnx_export(path) or str(path).lower().endswith(".onnx"):
        return OnnxModel.load(path)
    return load_bundle(path, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript)


class OnnxModel:
    """An exported classification model run by onnxruntime.

    Attributes:
        path: The ``.onnx`` file.
        metadata: What the export recorded (classes, preprocessing, backbone, calibration).
        spec: The backbone spec the export recorded (input size, resizing, tokenizer settings).
        classes: The probability columns' class names.
    """

    def __init__(self, path: Path, session: Any, metadata: dict[str, Any], tokenizer: Any = None) -> None:
        self.path = path
        self.session = session
        self.metadata = metadata
        self.spec = BackboneSpec.from_dict(metadata["backbone_spec"])
        self.classes = list(metadata["classes"])
        self.input_names = tuple(metadata.get("input_names") or ("images",))
        self._encoder = None
        if tokenizer is not None:
            from headstart.backbones.text_adapter import TextEncoder

            text = metadata.get("text", {})
            self._encoder = TextEncoder(None, tokenizer, (), False, int(text.get("max_length", 512)), bool(text.get("lowercase", False)))

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OnnxModel:
        """Open an export: an ``.onnx`` file, or a text export's folder.

        Raises:
            MissingDependencyError: onnxruntime is not installed.
            DataError: The file is missing, is not ONNX, or was not written by ``headstart export``.
        """
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("Running an .onnx model needs onnxruntime: pip install 'headstart[onnx]'") from None
        path = Path(path)
        folder = path if path.is_dir() else None
        file = path / "model.onnx" if folder is not None else path
        if not file.is_file():
            raise DataError(f"{file} does not exist. Give an .onnx file written by `headstart export`, or its folder for a text model.")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
            raise DataError(f"{file} is not a readable ONNX model ({one_line(exc)}). Export it again with `headstart export`.") from None
        props = session.get_modelmeta().custom_metadata_map
        if "headstart" not in props:
            raise DataError(f"{file} was not written by `headstart export` (no headstart metadata); run it with onnxruntime directly, or load it as a backbone with onnx:{file}.")
        try:
            metadata = json.loads(props["headstart"])
            BackboneSpec.from_dict(metadata["backbone_spec"])
            metadata["classes"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{file}: its headstart metadata is damaged ({one_line(exc)}); export the bundle again.") from None
        tokenizer = None
        if metadata.get("modality") == "text":
            if folder is None:
                folder = file.parent
            tokenizer = _load_tokenizer(folder)
        return cls(file, session, metadata, tokenizer)

    # ----- prediction, the same contract as Bundle -----------------------------------------------

    def predict_proba_rows(self, inputs: list) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Probabilities of the inputs that could be read, their positions, and ``(position, reason)`` for the rest."""
        if self._encoder is not None:
            return self._text_rows(list(inputs))
        return self._image_rows(list(inputs))

    def predict_proba(self, inputs: list) -> np.ndarray:
        """Class probabilities ``(N, C)``, as the bundle's ``predict_proba`` gives them.

        Raises:
            DataError: An input could not be read (the message names each one).
        """
        proba, _, failed = self.predict_proba_rows(inputs)
        if failed:
            details = "; ".join(f"{describe(inputs[i])}: {reason}" for i, reason in failed)
            raise DataError(f"{len(failed)} input(s) could not be read: {details}")
        return proba

    def predict_batch(self, inputs: list, top_k: int = 3) -> list[Prediction]:
        """Per-input predictions; an input that fails gets its error, and the others still predict."""
        proba, ok, failed = self.predict_proba_rows(inputs)
        return ranked_predictions(inputs, proba, ok, failed, self.classes, top_k)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["probabilities"], feeds)[0]

    def _image_rows(self, inputs: list) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        from PIL import Image

        from headstart.data.transforms import decode_file, pil_to_uint8

        arrays, ok, failed = [], [], []
        for position, item in enumerate(inputs):
            try:
                if isinstance(item, np.ndarray):
                    image = Image.fromarray(item)
                elif isinstance(item, Image.Image):
                    image = item
                else:
                    image = decode_file(str(item), self.spec)
                arrays.append(pil_to_uint8(image, self.spec).numpy())
                ok.append(position)
            except (OSError, ValueError, SyntaxError, TypeError) as exc:
                failed.append((position, f"{type(exc).__name__}: {exc}"))
        rows = [self._run({"images": np.stack(arrays[i : i + BATCH])}) for i in range(0, len(arrays), BATCH)]
        proba = np.concatenate(rows) if rows else np.zeros((0, len(self.classes)), np.float32)
        return proba, ok, failed

    def _text_rows(self, texts: list) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        proba = np.zeros((len(texts), len(self.classes)), np.float32)
        valid = np.zeros(len(texts), dtype=bool)
        failed: list[tuple[int, str]] = []
        for inputs, rows, reasons in self._encoder.make_batches(SimpleNamespace(items=texts), np.arange(len(texts)), BATCH):
            out = self._run({name: inputs[name].numpy() for name in self.input_names})
            for position, row in enumerate(rows):
                if reasons[position]:
                    failed.append((int(row), reasons[position]))
                else:
                    proba[row] = out[position]
                    valid[row] = True
        ok = [int(i) for i in np.flatnonzero(valid)]
        return proba[ok], ok, sorted(failed)


def _load_tokenizer(folder: Path) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MissingDependencyError("Running an exported text model needs transformers for its tokenizer: pip install 'headstart[text]'") from None
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder} has no readable tokenizer ({one_line(exc)}); export the text bundle again (its export is a folder).") from None


__all__ = ["OnnxModel", "is_onnx_export", "load_predictor"]
