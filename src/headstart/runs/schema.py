"""The run directory's files: their names, their columns and the keys the report reads.

A run directory is the ``--out`` folder of ``probe``, ``rank``, ``finetune``, ``detect train``,
``segment train`` and ``demo``. Every name a writer and the report share is defined here once.

``manifest.json`` carries ``"schema": SCHEMA_VERSION``. A run directory whose manifest has no
``schema`` field (or that has no manifest) was written before the field existed: schema version 0,
the legacy layout, which :func:`headstart.runs.read_run` still reads.

========================================  =====================================================
file                                      written by, and what it holds
========================================  =====================================================
``manifest.json``                         every command: command line, versions, seed, keys, times
``metrics.json``                          probe (``dataset``, ``runs``, ``best``); finetune and
                                          detect/segment train (``backbone``, ``strategy``,
                                          ``policy``, ``best_epoch``, ``test``)
``results.csv``                           probe: one row per (backbone, head), :data:`PROBE_COLUMNS`
``rank.json`` / ``rank.csv``              rank: ``RankTable.to_dict()`` (:data:`RANK_ROWS` ...)
``metrics.csv``                           finetune, detect/segment train: one row per epoch
``test_predictions.csv``                  probe: :data:`PREDICTION_COLUMNS`
``thumbnails/<index>.png``                probe: the most confidently wrong test examples
``predictions/*.png``                     detect/segment train: predictions drawn on test images,
                                          captioned by ``predictions/captions.json``
``report.html``                           the report drawn from all of the above
========================================  =====================================================
"""

from __future__ import annotations

# Version of the run-directory layout, written into manifest.json as "schema". 0: no such field.
SCHEMA_VERSION = 1
SCHEMA_FIELD = "schema"
LEGACY_SCHEMA_VERSION = 0

MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.csv"
RANK_FILE = "rank.json"
RANK_CSV_FILE = "rank.csv"
EPOCH_LOG_FILE = "metrics.csv"
LOG_DIR = "logs"
PREDICTIONS_FILE = "test_predictions.csv"
PREDICTION_COLUMNS = ("index", "item", "true", "predicted", "confidence")
THUMBNAIL_DIR = "thumbnails"
PREDICTION_IMAGE_DIR = "predictions"
CAPTIONS_FILE = "captions.json"
REPORT_FILE = "report.html"
AUTO_FILE = "auto.json"  # headstart auto: the plan, every step's result and cost, and one sentence per decision
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
# The files a report draws (besides epoch logs and predictions/).
RUN_FILES = (METRICS_FILE, MANIFEST_FILE, RESULTS_FILE, RANK_FILE, PREDICTIONS_FILE)

# ----- manifest.json ---------------------------------------------------------------------------
WALL_SECONDS = "wall_seconds"  # the run's wall time; probe's manifest also lists "runs" with extract_s and fit_s

# ----- metrics.json ----------------------------------------------------------------------------
DATASET = "dataset"  # probe's metrics.json and rank.json: the dataset summary
PROBE_RUNS = "runs"  # probe: one dict per (backbone, head), each with its "metrics" (an EvalResult)
PROBE_BEST = "best"  # probe: the best run's row
BEST_EPOCH = "best_epoch"  # finetune: the epoch whose weights were kept
POLICY = "policy"  # finetune: the policy's "trainable" and "unfreeze" schedule
# finetune: the bundle's calibration (temperature, prior shift, val/test ECE before and after T); probe: in each run's dict
CALIBRATION = "calibration"
# The columns of a probe run's row (metrics.json "runs", results.csv), in the report's order.
PROBE_COLUMNS = ("backbone", "head", "image_size", "layer", "pool", "test/accuracy", "test/balanced_accuracy", "test/macro_f1",
                 "test/ece", "temperature", "extract_s", "fit_s", "store_hit")
PROBE_ACCURACY = "test/accuracy"

# ----- rank.json (headstart.select.rank.RankTable.to_dict) --------------------------------------
RANK_SCHEMA = "schema_version"  # present in every rank.json that RankTable wrote
RANK_ROWS = "rows"
RANK_NAME = "candidate"
RANK_POSITION = "rank"
RANK_PARETO_AXES = "pareto_axes"  # {"<front flag column>": "<score> vs <cost>"}
RANK_SKIPPED = "skipped"  # [{"candidate": ..., "reason": ...}]
RANK_COMBINATION = "combination"  # {"method", "scores", "description"}
RANK_SAMPLE = "sample"
RANK_LAYER = "layer"
RANK_IMAGE_SIZE = "image_size"
RANK_SPEED_COLUMNS = ("images_per_s",)  # cost columns where more is better
# Row columns the rank table leaves out (flattened names; "seconds.*" too).
RANK_HIDDEN = ("n_samples", "cost.image_size", "cost.batch_size", "cost.device", "cost.threads", "cost_error")

# ----- epoch logs --------------------------------------------------------------------------------
# Any *.csv (or logs/*.csv) with one of these columns is an epoch log: headstart's metrics.csv and
# the logs of your own loop alike (docs/reports.md).
EPOCH_COLUMNS = ("epoch", "epochs", "step", "global_step", "iteration")
# Columns of an epoch log that hold the phase of an unfreeze schedule.
PHASE_WORDS = ("phase", "stage", "unfreeze", "unfrozen")
# Columns of an epoch log that are bookkeeping, not curves.
NOT_CURVES = ("time", "second", "elapsed", "wall", "throughput", "per_s", "step", "samples", "items", "param", "best")
