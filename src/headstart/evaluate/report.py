"""Self-contained HTML reports of run directories.

A report is drawn from the files in a run directory alone, so ``headstart report RUN_DIR`` can
re-render it at any time, and every command that writes those files gets a report for free. Each
section appears when its file is there:

========================================  =====================================================
file in the run directory                 section
========================================  =====================================================
``metrics.json`` ``dataset``              dataset summary: classes, counts per split, skipped files
``rank.json``                             rank table and the accuracy-versus-cost Pareto plot
``metrics.json`` ``runs`` / results.csv   probe comparison (table and bars)
``*.csv`` with an ``epoch`` column        training curves, unfreeze phases marked
metrics with ``per_class``                confusion matrix and per-class metrics
``test_predictions.csv``                  reliability diagram, most confidently wrong examples
``thumbnails/<index>.png``                the pictures of those examples
``predictions/*.png``                     a grid of predictions drawn on test images
``manifest.json``                         run details: command, versions, seed, keys, times
========================================  =====================================================

``test_predictions.csv`` has the columns ``index,item,true,predicted,confidence``: the dataset
index of a test example, its file path or text ("" for in-memory arrays), the true and predicted
class names, and the top-1 probability. :func:`write_test_predictions` writes it, with thumbnails
of the most confidently wrong examples.

Every image is embedded as a base64 PNG, and the page loads no script, font or stylesheet: it opens
offline, and its Content-Security-Policy forbids anything else.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import DataError

REPORT_FILE = "report.html"
PREDICTIONS_FILE = "test_predictions.csv"
THUMBNAIL_DIR = "thumbnails"
PREDICTION_IMAGE_DIR = "predictions"
PREDICTION_COLUMNS = ("index", "item", "true", "predicted", "confidence")
WRONG_SHOWN = 24
GRID_SHOWN = 24
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
# Columns of an epoch log that hold the phase of an unfreeze schedule.
PHASE_WORDS = ("phase", "stage", "unfreeze", "unfrozen")
# Columns of an epoch log that are bookkeeping, not curves.
NOT_CURVES = ("time", "second", "elapsed", "wall", "throughput", "per_s", "step", "samples", "items", "param", "best")
RUN_FILES = ("metrics.json", "manifest.json", "results.csv", "rank.json", PREDICTIONS_FILE)


# ----- reading a run directory -----------------------------------------------------------------


@dataclass
class EpochLog:
    """One CSV log with a row per epoch (or step)."""

    name: str
    x_name: str
    rows: list[dict[str, str]]


@dataclass
class RunFiles:
    """Everything a report can draw, read from one run directory.

    Attributes:
        path: The run directory.
        metrics: ``metrics.json``.
        manifest: ``manifest.json``.
        results: Rows of the comparison table (``metrics.json`` ``runs``, or ``results.csv``).
        rank: ``rank.json``.
        logs: CSV logs with an epoch or step column.
        predictions: Rows of ``test_predictions.csv``.
        prediction_images: Pictures under ``predictions/``.
        notes: Files that were there but could not be read, with the reason.
    """

    path: Path
    metrics: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    rank: Any = None
    logs: list[EpochLog] = field(default_factory=list)
    predictions: list[dict[str, str]] = field(default_factory=list)
    prediction_images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def kind(self) -> str:
        """``probe``, ``finetune``, ``rank``, ``detect``, ``segment``, or ``run``, guessed from the command and the files."""
        command = (self.manifest or {}).get("command") or []
        words = [str(word) for word in command] if isinstance(command, list) else str(command).split()
        for kind in ("finetune", "rank", "probe", "demo", "detect", "segment"):
            if kind in words[1:3]:
                return kind
        task = (self.manifest or {}).get("task")
        if task in ("detection", "segmentation"):
            return {"detection": "detect", "segmentation": "segment"}[task]
        if self.logs:
            return "finetune"
        if self.results:
            return "probe"
        if self.rank is not None:
            return "rank"
        return "run"


def read_run(path: str | Path) -> RunFiles:
    """Read the report's files from a run directory; unreadable files become notes, not errors.

    Raises:
        DataError: The folder does not exist or holds none of the files a report draws.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"Run directory {path} does not exist. Give the --out folder of a probe, rank or finetune run.")
    run = RunFiles(path=path)
    run.metrics = _read_json(path / "metrics.json", run.notes)
    run.manifest = _read_json(path / "manifest.json", run.notes)
    run.rank = _read_json(path / "rank.json", run.notes)
    if isinstance(run.metrics, dict) and isinstance(run.metrics.get("runs"), list):
        run.results = [row for row in run.metrics["runs"] if isinstance(row, dict)]
    elif (path / "results.csv").is_file():
        run.results = [_numbers(row) for row in _read_csv(path / "results.csv", run.notes)]
    for csv_path in sorted(path.glob("*.csv")) + sorted(path.glob("logs/*.csv")):
        if csv_path.name in ("results.csv", PREDICTIONS_FILE):
            continue
        rows = _read_csv(csv_path, run.notes)
        x_name = _epoch_column(rows)
        if rows and x_name:
            run.logs.append(EpochLog(name=str(csv_path.relative_to(path)), x_name=x_name, rows=rows))
    if (path / PREDICTIONS_FILE).is_file():
        rows = _read_csv(path / PREDICTIONS_FILE, run.notes)
        missing = [c for c in ("true", "predicted", "confidence") if rows and c not in rows[0]]
        if missing:
            run.notes.append(f"{PREDICTIONS_FILE}: missing columns {missing}; expected {', '.join(PREDICTION_COLUMNS)}.")
        else:
            run.predictions = rows
    if (path / PREDICTION_IMAGE_DIR).is_dir():
        pictures = sorted(p for p in (path / PREDICTION_IMAGE_DIR).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        names = {p.name for p in pictures}
        # A class-index mask is near black to the eye: show its overlay instead, where there is one.
        run.prediction_images = [p for p in pictures if not (p.name.endswith(".mask.png") and p.name[:-9] + ".overlay.png" in names)]
    found = run.metrics or run.manifest or run.results or run.rank is not None or run.logs or run.predictions or run.prediction_images
    if not found:
        raise DataError(
            f"{path} holds none of the files a report draws ({', '.join(RUN_FILES)}, an epoch CSV log, predictions/). "
            "Give the --out folder of a probe, rank or finetune run."
        )
    return run


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: could not be read ({exc}); its sections are left out.")
        return None


def _read_csv(path: Path, notes: list[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        notes.append(f"{path.name}: could not be read ({exc}); its section is left out.")
        return []


def _epoch_column(rows: list[dict[str, str]]) -> str | None:
    if not rows:
        return None
    for name in rows[0]:
        if name and name.strip().lower() in ("epoch", "epochs", "step", "global_step", "iteration"):
            return name
    return None


def _number(value: Any) -> float | None:
    """A finite float from a number or numeric string, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _numbers(row: dict[str, str]) -> dict[str, Any]:
    """CSV strings as numbers or booleans where they are."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value in ("True", "False"):
            out[key] = value == "True"
        elif value == "":
            out[key] = None
        else:
            number = _number(value)
            out[key] = value if number is None else (int(number) if number.is_integer() and "." not in value else number)
    return out


def eval_results(metrics: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every evaluation result (a dict with ``per_class``) inside ``metrics``, with where it was found."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(value: Any, where: str, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(value, dict):
            if isinstance(value.get("per_class"), list):
                found.append((where, value))
                return
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key), depth + 1)
        elif isinstance(value, list):
            for i, item in enumerate(value[:200]):
                walk(item, f"{where}[{i}]", depth + 1)

    walk(metrics, "", 0)
    return found


def main_result(run: RunFiles) -> tuple[str, dict[str, Any]] | None:
    """The evaluation the report details: the best probe run's, else a test split's, else the first."""
    if run.results and isinstance(run.metrics, dict):
        best = run.metrics.get("best") or {}
        for row in run.results:
            if isinstance(row.get("metrics"), dict) and all(row.get(k) == best.get(k) for k in ("backbone", "head", "layer")):
                return f"{row.get('backbone')} + {row.get('head')}", row["metrics"]
    results = eval_results(run.metrics)
    if not results:
        return None
    chosen = next(((where, result) for where, result in results if result.get("split") == "test"), results[0])
    where, result = chosen
    if isinstance(run.metrics, dict) and isinstance(run.metrics.get("backbone"), str) and "." not in where and "[" not in where:
        # A single-model run (fine-tuning): name the model rather than the key.
        strategy = run.metrics.get("strategy")
        return f"{run.metrics['backbone']}" + (f" ({strategy})" if isinstance(strategy, str) else ""), result
    return where or str(result.get("split", "")), result


# ----- writing predictions for the report -------------------------------------------------------


def write_test_predictions(
    out: str | Path,
    index: Sequence[int],
    true: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    items: Sequence[str] | np.ndarray | None = None,
    modality: str = "image",
    thumbnails: int = WRONG_SHOWN,
) -> Path:
    """Write ``test_predictions.csv`` and thumbnails of the most confidently wrong examples.

    Args:
        out: The run directory.
        index: Dataset index of each test example.
        true: True class name of each example.
        predicted: Predicted class name of each example.
        confidence: Top-1 probability of each example.
        items: The dataset's items (all of them, indexed by ``index``): file paths, texts, or an
            in-memory uint8 image array. Paths and texts go into the CSV's ``item`` column.
        modality: ``image`` or ``text``; only images get thumbnails.
        thumbnails: How many of the most confidently wrong examples get a thumbnail.

    Returns:
        The CSV's path.
    """
    from headstart.io import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    in_memory = isinstance(items, np.ndarray)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(PREDICTION_COLUMNS)
    for i, t, p, c in zip(index, true, predicted, confidence):
        item = "" if items is None or in_memory else str(items[int(i)])[:500]
        writer.writerow([int(i), item, t, p, f"{float(c):.6f}"])
    path = out / PREDICTIONS_FILE
    atomic_write_bytes(path, buffer.getvalue().encode())

    folder = out / THUMBNAIL_DIR
    if folder.is_dir():
        for old in folder.glob("*.png"):
            old.unlink()
    if items is None or modality != "image" or thumbnails <= 0:
        return path
    wrong = [k for k in range(len(index)) if str(true[k]) != str(predicted[k])]
    wrong.sort(key=lambda k: -float(confidence[k]))
    for k in wrong[:thumbnails]:
        row = int(index[k])
        picture = _thumbnail(items[row] if in_memory else str(items[row]))
        if picture is not None:
            folder.mkdir(exist_ok=True)
            atomic_write_bytes(folder / f"{row}.png", picture)
    return path


def _thumbnail(item: Any, size: int = 128) -> bytes | None:
    """A PNG of at most ``size`` pixels a side from an image array or file, or None if unreadable."""
    from PIL import Image

    try:
        if isinstance(item, np.ndarray):
            array = item if item.dtype == np.uint8 else np.clip(item, 0, 255).astype(np.uint8)
            if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
                array = np.moveaxis(array, 0, -1)
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            image = Image.fromarray(array)
        else:
            image = Image.open(item)
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception:  # any unreadable picture just goes without a thumbnail
        return None


# ----- sections ---------------------------------------------------------------------------------


@dataclass
class Section:
    """One titled part of a report."""

    id: str
    title: str
    body: str


def build_sections(run: RunFiles, main_table: bool = True) -> list[Section]:
    """Every section the run's files support, in reading order.

    Args:
        run: The run's files.
        main_table: Mark the first table ``id="main-table"`` (single-run pages).
    """
    sections: list[Section] = []
    builders = (
        _overview_section,
        _dataset_section,
        _rank_section,
        _probe_section,
        _curves_section,
        _confusion_section,
        _per_class_section,
        _reliability_section,
        _wrong_section,
        _grid_section,
        _manifest_section,
    )
    for builder in builders:
        section = builder(run)
        if section is not None:
            sections.append(section)
    if main_table:
        for section in sections:
            if 'class="data"' in section.body and section.id != "overview":
                section.body = section.body.replace('<table class="data"', '<table id="main-table" class="data"', 1)
                break
    return sections


def _overview_section(run: RunFiles) -> Section | None:
    chips: list[tuple[str, str]] = []
    found = main_result(run)
    if found:
        where, result = found
        chips.append(("evaluated", where))
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("macro_f1", "macro F1"), ("ece", "ECE")):
            value = _number(result.get(key))
            if value is not None:
                chips.append((f"{result.get('split', 'test')} {label}", f"{value:.3f}"))
        if result.get("n") is not None:
            chips.append(("examples", _fmt(result.get("n"))))
    if isinstance(run.metrics, dict) and not found:
        for key, value in _scalars(run.metrics)[:8]:
            chips.append((key, _fmt(value, key)))
    facts = []
    if isinstance(run.metrics, dict):
        facts = [(k, v) for k, v in run.metrics.items() if k not in ("out",) and (isinstance(v, (str, int, float, bool)))]
    if not chips and not facts and not run.notes:
        return None
    body = '<div class="chips">' + "".join(
        f'<div class="chip"><span>{_e(label)}</span><b>{_e(value)}</b></div>' for label, value in chips
    ) + "</div>"
    if facts:
        body += _kv_table(facts)
    body += "".join(f'<p class="note">{_e(note)}</p>' for note in run.notes)
    return Section("overview", "Overview", body)


def _scalars(data: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Top-level numbers of a metrics dict (one level of nesting), for runs without an evaluation."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((name, value))
        elif isinstance(value, dict) and depth == 0:
            out += _scalars(value, f"{name}/", 1)
    return out


def run_dataset(run: RunFiles) -> dict[str, Any] | None:
    """The dataset summary of ``metrics.json``, else of ``rank.json``."""
    for document in (run.metrics, run.rank):
        if isinstance(document, dict) and isinstance(document.get("dataset"), dict):
            return document["dataset"]
    return None


def _dataset_section(run: RunFiles) -> Section | None:
    dataset = run_dataset(run)
    if dataset is None:
        return None
    classes = [str(c) for c in dataset.get("classes") or []]
    counts = dataset.get("counts") or {}
    splits = [s for s in ("train", "val", "test") if s in counts] + [s for s in counts if s not in ("train", "val", "test")]
    facts = [("source", dataset.get("source")), ("modality", dataset.get("modality")), ("classes", len(classes))]
    facts += [(f"{split} examples", sum(counts[split].values())) for split in splits]
    skipped = dataset.get("skipped") or []
    facts.append(("skipped files", len(skipped)))
    body = _kv_table(facts)
    if classes and splits:
        rows = [[name, *[counts[s].get(name, 0) for s in splits]] for name in classes]
        rows.append(["total", *[sum(counts[s].values()) for s in splits]])
        body += _table(["class", *splits], rows, numeric_from=1, css="data compact")
    body = f'<div class="side">{body}</div>'
    if skipped:
        listed = "".join(f"<li><code>{_e(s.get('item'))}</code>: {_e(s.get('reason'))}</li>" for s in skipped[:200])
        more = f"<li>… and {len(skipped) - 200} more</li>" if len(skipped) > 200 else ""
        body += f"<details><summary>{len(skipped)} skipped file(s)</summary><ul>{listed}{more}</ul></details>"
    return Section("dataset", "Dataset", body)


# ----- rank.json ---------------------------------------------------------------------------------

RANK_ROW_KEYS = ("rows", "candidates", "table", "ranking", "results", "backbones")
NAME_KEYS = ("candidate", "name", "backbone", "model", "label", "id")
SCORE_KEYS = ("probe_accuracy", "linear_probe_accuracy", "linear_probe", "probe", "accuracy", "knn_accuracy", "knn",
              "combined", "combined_score", "score", "rank_score", "logme")
COST_KEYS = ("macs", "gmacs", "mult_adds", "multiply_adds", "madds", "flops", "gflops", "params", "parameters", "n_params",
             "num_params", "ms_per_image", "latency_ms", "seconds", "time_s", "extract_s", "peak_memory_mb", "peak_memory")
SPEED_KEYS = ("images_per_s", "images_per_second", "img_per_s", "throughput", "items_per_s")
FRONT_KEYS = ("pareto", "on_front", "pareto_front", "pareto_optimal", "front")


def rank_rows(rank: Any) -> list[dict[str, Any]]:
    """The candidate rows of ``rank.json``, nested dicts flattened to ``a.b`` keys.

    Accepts a list of row dicts, or a dict holding one under ``rows``, ``candidates``, ``table``,
    ``ranking``, ``results`` or ``backbones``. A score given as ``{"value": null, "reason": ...}``
    becomes ``"n/a: reason"``.
    """
    rows = rank
    if isinstance(rank, dict):
        rows = next((rank[key] for key in RANK_ROW_KEYS if isinstance(rank.get(key), list)), None)
    if not isinstance(rows, list):
        return []
    return [_flatten(row) for row in rows if isinstance(row, dict)]


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "value" in value:
            out[name] = value["value"] if value["value"] is not None else f"n/a: {value.get('reason', 'undefined')}"
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = ", ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def _pick(columns: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first column whose name (or last dotted part) is one of ``wanted``, in ``wanted`` order."""
    lowered = {column: column.lower().replace("-", "_").replace(" ", "_").split(".")[-1].split("/")[-1] for column in columns}
    for want in wanted:
        for column, short in lowered.items():
            if short == want:
                return column
    return None


RANK_HIDDEN = ("n_samples", "cost.image_size", "cost.batch_size", "cost.device", "cost.threads", "cost_error")


@dataclass
class ParetoAxes:
    """One Pareto plot of a ranking: the score (y) and cost (x) columns and the front's flag column."""

    score: str
    cost: str
    front: str | None
    higher_cost_is_better: bool


def pareto_axes(rank: Any, columns: Sequence[str]) -> list[ParetoAxes]:
    """The Pareto plots a ranking asks for.

    ``rank.json`` may name them as ``"pareto_axes": {"pareto": "combined vs MACs", ...}``: each
    key is the column flagging the front, each value ``"<score> vs <cost>"``. Without that, the
    first accuracy-like column (``probe_accuracy``, ``accuracy``, ``combined``, ...) against the
    first cost column (MACs, params, ms per image, ...) or throughput (images/s).
    """
    found: list[ParetoAxes] = []
    declared = rank.get("pareto_axes") if isinstance(rank, dict) else None
    if isinstance(declared, dict):
        for flag, text in declared.items():
            match = re.match(r"\s*(.+?)\s+vs\.?\s+(.+?)\s*$", str(text))
            if not match:
                continue
            score = _pick(columns, (_column_word(match.group(1)),))
            cost = _pick(columns, (_column_word(match.group(2)),))
            if score and cost:
                found.append(ParetoAxes(score, cost, flag if flag in columns else None, _is_speed(cost)))
    if found:
        return found
    score = _pick(columns, SCORE_KEYS)
    cost = _pick(columns, COST_KEYS) or _pick(columns, SPEED_KEYS)
    if score and cost:
        front = _pick(columns, FRONT_KEYS)
        found.append(ParetoAxes(score, cost, front, _is_speed(cost)))
    return found


def _column_word(text: str) -> str:
    """``"images/s"`` -> ``images_per_s``; ``"MACs"`` -> ``macs``."""
    return text.strip().lower().replace("/", "_per_").replace(" ", "_").replace("-", "_")


def _is_speed(column: str) -> bool:
    return column.lower().split(".")[-1] in SPEED_KEYS


def _rank_section(run: RunFiles) -> Section | None:
    if run.rank is None:
        return None
    rows = rank_rows(run.rank)
    if not rows:
        return Section("rank", "Backbone ranking", '<p class="note">rank.json has no candidate rows '
                       f'(expected a list of dicts, or one under {", ".join(RANK_ROW_KEYS)}).</p>')
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rank_column = _pick(columns, ("rank", "position"))
    if rank_column and all(_number(row.get(rank_column)) is not None for row in rows):
        rows = sorted(rows, key=lambda row: _number(row[rank_column]))
    name_column = _pick(columns, NAME_KEYS) or columns[0]
    axes = pareto_axes(run.rank, columns)
    shown = [c for c in columns if c not in RANK_HIDDEN and not c.startswith("seconds.")
             and not (c == "backbone" and name_column != "backbone")
             and any(row.get(c) not in (None, "") for row in rows)]
    ordered = [c for c in (rank_column, name_column) if c] + [c for c in shown if c not in (rank_column, name_column)]
    reasons: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        for column in ordered:
            value = row.get(column)
            if isinstance(value, str) and value.startswith("n/a: "):
                reasons.setdefault((column, value[5:]), []).append(str(row.get(name_column)))
    front_column = axes[0].front if axes else None
    front_rows = {i for i, row in enumerate(rows) if front_column and row.get(front_column) is True}
    body = ""
    if isinstance(run.rank, dict):
        facts = _rank_facts(run.rank, rows)
        if facts:
            body += _kv_table(facts)
    body += _table(
        ordered,
        [["n/a" if isinstance(row.get(c), str) and row[c].startswith("n/a: ") else _fmt(row.get(c), c) for c in ordered] for row in rows],
        numeric_from=1,
        highlight={i: "front" for i in front_rows},
        short_headers=True,
    )
    if reasons:
        body += '<ul class="note">' + "".join(
            f"<li><code>{_e(column)}</code> is n/a for {_e(', '.join(names))}: {_e(reason)}</li>" for (column, reason), names in reasons.items()
        ) + "</ul>"
    if front_rows:
        body += (f'<p class="note">Highlighted rows are on the Pareto front of {_e(axes[0].score)} against '
                 f"{_e(axes[0].cost)} (column <code>{_e(front_column)}</code>).</p>")
    errors = [(row.get(name_column), row.get("cost_error")) for row in rows if row.get("cost_error")]
    skipped = run.rank.get("skipped") if isinstance(run.rank, dict) else None
    if errors:
        body += '<p class="note">No cost for ' + "; ".join(f"{_e(n)}: {_e(e)}" for n, e in errors) + ".</p>"
    if isinstance(skipped, list) and skipped:
        items = "".join(f"<li><code>{_e(s.get('candidate'))}</code>: {_e(s.get('reason'))}</li>" for s in skipped if isinstance(s, dict))
        body += f"<details open><summary>{len(skipped)} candidate(s) skipped</summary><ul>{items}</ul></details>"
    if not axes:
        body += ('<p class="note">No Pareto plot: rank.json has no score and cost columns '
                 f'(looked for {", ".join(SCORE_KEYS[:6])}, … and {", ".join(COST_KEYS[:6])}, …).</p>')
    for axis in axes:
        body += _pareto_plot(rows, name_column, columns, axis)
    return Section("rank", "Backbone ranking", body)


def _rank_facts(rank: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    facts: list[tuple[str, Any]] = []
    combination = rank.get("combination")
    if isinstance(combination, dict) and combination.get("description"):
        facts.append(("combined score", combination["description"]))
    sample = rank.get("sample")
    if isinstance(sample, dict):
        facts.append(("sample", ", ".join(f"{k} {v}" for k, v in sample.items())))
    for key, value in rank.items():
        if key in ("schema_version", "pareto_axes") or key in RANK_ROW_KEYS:
            continue
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            facts.append((key, value))
    devices = {str(row.get("cost.device")) for row in rows if row.get("cost.device")}
    if devices:
        threads = {str(row.get("cost.threads")) for row in rows if row.get("cost.threads")}
        batch = {str(row.get("cost.batch_size")) for row in rows if row.get("cost.batch_size")}
        facts.append(("cost measured on", f"{', '.join(sorted(devices))}"
                      + (f", {', '.join(sorted(threads))} threads" if threads else "")
                      + (f", batch {', '.join(sorted(batch))}" if batch else "")))
    return facts


def _pareto_plot(rows: list[dict[str, Any]], name_column: str, columns: Sequence[str], axis: ParetoAxes) -> str:
    from headstart.evaluate import plots

    points = [(i, _number(row.get(axis.cost)), _number(row.get(axis.score))) for i, row in enumerate(rows)]
    points = [(i, c, s) for i, c, s in points if c is not None and s is not None]
    if len(points) < 2:
        return f'<p class="note">No Pareto plot of {_e(axis.score)} against {_e(axis.cost)}: fewer than two candidates have both.</p>'
    costs = [c for _, c, _ in points]
    cost_label = axis.cost
    scale = _unit(axis.cost, max(abs(c) for c in costs))
    if scale:
        divisor, unit = scale
        costs = [c / divisor for c in costs]
        cost_label = f"{axis.cost} ({unit})"
    front = None
    if axis.front:
        front = [k for k, (i, _, _) in enumerate(points) if rows[i].get(axis.front) is True]
    png = plots.pareto_png(
        [_candidate_label(rows[i], name_column, columns) for i, _, _ in points], costs, [s for _, _, s in points],
        cost_label, axis.score, front=front, higher_cost_is_better=axis.higher_cost_is_better,
        title=f"{axis.score} versus {axis.cost}",
    )
    return _img(png, f"{axis.score} against {axis.cost}") if png else _no_plots()


def _unit(column: str, largest: float) -> tuple[float, str] | None:
    lowered = column.lower()
    if "bytes" in lowered and largest >= 1e6:
        return 1e6, "MB"
    if ("macs" in lowered or "flops" in lowered) and largest >= 1e6:
        return (1e9, "G") if largest >= 1e9 else (1e6, "M")
    if "param" in lowered and largest >= 1e5:
        return 1e6, "millions"
    return None


def _candidate_label(row: dict[str, Any], name_column: str, columns: Sequence[str]) -> str:
    label = str(row.get(name_column))
    layer = _pick(columns, ("layer",))
    size = _pick(columns, ("image_size", "input_size", "resolution"))
    if layer and row.get(layer) not in (None, "", "pooled") and str(row.get(layer)) not in label:
        label += f" @{row[layer]}"
    if size and row.get(size) not in (None, "") and str(row.get(size)) not in label:
        label += f" {row[size]}px"
    return label


# ----- probe comparison ------------------------------------------------------------------------


PROBE_COLUMNS = ("backbone", "head", "image_size", "layer", "pool", "test/accuracy", "test/balanced_accuracy", "test/macro_f1",
                 "test/ece", "extract_s", "fit_s", "store_hit")


PROBE_HEADERS = {"image_size": "px", "test/accuracy": "accuracy", "test/balanced_accuracy": "balanced acc.", "test/macro_f1": "macro F1",
                 "test/ece": "ECE", "extract_s": "extract s", "fit_s": "fit s", "store_hit": "store hit"}


def _probe_section(run: RunFiles) -> Section | None:
    if not run.results:
        return None
    rows = run.results
    hidden = {"metrics", "bundle"}
    present = [c for c in dict.fromkeys(key for row in rows for key in row) if c not in hidden]
    columns = [c for c in PROBE_COLUMNS if c in present] + [c for c in present if c not in PROBE_COLUMNS]
    accuracy_column = _pick(columns, ("accuracy",))
    best_index = None
    if accuracy_column:
        values = [_number(row.get(accuracy_column)) for row in rows]
        if any(v is not None for v in values):
            best_index = max((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i])
    body = _table(
        columns,
        [[_fmt(row.get(c), c) for c in columns] for row in rows],
        numeric_from=1,
        highlight={best_index: "best"} if best_index is not None else {},
        header_labels=PROBE_HEADERS,
    )
    if best_index is not None:
        body += f'<p class="note">Test metrics; the best by {_e(accuracy_column)} is highlighted. Seconds are wall time on this machine.</p>'
    if accuracy_column and all(k in columns for k in ("backbone", "head")) and len(rows) > 1:
        from headstart.evaluate import plots

        png = plots.probe_bars_png(
            [{"backbone": r.get("backbone"), "head": r.get("head"), accuracy_column: _number(r.get(accuracy_column))} for r in rows],
            metric=accuracy_column, title=f"{accuracy_column} by backbone and head",
        )
        body += _img(png, "probe comparison") if png else _no_plots()
    return Section("probes", "Probe comparison", body)


# ----- training curves -------------------------------------------------------------------------


def log_phases(log: EpochLog) -> tuple[str | None, list[tuple[float, float, str]]]:
    """The phase column of an epoch log and its spans ``(start, end, label)``, one per run of equal values."""
    phase_column = next((c for c in log.rows[0] if c and any(w in c.lower() for w in PHASE_WORDS)), None)
    if phase_column is None:
        return None, []
    spans: list[tuple[float, float, str]] = []
    previous_x = None
    for row in log.rows:
        x = _number(row.get(log.x_name))
        if x is None:
            continue
        value = str(row.get(phase_column) or "").strip()
        label = value if _number(value) is None else f"{phase_column} {value}"
        if spans and spans[-1][2] == label:
            spans[-1] = (spans[-1][0], x, label)
        else:
            start = x if previous_x is None else (previous_x + x) / 2
            if spans:
                spans[-1] = (spans[-1][0], start, spans[-1][2])
            spans.append((start, x, label))
        previous_x = x
    if spans:
        spans[-1] = (spans[-1][0], spans[-1][1] + 0.5 if spans[-1][0] == spans[-1][1] else spans[-1][1], spans[-1][2])
    return phase_column, spans


def log_series(log: EpochLog, phase_column: str | None = None) -> tuple[list[float], dict[str, list[float | None]]]:
    """The x values and the numeric curve columns of an epoch log."""
    rows = [row for row in log.rows if _number(row.get(log.x_name)) is not None]
    x = [_number(row[log.x_name]) for row in rows]
    series: dict[str, list[float | None]] = {}
    for column in rows[0] if rows else []:
        if not column or column in (log.x_name, phase_column):
            continue
        lowered = column.lower()
        if any(word in lowered for word in NOT_CURVES) or lowered.endswith("_s"):
            continue
        values = [_number(row.get(column)) for row in rows]
        if any(v is not None for v in values):
            series[column] = values
    return x, series


def _curves_section(run: RunFiles) -> Section | None:
    if not run.logs:
        return None
    from headstart.evaluate import plots

    body = ""
    metrics = run.metrics if isinstance(run.metrics, dict) else {}
    names = policy_phase_names(metrics.get("policy"))
    best_epoch = _number(metrics.get("best_epoch"))
    for log in run.logs:
        phase_column, phases = log_phases(log)
        if names and phase_column:
            phases = [(start, end, names.get(label.split()[-1], label)) for start, end, label in phases]
        x, series = log_series(log, phase_column)
        if not series:
            body += f'<p class="note">{_e(log.name)}: no numeric columns to draw.</p>'
            continue
        marks = [(best_epoch, "best")] if best_epoch is not None and log.x_name.lower().startswith("epoch") else []
        png = plots.curves_png(x, series, log.x_name, phases, title=log.name, marks=marks)
        body += _img(png, f"training curves from {log.name}") if png else _no_plots()
        if phases:
            body += '<p class="note">Phases (column <code>' + _e(phase_column) + "</code>): " + "; ".join(
                f"{_e(label)} from {log.x_name} {math.ceil(start):g}" for start, _, label in phases) + ".</p>"
        if marks:
            body += f'<p class="note">The kept weights are those of {_e(log.x_name)} {best_epoch:g} (best validation metric).</p>'
        last = _numbers(log.rows[-1])
        body += _kv_table([(k, v) for k, v in last.items() if k], caption=f"last row of {log.name}")
    return Section("curves", "Training curves", body)


def policy_phase_names(policy: Any) -> dict[str, str]:
    """Phase number to a readable name from a fine-tuning policy's ``trainable`` and ``unfreeze``.

    Phase 0 trains ``trainable``; phase k adds the k-th entry of the ``unfreeze`` schedule (by epoch).
    """
    if not isinstance(policy, dict) or not isinstance(policy.get("unfreeze"), dict):
        return {}
    trainable = policy.get("trainable") or []
    names = {"0": "train " + ", ".join(str(p) for p in trainable) if trainable else "phase 0"}
    schedule = sorted(policy["unfreeze"].items(), key=lambda item: _number(item[0]) or 0)
    for k, (_, patterns) in enumerate(schedule, start=1):
        names[str(k)] = "+ " + ", ".join(str(p) for p in (patterns if isinstance(patterns, list) else [patterns]))
    return names


# ----- confusion, per-class, reliability --------------------------------------------------------


def _confusion_section(run: RunFiles) -> Section | None:
    found = main_result(run)
    if not found:
        return None
    where, result = found
    if result.get("multilabel"):
        return None
    matrix = result.get("confusion_matrix")
    labels = [str(row.get("class")) for row in result.get("per_class", [])]
    if not matrix or len(matrix) != len(labels):
        return None
    from headstart.evaluate import plots

    png = plots.confusion_matrix_png(matrix, labels, title=f"Confusion matrix ({result.get('split', 'test')}, {where})")
    body = _img(png, "confusion matrix", css="plot square") if png else _no_plots()
    pairs = _top_confusions(matrix, labels)
    if pairs:
        body += '<p class="note">Most frequent confusions: ' + "; ".join(
            f"{_e(t)} → {_e(p)} ({n})" for t, p, n in pairs) + ".</p>"
    return Section("confusion", "Confusion matrix", body)


def _top_confusions(matrix: Sequence[Sequence[int]], labels: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    pairs = [(labels[i], labels[j], int(matrix[i][j])) for i in range(len(labels)) for j in range(len(labels)) if i != j and matrix[i][j]]
    return sorted(pairs, key=lambda pair: -pair[2])[:k]


def _task_per_class(run: RunFiles) -> Section | None:
    """Per-class AP (detection) or IoU (segmentation): ``test.per_class`` as a dict, or ``test.per_class_iou``."""
    test = run.metrics.get("test") if isinstance(run.metrics, dict) else None
    if not isinstance(test, dict):
        return None
    per_class = test.get("per_class")
    if isinstance(per_class, dict) and per_class and all(isinstance(v, dict) for v in per_class.values()):
        columns = list(dict.fromkeys(k for v in per_class.values() for k in v))
        rows = [[name, *[_fmt(values.get(c), c) for c in columns]] for name, values in per_class.items()]
        title = "Per-class AP" if any("ap" in c for c in columns) else "Per-class metrics"
        return Section("per-class", title, _table(["class", *columns], rows, numeric_from=1))
    iou = test.get("per_class_iou")
    if isinstance(iou, dict) and iou:
        rows = [[name, "n/a" if value is None else _fmt(value, "iou")] for name, value in iou.items()]
        return Section("per-class", "Per-class IoU", _table(["class", "IoU"], rows, numeric_from=1))
    return None


def _per_class_section(run: RunFiles) -> Section | None:
    found = main_result(run)
    if not found:
        return _task_per_class(run)
    where, result = found
    per_class = result.get("per_class") or []
    if not per_class:
        return None
    f1s = [_number(row.get("f1")) for row in per_class]
    worst = min((i for i, v in enumerate(f1s) if v is not None), key=lambda i: f1s[i], default=None)
    rows_html = []
    for i, row in enumerate(per_class):
        cells = [f"<td>{_e(row.get('class'))}</td>"]
        for key in ("precision", "recall", "f1"):
            value = _number(row.get(key))
            bar = f'<div class="bar" style="width:{max(0.0, min(1.0, value or 0)) * 100:.1f}%"></div>' if value is not None else ""
            cells.append(f'<td class="num barcell">{bar}<span>{"" if value is None else f"{value:.3f}"}</span></td>')
        cells.append(f'<td class="num">{_e(_fmt(row.get("support")))}</td>')
        css = ' class="worst"' if i == worst and len(per_class) > 1 else ""
        rows_html.append(f"<tr{css}>{''.join(cells)}</tr>")
    body = (f'<table class="data"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr></thead>'
            f"<tbody>{''.join(rows_html)}</tbody></table>")
    body += f'<p class="note">{_e(result.get("split", "test"))} split of {_e(where)}; the class with the lowest F1 is marked.</p>'
    return Section("per-class", "Per-class metrics", body)


def _prediction_arrays(run: RunFiles) -> tuple[np.ndarray, np.ndarray] | None:
    confidence, correct = [], []
    for row in run.predictions:
        value = _number(row.get("confidence"))
        if value is None:
            continue
        confidence.append(value)
        correct.append(str(row.get("true")) == str(row.get("predicted")))
    if not confidence:
        return None
    return np.asarray(confidence), np.asarray(correct)


def _reliability_section(run: RunFiles) -> Section | None:
    arrays = _prediction_arrays(run)
    if arrays is None:
        return None
    from headstart.evaluate import plots

    found = main_result(run)
    where = found[0] if found else "test predictions"
    png = plots.reliability_png(*arrays, title="Reliability")
    body = _img(png, "reliability diagram", css="plot square") if png else _no_plots()
    body += (f'<p class="note">Top-1 confidence of {_e(where)} on {len(arrays[0])} test examples, in 15 equal-width bins. '
             "Bars below the diagonal mean overconfidence.</p>")
    return Section("reliability", "Calibration", body)


def _wrong_section(run: RunFiles, limit: int = WRONG_SHOWN) -> Section | None:
    if not run.predictions:
        return None
    wrong = [row for row in run.predictions if str(row.get("true")) != str(row.get("predicted")) and _number(row.get("confidence")) is not None]
    if not wrong:
        return Section("wrong", "Most confidently wrong", '<p class="note">No test example was misclassified.</p>')
    wrong.sort(key=lambda row: -_number(row["confidence"]))
    cards = []
    for row in wrong[:limit]:
        picture = None
        thumb = run.path / THUMBNAIL_DIR / f"{row.get('index')}.png"
        if thumb.is_file():
            picture = thumb.read_bytes()
        elif row.get("item") and Path(row["item"]).suffix.lower() in IMAGE_EXTENSIONS and Path(row["item"]).is_file():
            picture = _thumbnail(row["item"])
        card = "card"
        if picture is not None:
            figure = _img(picture, f"test example {row.get('index')}", css="thumb")
        elif row.get("item"):
            figure = f'<div class="text-item" title="{_e(row["item"])}">{_e(row["item"][:240])}</div>'
            card = "card text"
        else:
            figure = '<div class="text-item">(no picture)</div>'
        cards.append(
            f'<figure class="{card}">{figure}<figcaption><span class="true">true: {_e(row.get("true"))}</span>'
            f'<span class="pred">pred: {_e(row.get("predicted"))}</span>'
            f'<span class="conf">p={_number(row["confidence"]):.2f} · #{_e(row.get("index"))}</span></figcaption></figure>'
        )
    body = f'<div class="cards">{"".join(cards)}</div>'
    body += f'<p class="note">{len(wrong)} of {len(run.predictions)} test examples are wrong; the {min(limit, len(wrong))} with the highest confidence are shown.</p>'
    return Section("wrong", "Most confidently wrong", body)


def _grid_section(run: RunFiles, limit: int = GRID_SHOWN) -> Section | None:
    if not run.prediction_images:
        return None
    captions: dict[str, str] = {}
    caption_file = run.path / PREDICTION_IMAGE_DIR / "captions.json"
    if caption_file.is_file():
        loaded = _read_json(caption_file, run.notes)
        captions = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    cards = []
    for path in run.prediction_images[:limit]:
        picture = _thumbnail(str(path), size=360)
        if picture is None:
            continue
        caption = captions.get(path.name, path.stem)
        cards.append(f'<figure class="card wide">{_img(picture, caption, css="grid-image")}<figcaption>{_e(caption)}</figcaption></figure>')
    body = f'<div class="cards">{"".join(cards)}</div>'
    if len(run.prediction_images) > limit:
        body += f'<p class="note">{limit} of {len(run.prediction_images)} pictures in {PREDICTION_IMAGE_DIR}/ are shown.</p>'
    return Section("predictions", "Predictions on test images", body)


def _manifest_section(run: RunFiles) -> Section | None:
    manifest = run.manifest
    if not isinstance(manifest, dict):
        return None
    facts: list[tuple[str, Any]] = []
    command = manifest.get("command")
    if command:
        facts.append(("command", " ".join(str(c) for c in command) if isinstance(command, list) else command))
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in manifest.items():
        if key in ("command", "versions"):
            continue
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            tables.append((key, value))  # runs, candidates: one row each
        elif isinstance(value, (str, int, float, bool)) or value is None:
            facts.append((key, value))
        else:
            facts.append((key, json.dumps(value, default=str)[:400]))
    versions = manifest.get("versions")
    if isinstance(versions, dict):
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    body = _kv_table(facts)
    for key, rows in tables:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        if len(tables) > 1 or key != "runs":
            body += f'<p class="note"><code>{_e(key)}</code></p>'
        body += _table(columns, [[_short_hash(_fmt(r.get(c), c)) for c in columns] for r in rows], numeric_from=2, css="data compact")
    return Section("manifest", "Run details", f"<details open><summary>manifest.json</summary>{body}</details>")


# ----- HTML -----------------------------------------------------------------------------------

CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --accent:#2563eb; --best:#dcfce7; --front:#ffedd5; --bg:#f9fafb; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color:var(--ink); background:var(--bg); }
header { background:#0f172a; color:#f8fafc; padding:18px 28px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header p { margin:4px 0 0; color:#cbd5e1; font-size:13px; }
nav { padding:8px 28px; background:#fff; border-bottom:1px solid var(--line); position:sticky; top:0; z-index:1; }
nav a { color:var(--accent); margin-right:14px; text-decoration:none; font-size:13px; }
main { padding:8px 28px 40px; max-width:1320px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 18px; margin:16px 0; }
section h2 { margin:0 0 10px; font-size:16px; }
table { border-collapse:collapse; margin:6px 0 10px; font-size:13px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#f3f4f6; font-weight:600; white-space:nowrap; }
td.num { text-align:right; font-variant-numeric: tabular-nums; }
table.kv th { background:none; color:var(--muted); font-weight:500; }
table.compact td, table.compact th { padding:2px 8px; }
tr.best td { background:var(--best); font-weight:600; }
tr.front td { background:var(--front); }
tr.worst td { background:#fee2e2; }
td.barcell { position:relative; min-width:90px; }
td.barcell .bar { position:absolute; left:0; top:3px; bottom:3px; background:#dbeafe; border-radius:2px; }
td.barcell span { position:relative; }
.table-wrap { overflow-x:auto; }
.side { display:flex; flex-wrap:wrap; gap:12px 40px; align-items:flex-start; }
img.plot { max-width:100%; height:auto; display:block; margin:8px 0; }
img.square { max-width:720px; }
.chips { display:flex; flex-wrap:wrap; gap:10px; }
.chip { border:1px solid var(--line); border-radius:8px; padding:6px 12px; background:#f8fafc; }
.chip span { display:block; color:var(--muted); font-size:11px; text-transform:uppercase; letter-spacing:.03em; }
.chip b { font-size:16px; }
.note { color:var(--muted); font-size:12.5px; margin:6px 0; }
.cards { display:flex; flex-wrap:wrap; gap:10px; }
.card { margin:0; width:132px; border:1px solid var(--line); border-radius:6px; padding:6px; background:#fff; }
.card.wide { width:auto; max-width:380px; }
.card.text { width:250px; }
.card figcaption { font-size:11.5px; margin-top:4px; display:flex; flex-direction:column; }
.card .true { color:#15803d; } .card .pred { color:#b91c1c; font-weight:600; } .card .conf { color:var(--muted); }
img.thumb { width:118px; height:118px; object-fit:contain; image-rendering:pixelated; background:#111827; border-radius:4px; display:block; }
img.grid-image { width:280px; max-width:100%; height:auto; display:block; image-rendering:pixelated; }
.text-item { font-size:12px; height:118px; overflow:hidden; background:#f3f4f6; padding:4px; border-radius:4px; }
details summary { cursor:pointer; color:var(--muted); margin:4px 0; }
code { font-size:12px; }
.compare { display:grid; gap:14px; overflow-x:auto; }
.compare > div { min-width:340px; border-left:3px solid var(--line); padding-left:10px; }
.compare h3 { margin:0 0 6px; font-size:13px; color:var(--muted); }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _page(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{_e(s.id)}">{_e(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{_e(s.id)}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def render_report(run_dir: str | Path) -> str:
    """The HTML report of one run directory."""
    run = read_run(run_dir)
    sections = build_sections(run)
    if not any(s.id != "overview" for s in sections) and sections:
        sections.append(Section("empty", "Nothing to draw", '<p class="note">The run directory has no file a section draws yet.</p>'))
    return _page(f"headstart {run.kind}: {run.name}", _subtitle(run), sections)


def _subtitle(run: RunFiles) -> str:
    parts = [str(run.path)]
    dataset = run_dataset(run)
    if dataset and dataset.get("source"):
        parts.append(f"data: {dataset['source']}")
    parts.append("rendered " + time.strftime("%Y-%m-%d %H:%M"))
    return " · ".join(parts)


def render_comparison(run_dirs: Sequence[str | Path]) -> str:
    """One page comparing several run directories: a summary table, then each section side by side."""
    runs = [read_run(path) for path in run_dirs]
    names = _unique_names(runs)
    summary_rows = []
    for name, run in zip(names, runs):
        found = main_result(run)
        result = found[1] if found else {}
        seconds = _wall_seconds(run)
        summary_rows.append([
            name, run.kind, found[0] if found else "",
            _fmt(_number(result.get("accuracy")), "accuracy"), _fmt(_number(result.get("macro_f1")), "f1"),
            _fmt(_number(result.get("ece")), "ece"), _fmt(result.get("n")),
            _fmt(len(result.get("per_class") or []) or None), _fmt(seconds, "s") if seconds is not None else "",
        ])
    accuracies = [_number(row[3]) for row in summary_rows]
    best = max((i for i, a in enumerate(accuracies) if a is not None), key=lambda i: accuracies[i], default=None)
    summary = _table(
        ["run", "kind", "evaluated", "accuracy", "macro F1", "ECE", "test n", "classes", "wall s"], summary_rows,
        numeric_from=3, highlight={best: "best"} if best is not None else {}, table_id="main-table",
    )
    summary += "<p class=\"note\">" + " · ".join(f"<b>{_e(n)}</b>: <code>{_e(r.path)}</code>" for n, r in zip(names, runs)) + "</p>"
    sections = [Section("summary", "Summary", summary)]
    overlay = _overlay_curves(names, runs)
    if overlay is not None:
        sections.append(overlay)
    per_run = [{s.id: s for s in build_sections(run, main_table=False)} for run in runs]
    ids = list(dict.fromkeys(sid for sections_of_run in per_run for sid in sections_of_run))
    absent = '<p class="note">(not in this run)</p>'
    for sid in ids:
        title = next(p[sid].title for p in per_run if sid in p)
        columns = "".join(f"<div><h3>{_e(name)}</h3>{p[sid].body if sid in p else absent}</div>" for name, p in zip(names, per_run))
        sections.append(Section(sid, title, f'<div class="compare" style="grid-template-columns:repeat({len(runs)}, minmax(340px, 1fr))">{columns}</div>'))
    return _page(f"headstart: {len(runs)} runs compared", " · ".join(names) + " · rendered " + time.strftime("%Y-%m-%d %H:%M"), sections)


def _unique_names(runs: list[RunFiles]) -> list[str]:
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{run.path.resolve().parent.name}/{run.name}" if names.count(run.name) > 1 else run.name for run in runs]


def _wall_seconds(run: RunFiles) -> float | None:
    manifest = run.manifest if isinstance(run.manifest, dict) else {}
    for key in ("wall_s", "seconds", "wall_seconds", "elapsed_s"):
        if _number(manifest.get(key)) is not None:
            return _number(manifest[key])
    runs = manifest.get("runs")
    if isinstance(runs, list):
        total = sum((_number(r.get("extract_s")) or 0) + (_number(r.get("fit_s")) or 0) for r in runs if isinstance(r, dict))
        return total or None
    return None


def _overlay_curves(names: list[str], runs: list[RunFiles]) -> Section | None:
    """Each run's validation metric (or loss) on one plot, when two or more runs have epoch logs."""
    curves = []
    for name, run in zip(names, runs):
        if not run.logs:
            continue
        log = run.logs[0]
        phase_column, _ = log_phases(log)
        x, series = log_series(log, phase_column)
        preferred = [c for c in series if c.lower().startswith("val") and "loss" not in c.lower()] or \
                    [c for c in series if "loss" not in c.lower() and "lr" != c.lower()] or list(series)
        if preferred:
            curves.append((name, x, preferred[0], series[preferred[0]]))
    if len(curves) < 2:
        return None
    png = _overlay_png(curves)
    return Section("overlay", "Training curves, all runs", _img(png, "training curves of every run") if png else _no_plots())


def _overlay_png(curves: list[tuple[str, list[float], str, list[float | None]]], x_name: str = "epoch") -> bytes | None:
    from headstart.evaluate import plots

    plt = plots._pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for k, (name, x, column, values) in enumerate(curves):
        points = [(a, b) for a, b in zip(x, values) if b is not None]
        ax.plot([a for a, _ in points], [b for _, b in points], "-o", markersize=3, color=plots.PALETTE[k % len(plots.PALETTE)],
                label=f"{name}: {column}")
    ax.set_xlabel(x_name)
    ax.set_title("validation curve of each run")
    ax.legend(fontsize=7, frameon=False)
    return plots._png(fig)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``run_dir`` to ``run_dir/report.html`` (or ``out``) and return the file's path."""
    from headstart.io import atomic_write_bytes

    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    page = render_report(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, page.encode())
    return path


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Render a side-by-side comparison of ``run_dirs`` to ``out`` and return its path."""
    from headstart.io import atomic_write_bytes

    path = Path(out)
    page = render_comparison(run_dirs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, page.encode())
    return path


# ----- small HTML helpers ----------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, column: str = "") -> str:
    """A number formatted for a table cell; other values as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and math.isfinite(value):
        scale = _unit(column, abs(value))
        if scale:
            return f"{value / scale[0]:.2f} {scale[1].replace('millions', 'M')}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1, css: str = "data",
           highlight: dict[int, str] | None = None, table_id: str | None = None, short_headers: bool = False,
           header_labels: dict[str, str] | None = None) -> str:
    highlight = highlight or {}
    labels = [(header_labels or {}).get(c, c) for c in columns]
    if short_headers:
        shorts = [c.split(".")[-1] for c in columns]
        labels = [short if shorts.count(short) == 1 else column for short, column in zip(shorts, columns)]
    head = "".join(f'<th title="{_e(c)}">{_e(label)}</th>' for c, label in zip(columns, labels))
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, value in enumerate(row):
            numeric = j >= numeric_from and _number(str(value).replace(",", "").rstrip("M")) is not None
            cells.append(f'<td class="num">{_e(value)}</td>' if numeric else f"<td>{_e(value)}</td>")
        row_css = f' class="{highlight[i]}"' if i in highlight else ""
        body.append(f"<tr{row_css}>{''.join(cells)}</tr>")
    id_attr = f' id="{table_id}"' if table_id else ""
    return f'<div class="table-wrap"><table{id_attr} class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _short_hash(text: str) -> str:
    """A long hex digest (sha256, store key) cut to 12 characters; the full one is in manifest.json."""
    return text[:12] + "…" if len(text) > 24 and re.fullmatch(r"[0-9a-f]+", text) else text


def _kv_table(facts: Sequence[tuple[str, Any]], caption: str | None = None) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v, k))}</td></tr>" for k, v in facts)
    cap = f'<caption class="note">{_e(caption)}</caption>' if caption else ""
    return f'<table class="kv">{cap}{rows}</table>'


def _img(png: bytes, alt: str, css: str = "plot") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _no_plots() -> str:
    from headstart.evaluate.plots import INSTALL_HINT

    return f'<p class="note">Plots need matplotlib: {_e(INSTALL_HINT)}.</p>'
