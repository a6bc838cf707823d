"""TF-IDF bundles: the ``sk:tfidf`` baseline (TF-IDF + logistic regression) saved with no pickle.

::

    bundle/
      bundle.json              kind ("tfidf"), classes, the head's metadata (mode, chosen C, class
                               indices), the vectorizer settings, the sha256 of each file below,
                               metrics and a manifest
      vectorizer.json          the vectorizer settings and the vocabulary, in column order
      vectorizer.safetensors   the IDF weight of each term
      head.safetensors         the logistic regression's weights and biases

Every file's sha256 is recorded in ``bundle.json`` and checked before the file is read; a bundle
without them is refused. ``load_bundle(path).predict(["some text", ...])`` predicts the same
probabilities as the fitted scikit-learn pipeline (:class:`~headstart.heads.tfidf.TfidfLogReg`),
computed by :class:`~headstart.heads.tfidf.FittedTfidf` with numpy and scipy.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.backbones.spec import BackboneSpec
from headstart.bundles.base import BUNDLE_FORMAT, check_format, describe, read_document, register_kind
from headstart.bundles.classifier import Prediction, read_calibration
from headstart.errors import DataError, WeightsMismatchError
from headstart.evaluate.calibration import Calibration
from headstart.heads.tfidf import CANDIDATE, FittedTfidf, TfidfLogReg
from headstart.io import atomic_write_bytes, atomic_write_json
from headstart.versions import package_versions

KIND = "tfidf"
VECTORIZER_JSON = "vectorizer.json"
VECTORIZER_WEIGHTS = "vectorizer.safetensors"
HEAD_WEIGHTS = "head.safetensors"
FILES = (VECTORIZER_JSON, VECTORIZER_WEIGHTS, HEAD_WEIGHTS)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@register_kind(KIND)
class TfidfBundle:
    """A fitted TF-IDF + logistic regression model: everything needed to predict on new texts.

    Args:
        model: A fitted :class:`~headstart.heads.tfidf.TfidfLogReg`, or its
            :class:`~headstart.heads.tfidf.FittedTfidf`.
        classes: Class names; the model's ``classes_`` index into them.
        metrics: Evaluation results to keep with the model.
        manifest: Provenance: seed, data fingerprint, data source.
        calibration: The class-prior correction (and temperature) applied to the model's probabilities;
            None predicts with the model's own.
    """

    kind = KIND
    layer = "tfidf"
    pool = "none"
    finetuned = False

    def __init__(self, model: TfidfLogReg | FittedTfidf, classes: list[str], metrics: dict[str, Any] | None = None,
                 manifest: dict[str, Any] | None = None, calibration: Calibration | None = None) -> None:
        self.model = model.fitted() if isinstance(model, TfidfLogReg) else model
        self.calibration = calibration or Calibration()
        self.classes = list(classes)
        self.metrics = metrics or {}
        self.manifest = manifest or {}
        self.path: Path | None = None
        self._files: dict[str, bytes] | None = None

    @property
    def head(self) -> FittedTfidf:
        """The model (vectorizer and classifier together: it takes texts)."""
        return self.model

    # ----- the files ----------------------------------------------------------------------------

    def _serialized(self) -> dict[str, bytes]:
        """The bytes of each file (deterministic: the same model gives the same bytes and sha256s)."""
        if self._files is None:
            from safetensors.numpy import save as save_arrays

            arrays, meta, terms = self.model.to_state()
            vectorizer = {"settings": meta["settings"], "terms": terms}
            self._files = {
                VECTORIZER_JSON: json.dumps(vectorizer, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                VECTORIZER_WEIGHTS: save_arrays({"idf": np.ascontiguousarray(arrays["idf"])}),
                HEAD_WEIGHTS: save_arrays({"coef": np.ascontiguousarray(arrays["coef"]), "intercept": np.ascontiguousarray(arrays["intercept"])}),
            }
        return self._files

    @property
    def spec(self) -> BackboneSpec:
        """A backbone spec for ``sk:tfidf``: text modality, no network; its sha256 is that of the fitted vectorizer."""
        files = self._serialized()
        return BackboneSpec(
            name=CANDIDATE, source="sk", arch="tfidf", weights_id="fitted",
            sha256=_sha256(files[VECTORIZER_JSON] + files[VECTORIZER_WEIGHTS]), modality="text", input_size=0,
            feature_dim=self.model.vocabulary_size_, layers=("tfidf",), default_layer="tfidf",
            extra={"vectorizer": self.model.settings},
        )

    def save(self, path: str | Path) -> Path:
        """Write the bundle directory (files replaced atomically, ``bundle.json`` last) and return its path."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = self._serialized()
        for name in FILES:
            atomic_write_bytes(path / name, files[name])
        _, meta, _ = self.model.to_state()
        head = {key: value for key, value in meta.items() if key != "settings"}
        document = {
            "format": BUNDLE_FORMAT,
            "kind": KIND,
            "task": "classification",
            "modality": "text",
            "backbone": self.spec.to_dict(),
            "vectorizer": meta["settings"],
            "classes": self.classes,
            "head": head,
            "sha256": {name: _sha256(files[name]) for name in FILES},
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
    ) -> TfidfBundle:
        """Load a TF-IDF bundle folder, every file checked against its recorded sha256 before it is read.

        Args:
            path: The bundle folder.
            document: Its parsed ``bundle.json``, when the caller has read it already.
            trust_remote_code, allow_torchscript: Accepted for the common ``load`` signature; nothing here runs code.

        Raises:
            DataError: A field or file is missing or malformed.
            WeightsMismatchError: A file's sha256 is not the recorded one.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load as load_arrays

        path = Path(path)
        if document is None:
            document = read_document(path, "Give the --out folder of a probe run.")
        check_format(document, path)
        where = path / "bundle.json"
        for key in ("classes", "head", "sha256"):
            if key not in document:
                raise DataError(f"{where} has no {key!r} field; the TF-IDF bundle is damaged. Run the probe again to write it.")
        recorded = document["sha256"]
        files: dict[str, bytes] = {}
        for name in FILES:
            if not isinstance(recorded, dict) or not recorded.get(name):
                raise DataError(f"{where} records no sha256 for {name} (field sha256.{name}); the bundle cannot be checked, so it is not loaded.")
            file = path / name
            if not file.is_file():
                raise DataError(f"{file} is missing; the TF-IDF bundle is incomplete. Copy the whole folder, or run the probe again.")
            data = file.read_bytes()
            if _sha256(data) != recorded[name]:
                raise WeightsMismatchError(f"{file} has sha256 {_sha256(data)}, not the recorded {recorded[name]}; the bundle is damaged.")
            files[name] = data
        try:
            vectorizer = json.loads(files[VECTORIZER_JSON].decode("utf-8"))
            terms, settings = vectorizer["terms"], vectorizer["settings"]
            arrays = {**load_arrays(files[VECTORIZER_WEIGHTS]), **load_arrays(files[HEAD_WEIGHTS])}
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, SafetensorError) as exc:
            raise DataError(f"{path}: a file of the TF-IDF bundle cannot be read ({type(exc).__name__}: {exc}); the bundle is damaged.") from None
        model = FittedTfidf.from_state(arrays, {**document["head"], "settings": settings}, terms)
        calibration = read_calibration(document, path, model)
        bundle = cls(model, document["classes"], metrics=document.get("metrics", {}), manifest=document.get("manifest", {}), calibration=calibration)
        bundle.path = path
        bundle._files = files
        return bundle

    # ----- prediction -------------------------------------------------------------------------

    def column_names(self) -> list[str]:
        """Class names of the probability columns (classes absent from training have none)."""
        return [self.classes[int(c)] for c in self.model.classes_]

    @staticmethod
    def _check(inputs: list) -> tuple[list[int], list[tuple[int, str]]]:
        """Positions of the usable texts, and the others with their reasons (as text bundles give them)."""
        ok, failed = [], []
        for position, text in enumerate(inputs):
            if not isinstance(text, str):
                failed.append((position, f"not a text ({type(text).__name__})"))
            elif not text.strip():
                failed.append((position, "empty text"))
            else:
                ok.append(position)
        return ok, failed

    def predict_proba(self, inputs: list[str]) -> np.ndarray:
        """Class probabilities (N, C) for texts.

        Raises:
            DataError: ``inputs`` is a single string, or an input is empty or not a text.
        """
        if isinstance(inputs, str):
            raise DataError("predict_proba takes a list of texts, not a single string; wrap it: [text].")
        inputs = list(inputs)
        _, failed = self._check(inputs)
        if failed:
            details = "; ".join(f"{describe(inputs[i])}: {reason}" for i, reason in failed)
            raise DataError(f"{len(failed)} input(s) could not be read: {details}")
        return self.calibration.apply(self.model.predict_proba(inputs))

    def predict(self, inputs: list[str]) -> list[str]:
        """Predicted class names for the texts."""
        proba = self.predict_proba(inputs)
        names = self.column_names()
        return [names[i] for i in np.argmax(proba, axis=1)]

    def predict_batch(self, inputs: list, top_k: int = 3) -> list[Prediction]:
        """Per-input predictions; an empty text gets its error, and the others still predict."""
        inputs = list(inputs)
        ok, failed = self._check(inputs)
        results: list[Prediction | None] = [None] * len(inputs)
        if ok:
            proba = self.calibration.apply(self.model.predict_proba([inputs[i] for i in ok]))
            names = self.column_names()
            k = max(1, min(top_k, proba.shape[1]))
            for row, position in enumerate(ok):
                order = np.argsort(-proba[row])[:k]
                ranked = [(names[i], float(proba[row, i])) for i in order]
                results[position] = Prediction(describe(inputs[position]), ranked[0][0], ranked)
        for position, reason in failed:
            results[position] = Prediction(describe(inputs[position]), None, [], reason)
        return results  # type: ignore[return-value]


__all__ = ["TfidfBundle"]
