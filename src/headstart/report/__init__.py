"""Self-contained HTML reports of run directories.

A report is drawn from the files in a run directory alone (read by :func:`headstart.runs.read_run`),
so ``headstart report RUN_DIR`` can re-render it at any time, and every command that writes those
files gets a report for free. Each section appears when its file is there:

========================================  =====================================================
file in the run directory                 section (module under ``headstart.report.sections``)
========================================  =====================================================
``metrics.json`` ``dataset``              dataset summary: classes, counts per split, skipped files (overview)
``rank.json``                             rank table and the accuracy-versus-cost Pareto plot (rank)
``metrics.json`` ``runs`` / results.csv   probe comparison (table and bars) (probe)
``*.csv`` with an ``epoch`` column        training curves, unfreeze phases marked (curves)
metrics with ``per_class``                confusion matrix and per-class metrics (evaluation)
``test_predictions.csv``                  reliability diagram (evaluation), most confidently wrong examples (pictures)
``metrics.json`` ``calibration``          temperature, prior shift, ECE before and after T (calibration)
``thumbnails/<index>.png``                the pictures of those examples (pictures)
``predictions/*.png``                     a grid of predictions drawn on test images (pictures)
``manifest.json``                         run details: command, versions, seed, keys, times (manifest)
========================================  =====================================================

The package: :mod:`~headstart.report.sections` (one builder per section), :mod:`~headstart.report.page`
(the page shell, :func:`render_report`, :func:`write_report`, :func:`write_report_or_warn`),
:mod:`~headstart.report.compare` (several runs side by side), :mod:`~headstart.report.html` (escaping,
tables, number formats) and :mod:`~headstart.report.plots` (matplotlib, imported lazily). The file
names, columns and keys it reads are :mod:`headstart.runs.schema`'s.
"""

from __future__ import annotations

from headstart.report.compare import render_comparison, write_comparison
from headstart.report.html import Section
from headstart.report.page import render_report, write_report, write_report_or_warn
from headstart.report.sections import build_sections
from headstart.report.sections.curves import log_phases, log_series, policy_phase_names
from headstart.report.sections.rank import ParetoAxes, pareto_axes, rank_rows
from headstart.runs import EpochLog, RunFiles, read_run, write_test_predictions

__all__ = [
    "EpochLog",
    "ParetoAxes",
    "RunFiles",
    "Section",
    "build_sections",
    "log_phases",
    "log_series",
    "pareto_axes",
    "policy_phase_names",
    "rank_rows",
    "read_run",
    "render_comparison",
    "render_report",
    "write_comparison",
    "write_report",
    "write_report_or_warn",
    "write_test_predictions",
]
