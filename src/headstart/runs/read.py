"""Reading a run directory: :func:`read_run` and the typed accessors the report draws from.

Unreadable files become notes, not errors, so a report of a damaged run still shows what it can.
A run directory of schema version 0 (no ``schema`` in its manifest) reads the same way.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.errors import DataError
from headstart.runs.schema import (
    AUTO_FILE,
    CAPTIONS_FILE,
    DATASET,
    EPOCH_COLUMNS,
    LEGACY_SCHEMA_VERSION,
    LOG_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    PREDICTION_COLUMNS,
    PREDICTION_IMAGE_DIR,
    PREDICTIONS_FILE,
    PROBE_BEST,
    PROBE_RUNS,
    RANK_FILE,
    RESULTS_FILE,
    RUN_FILES,
    SCHEMA_FIELD,
    IMAGE_EXTENSIONS,
)


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
        auto: ``auto.json`` of a ``headstart auto`` run: its plan, steps and decisions.
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
    auto: dict[str, Any] | None = None
    logs: list[EpochLog] = field(default_factory=list)
    predictions: list[dict[str, str]] = field(default_factory=list)
    prediction_images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def schema(self) -> int:
        """The run-directory schema version from ``manifest.json``; 0 for a run written before it had one."""
        value = self.manifest.get(SCHEMA_FIELD) if isinstance(self.manifest, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else LEGACY_SCHEMA_VERSION

    @property
    def kind(self) -> str:
        """``probe``, ``finetune``, ``rank``, ``detect``, ``segment``, or ``run``, from the command and the files."""
        command = (self.manifest or {}).get("command") or []
        words = [str(word) for word in command] if isinstance(command, list) else str(command).split()
        for kind in ("auto", "finetune", "rank", "probe", "demo", "detect", "segment"):
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
    run.metrics = read_json(path / METRICS_FILE, run.notes)
    run.manifest = read_json(path / MANIFEST_FILE, run.notes)
    run.rank = read_json(path / RANK_FILE, run.notes)
    auto = read_json(path / AUTO_FILE, run.notes)
    run.auto = auto if isinstance(auto, dict) else None
    if isinstance(run.metrics, dict) and isinstance(run.metrics.get(PROBE_RUNS), list):
        run.results = [row for row in run.metrics[PROBE_RUNS] if isinstance(row, dict)]
    elif (path / RESULTS_FILE).is_file():
        run.results = [csv_numbers(row) for row in read_csv(path / RESULTS_FILE, run.notes)]
    for csv_path in sorted(path.glob("*.csv")) + sorted(path.glob(f"{LOG_DIR}/*.csv")):
        if csv_path.name in (RESULTS_FILE, PREDICTIONS_FILE):
            continue
        rows = read_csv(csv_path, run.notes)
        x_name = _epoch_column(rows)
        if rows and x_name:
            run.logs.append(EpochLog(name=str(csv_path.relative_to(path)), x_name=x_name, rows=rows))
    if (path / PREDICTIONS_FILE).is_file():
        rows = read_csv(path / PREDICTIONS_FILE, run.notes)
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


def read_json(path: Path, notes: list[str]) -> Any:
    """A JSON file's content; None when it is missing, and a note when it cannot be read."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: could not be read ({exc}); its sections are left out.")
        return None


def read_csv(path: Path, notes: list[str]) -> list[dict[str, str]]:
    """A CSV file's rows as dicts; none, and a note, when it cannot be read."""
    try:
        with open(path, newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        notes.append(f"{path.name}: could not be read ({exc}); its section is left out.")
        return []


def read_captions(run: RunFiles) -> dict[str, str]:
    """``predictions/captions.json``: picture file name to caption (an unreadable file becomes a note)."""
    caption_file = run.path / PREDICTION_IMAGE_DIR / CAPTIONS_FILE
    if not caption_file.is_file():
        return {}
    loaded = read_json(caption_file, run.notes)
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _epoch_column(rows: list[dict[str, str]]) -> str | None:
    if not rows:
        return None
    for name in rows[0]:
        if name and name.strip().lower() in EPOCH_COLUMNS:
            return name
    return None


def as_number(value: Any) -> float | None:
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


def csv_numbers(row: dict[str, str]) -> dict[str, Any]:
    """CSV strings as numbers or booleans where they are."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value in ("True", "False"):
            out[key] = value == "True"
        elif value == "":
            out[key] = None
        else:
            number = as_number(value)
            out[key] = value if number is None else (int(number) if number.is_integer() and "." not in value else number)
    return out


# ----- accessors -----------------------------------------------------------------------------------


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
        best = run.metrics.get(PROBE_BEST) or {}
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


def run_dataset(run: RunFiles) -> dict[str, Any] | None:
    """The dataset summary of ``metrics.json``, else of ``rank.json``."""
    for document in (run.metrics, run.rank):
        if isinstance(document, dict) and isinstance(document.get(DATASET), dict):
            return document[DATASET]
    return None
