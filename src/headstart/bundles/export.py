"""Export a classification bundle as one graph: ONNX (for onnxruntime and other runtimes) or torch.export's ``.pt2``.

The graph is the whole model, from the raw input to calibrated class probabilities:

* **images**: a ``uint8`` batch ``(N, 3, S, S)`` (RGB, already resized and centre-cropped to the
  bundle's input size ``S``) -> ``float`` -> the backbone's normalisation -> the backbone (at the
  bundle's layer and pooling) -> the head -> the bundle's temperature and class-prior correction
  -> probabilities ``(N, C)``. Resizing stays with the caller (see docs/deployment.md): every
  runtime and language has its own image decoder.
* **texts**: token ids ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the encoder
  takes them), ``int64 (N, T)`` -> the encoder -> pooling over the attention mask -> the head ->
  calibration -> probabilities. The export is a folder: ``model.onnx``, the tokenizer's files and
  ``headstart.json``.

The head and the calibration run in float64 inside the graph, as they do in
:meth:`~headstart.bundles.Bundle.predict_proba`, so the exported probabilities match headstart's
to about 1e-6 (the backbone's float32 arithmetic is the only difference).

**The exporter.** ONNX files are written by ``torch.onnx.export(..., dynamo=True)``: the
torch.export-based exporter, the default since torch 2.9, which captures the graph once with
``torch.export`` (so the same capture also gives the ``.pt2`` format) and writes opset 18. The
older TorchScript-based exporter is deprecated in the pinned torch; it was faster to run (1.6 s
against 9 s for MobileNetV2) but is on its way out. The batch dimension (and, for text, the
sequence length) stays dynamic.

**Metadata.** Every ONNX file carries, in its ``metadata_props``: ``classes`` (JSON list, the
probability columns' names), ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``,
``backbone``, ``backbone_sha256``, ``finetuned_backbone_sha256``, ``headstart_version``,
``modality``, ``calibration`` and ``headstart`` (all of it as one JSON object). A ``.pt2`` file
carries the same JSON as its extra file ``headstart.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.bundles.base import bundle_kind, load_bundle, locate_bundle, one_line, read_document
from headstart.errors import DataError, HeadstartError, MissingDependencyError, OptionError
from headstart.evaluate.calibration import Calibration

FORMATS = ("onnx", "pt2")
OPSET = 18
METADATA_FILE = "headstart.json"
EXPORT_FORMAT = "headstart-export-1"
PARITY_TOLERANCE = 1e-4  # the largest difference in a probability that the export check accepts
TINY = 1e-300  # as headstart.evaluate.calibration: log(0) counts as log(1e-300)


class CalibratedProbabilities(nn.Module):
    """The bundle's calibration as a module: head scores (float64) -> probabilities (float32).

    Args:
        calibration: The bundle's temperature and log prior shift.
        head_output: What the head module gives: ``"log_proba"`` or ``"proba"``.
        columns: The number of probability columns.
    """

    def __init__(self, calibration: Calibration, head_output: str, columns: int) -> None:
        super().__init__()
        self.identity = calibration.is_identity
        self.head_output = head_output
        self.scores = calibration.scores
        self.temperature = float(calibration.temperature)
        self.register_buffer("shift", torch.as_tensor(calibration.shift_for(columns), dtype=torch.float64))
        # Buffers, not Python floats: the ONNX exporter does not keep a float64 literal's value (1e-9 came out as 0).
        self.register_buffer("tiny", torch.tensor([TINY], dtype=torch.float64))
        self.register_buffer("t", torch.tensor([float(calibration.temperature)], dtype=torch.float64))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return (scores.exp() if self.head_output == "log_proba" else scores).float()
        if self.scores == "log_proba":
            z = scores if self.head_output == "log_proba" else torch.maximum(scores, self.tiny).log()
        else:
            z = scores.exp() if self.head_output == "log_proba" else scores
        return torch.softmax(z / self.t + self.shift, dim=1).float()


class ImageClassifier(nn.Module):
    """uint8 images ``(N, 3, S, S)`` -> calibrated probabilities ``(N, C)``: normalisation, backbone, head, calibration."""

    def __init__(self, backbone: nn.Module, layer: str, pool: str, head: nn.Module, calibration: nn.Module) -> None:
        super().__init__()
        spec = backbone.spec
        self.backbone = backbone
        self.layer = layer
        self.pool = pool
        self.head = head
        self.calibration = calibration
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return self.calibration(self.head(self.backbone.features(x, self.layer, self.pool)))


class TextClassifier(nn.Module):
    """Token ids -> calibrated probabilities: the encoder, pooling over the attention mask, head, calibration."""

    def __init__(self, backbone: nn.Module, layer: str, pool: str, head: nn.Module, calibration: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.pool = pool
        self.head = head
        self.calibration = calibration
        self.input_names = input_names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.calibration(self.head(self.backbone.features(inputs, self.layer, self.pool)))


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote, and how closely the written file reproduces the bundle.

    Attributes:
        path: The ``.onnx`` or ``.pt2`` file, or for a text bundle's ONNX export the folder.
        format: ``onnx`` or ``pt2``.
        max_difference: The largest difference between the exported file's probabilities and
            the bundle's own, on a check batch (random pixels or two sentences).
        metadata: What the file says about itself (classes, preprocessing, provenance).
    """

    path: Path
    format: str
    max_difference: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "max_difference": self.max_difference, "classes": self.metadata.get("classes")}


def default_export_path(bundle: str | Path, format: str) -> Path:
    """Where ``headstart export`` writes when ``--out`` is not given: beside the bundle folder.

    ``runs/x/bundle`` (or ``runs/x``) -> ``runs/x/model.onnx`` (``model.pt2``); a text bundle's ONNX
    export is a folder, ``runs/x/model-onnx``.
    """
    folder, _ = locate_bundle(bundle)
    text = read_document(folder).get("modality") == "text"
    name = "model-onnx" if text and format == "onnx" else f"model.{format}"
    return folder.parent / name


def check_format_name(format: str) -> str:
    if format not in FORMATS:
        raise OptionError(f"--format {format!r} is not an export format; use one of: {', '.join(FORMATS)}.")
    return format


def check_exportable(bundle: str | Path) -> Path:
    """The bundle folder ``bundle`` names, when its kind can be exported (read from bundle.json alone).

    Raises:
        DataError: It is not a bundle, or an ``sk:tfidf``, detection or segmentation bundle.
    """
    folder, _ = locate_bundle(bundle)
    kind = bundle_kind(read_document(folder, "Give the --out folder of a probe or finetune run, or its bundle/ folder."))
    if kind == "tfidf":
        raise DataError(
            f"{folder} is an sk:tfidf bundle: TF-IDF + logistic regression runs in scikit-learn, not in a neural network graph, "
            "so it cannot be exported to ONNX or pt2; predict with `headstart predict`, or probe a neural text backbone (st:...) to export."
        )
    if kind != "classification":
        raise DataError(f"{folder} is a {kind} bundle; export supports classification bundles (image and text) only so far.")
    return folder


def check_output(out: str | Path, format: str, text: bool, bundle_folder: Path | None = None) -> Path:
    """``out`` when an export may be written there; nothing is written or removed here.

    An image export (and any ``.pt2``) is one file with the format's suffix; a text model's ONNX export is a
    folder, which may replace only an earlier export (a folder holding ``model.onnx`` and ``headstart.json``).

    Raises:
        OptionError: The path is unsuitable; the message names it and the fix.
    """
    out = Path(out)
    if text and format == "onnx":
        if out.exists() and not out.is_dir():
            raise OptionError(f"--out {out} is a file; a text model's ONNX export is a folder. Name a new folder, e.g. --out runs/x/model-onnx.")
        if out.is_dir() and any(out.iterdir()) and not ((out / "model.onnx").is_file() and (out / METADATA_FILE).is_file()):
            raise OptionError(f"--out {out} is a folder that holds other files; the export would replace it. Name a new folder, e.g. --out {out / 'model-onnx'}.")
        inside = bundle_folder is not None and (bundle_folder.resolve() == out.resolve() or out.resolve() in bundle_folder.resolve().parents)
        if inside:
            raise OptionError(f"--out {out} holds the bundle itself; name a new folder, e.g. --out {out / 'model-onnx'}.")
    else:
        suffix = f".{format}"
        if out.is_dir():
            raise OptionError(f"--out {out} is a folder; name the file to write, e.g. --out {out / ('model' + suffix)}.")
        if out.suffix.lower() != suffix:
            raise OptionError(f"--out {out} does not end in {suffix}; name the file model{suffix} (headstart predict recognises exports by it).")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OptionError(f"--out {out}: {parent} is a file, not a folder. Name a path under a folder.")
            break
    return out


def require_onnx() -> None:
    """Raise the one-line install hint when onnx, onnxruntime or onnxscript is missing."""
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise MissingDependencyError(f"ONNX export and inference need {module}: pip install 'headstart[onnx]'") from None


def export_bundle(bundle: str | Path | Any, out: str | Path | None = None, format: str = "onnx", *, opset: int = OPSET,
                  trust_remote_code: bool = False, allow_torchscript: bool = False, quiet: bool = True) -> ExportResult:
    """Export a classification bundle as one ONNX or ``.pt2`` graph with its calibration, and check it.

    Args:
        bundle: A bundle folder, a run's ``--out`` folder, or a loaded :class:`~headstart.bundles.Bundle`.
        out: Where to write: a ``.onnx``/``.pt2`` file for images, a folder for a text bundle's ONNX
            export. Default: :func:`default_export_path`. An existing file is replaced atomically.
        format: ``onnx`` or ``pt2``.
        opset: The ONNX opset.
        trust_remote_code: Let an ``hf:``/``st:`` backbone folder run the code it ships.
        allow_torchscript: Let a ``file:`` TorchScript backbone load.
        quiet: Say nothing; else one line on stderr once the bundle and ``out`` passed their checks.

    Returns:
        An :class:`ExportResult`, with the largest probability difference between the written file
        (run with onnxruntime, or loaded back with ``torch.export.load``) and the bundle.

    Raises:
        DataError: The bundle cannot be exported (TF-IDF, detection, segmentation, multi-label), or
            the written file does not reproduce the bundle's probabilities to 1e-4.
        MissingDependencyError: ONNX export without the ``onnx`` extra.
    """
    check_format_name(format)
    if format == "onnx":
        require_onnx()
    if isinstance(bundle, (str, Path)):
        folder = check_exportable(bundle)
        text = read_document(folder).get("modality") == "text"
        out = check_output(out if out is not None else default_export_path(folder, format), format, text, folder)
        loaded = load_bundle(folder, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript)
    else:
        loaded = bundle
        if out is None:
            raise OptionError("export_bundle(bundle_object, ...) needs out=PATH.")
        out = check_output(out, format, loaded.spec.modality == "text", loaded.path)
    if not quiet:
        from headstart.console import err_console

        err_console.print(f"exporting {bundle if isinstance(bundle, (str, Path)) else loaded.path} as {format} to {out} "
                          "(capturing the graph takes a few seconds to a minute)", markup=False, highlight=False)
    try:
        return _export(loaded, out, format, opset)
    except (HeadstartError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export and the ONNX exporter raise many types for a graph they cannot capture
        raise DataError(
            f"{loaded.spec.name} could not be exported to {format} ({one_line(exc)}); networks that torch.export cannot capture "
            "(onnx: and keras: backbones, TorchScript files) cannot be exported. Rerun with --debug for the exporter's traceback."
        ) from exc


def _export(bundle: Any, out: Path, format: str, opset: int) -> ExportResult:
    from headstart.heads.export import head_module

    if bundle.has_adapters:
        bundle.merge_adapters()  # a LoRA bundle: fold the adapters in, so the graph is one plain network
    backbone = bundle.backbone.eval()
    head = head_module(bundle.head)
    columns = len(bundle.head.classes_)
    calibration = CalibratedProbabilities(bundle.calibration, head.output, columns)
    text = bundle.spec.modality == "text"
    metadata = export_metadata(bundle)
    if text:
        encoder = backbone.model
        input_names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in encoder.input_names or n == "attention_mask")
        module = TextClassifier(backbone, bundle.layer, bundle.pool, head, calibration, input_names).eval()
        check_texts = ["An example sentence to check the export.", "Another, shorter one."]
        batch = next(iter(encoder.make_batches(SimpleNamespace(items=check_texts), np.arange(len(check_texts)), len(check_texts))))[0]
        args = tuple(batch[name] for name in input_names)
        metadata["text"] = {"input_names": list(input_names), "max_length": encoder.max_length, "lowercase": encoder.lowercase}
    else:
        module = ImageClassifier(backbone, bundle.layer, bundle.pool, head, calibration).eval()
        size = bundle.spec.input_size
        args = (torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),)
        input_names = ("images",)
    with torch.inference_mode():
        expected = bundle.calibration.apply(bundle.head.predict_proba(_features(backbone, bundle, args, input_names)))
    metadata["input_names"] = list(input_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        return _write_onnx(module, args, input_names, out, metadata, expected, opset, text, bundle)
    return _write_pt2(module, args, input_names, out, metadata, expected, text)


def _features(backbone: Any, bundle: Any, args: tuple, input_names: tuple[str, ...]) -> np.ndarray:
    """The bundle's own features of the check batch (what ``Bundle.features`` computes)."""
    if bundle.spec.modality == "text":
        x: Any = dict(zip(input_names, args))
    else:
        from headstart.data.transforms import normalize_uint8

        x = normalize_uint8(args[0], bundle.spec)
    return backbone.features(x, bundle.layer, bundle.pool).float().numpy()


def export_metadata(bundle: Any) -> dict[str, Any]:
    """What an exported file says about itself: classes, preprocessing, backbone and provenance."""
    from headstart.versions import headstart_version

    spec = bundle.spec
    return {
        "format": EXPORT_FORMAT,
        "headstart_version": headstart_version(),
        "modality": spec.modality,
        "classes": bundle.column_names(),
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "backbone": spec.name,
        "backbone_sha256": spec.sha256,
        "finetuned_backbone_sha256": bundle.finetuned_sha256,
        "backbone_spec": spec.to_dict(),
        "layer": bundle.layer,
        "pool": bundle.pool,
        "head": type(bundle.head).__name__,
        "calibration": bundle.calibration.to_dict(),
        "output": "probabilities",
    }


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress on stdout and warns about its own internals; keep stdout for results."""
    with contextlib.redirect_stdout(sys.stderr if os.environ.get("HEADSTART_DEBUG") else open(os.devnull, "w")) as sink:  # noqa: SIM115
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield
            finally:
                if sink is not sys.stderr:
                    sink.close()


def _dynamic_shapes(input_names: tuple[str, ...], text: bool) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=4096)
    if not text:
        return ({0: batch},)
    tokens = torch.export.Dim("tokens", min=1, max=8192)
    return tuple({0: batch, 1: tokens} for _ in input_names)


def _write_onnx(module, args, input_names, out: Path, metadata, expected, opset: int, text: bool, bundle) -> ExportResult:
    import onnx

    target_dir = out if text else out.parent
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target_dir.parent if text else target_dir))
    try:
        onnx_path = staging / "model.onnx"
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=opset, input_names=list(input_names), output_names=["probabilities"],
                dynamic_shapes=_dynamic_shapes(input_names, text), external_data=False,
            )
        model = program.model_proto
        props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
        props["headstart"] = json.dumps(metadata)
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(onnx_path))
        if text:
            bundle.backbone.model.tokenizer.save_pretrained(str(staging))
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        difference = _onnx_difference(onnx_path, args, input_names, expected)
        if text:
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(staging, out)
        else:
            os.replace(onnx_path, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, "onnx", difference, metadata)


def _onnx_difference(path: Path, args, input_names, expected: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {name: a.numpy() for name, a in zip(input_names, args)})[0]
    return _checked_difference(got, expected, path)


def _checked_difference(got: np.ndarray, expected: np.ndarray, path: Path) -> float:
    difference = float(np.abs(np.asarray(got, np.float64) - expected).max())
    if not difference <= PARITY_TOLERANCE:
        raise DataError(
            f"The exported {path.name} gives probabilities up to {difference:.2g} away from the bundle's (tolerance {PARITY_TOLERANCE}); "
            "it was not written. Report this with the backbone name."
        )
    return difference


def _write_pt2(module, args, input_names, out: Path, metadata, expected, text: bool) -> ExportResult:
    staging = out.with_name(f".{out.stem}.partial.pt2")  # torch.export.save wants the .pt2 suffix
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=_dynamic_shapes(input_names, text))
            torch.export.save(program, str(staging), extra_files={METADATA_FILE: json.dumps(metadata)})
        loaded = torch.export.load(str(staging))
        with torch.no_grad():
            got = loaded.module()(*args).numpy()
        difference = _checked_difference(got, expected, out)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return ExportResult(out, "pt2", difference, metadata)


__all__ = ["FORMATS", "CalibratedProbabilities", "ExportResult", "ImageClassifier", "TextClassifier", "default_export_path", "export_bundle", "export_metadata"]
