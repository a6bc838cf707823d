"""Run directories: the files every command with ``--out`` writes, and the reader the report draws from.

This package owns the run directory's layout (:mod:`headstart.runs.schema`: file names, columns,
keys and the schema version written into ``manifest.json``), its shared writers
(:func:`write_manifest`, :func:`write_test_predictions`) and its reader (:func:`read_run`). It sits
low: it imports only headstart's core modules, so anything that writes a run can use it. The report
(:mod:`headstart.report`) is drawn from what :func:`read_run` returns.
"""

from __future__ import annotations

from headstart.runs.read import (
    EpochLog,
    RunFiles,
    as_number,
    csv_numbers,
    eval_results,
    main_result,
    read_captions,
    read_csv,
    read_json,
    read_run,
    run_dataset,
)
from headstart.runs.schema import (
    CAPTIONS_FILE,
    EPOCH_LOG_FILE,
    IMAGE_EXTENSIONS,
    MANIFEST_FILE,
    METRICS_FILE,
    PREDICTION_COLUMNS,
    PREDICTION_IMAGE_DIR,
    PREDICTIONS_FILE,
    RANK_CSV_FILE,
    RANK_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    SCHEMA_VERSION,
    THUMBNAIL_DIR,
)
from headstart.runs.write import WRONG_SHOWN, thumbnail_png, write_manifest, write_test_predictions

__all__ = [
    "CAPTIONS_FILE",
    "EPOCH_LOG_FILE",
    "IMAGE_EXTENSIONS",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "PREDICTION_COLUMNS",
    "PREDICTION_IMAGE_DIR",
    "RANK_CSV_FILE",
    "RANK_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "THUMBNAIL_DIR",
    "WRONG_SHOWN",
    "EpochLog",
    "RunFiles",
    "as_number",
    "csv_numbers",
    "eval_results",
    "main_result",
    "read_captions",
    "read_csv",
    "read_json",
    "read_run",
    "run_dataset",
    "thumbnail_png",
    "write_manifest",
    "write_test_predictions",
]
