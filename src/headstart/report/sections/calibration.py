"""Calibration: the bundle's temperature and class-prior correction, with the ECE before and after the temperature.

Fine-tuning runs record one ``calibration`` dict in ``metrics.json`` (validation and test ECE and NLL
before and after ``T``); probe runs record one per (backbone, head) in ``runs``.
"""

from __future__ import annotations

from typing import Any

from headstart.report.html import Section, esc, fmt, kv_table, table
from headstart.runs import RunFiles, as_number
from headstart.runs.schema import CALIBRATION, PROBE_RUNS

NOTE = ("The temperature T divides every logit of a prediction alike (softmax(logits / T)), so the predicted class does not change; "
        "T > 1 softens overconfident probabilities, T < 1 sharpens underconfident ones. ECE: expected calibration error over 15 "
        "equal-width confidence bins (lower is better).")


def calibration_section(run: RunFiles) -> Section | None:
    metrics = run.metrics if isinstance(run.metrics, dict) else {}
    record = metrics.get(CALIBRATION)
    if isinstance(record, dict):
        return Section("calibration-fit", "Temperature and prior", _single(record))
    runs = metrics.get(PROBE_RUNS)
    if isinstance(runs, list):
        rows = [r for r in runs if isinstance(r, dict) and isinstance(r.get(CALIBRATION), dict)]
        if rows:
            return Section("calibration-fit", "Temperature and prior", _probe(rows))
    return None


def _shift(record: dict[str, Any]) -> str:
    shift = record.get("log_prior_shift")
    if not isinstance(shift, list) or not shift:
        return "none"
    return ", ".join(fmt(as_number(v)) for v in shift)


def _single(record: dict[str, Any]) -> str:
    facts = [("temperature T", as_number(record.get("temperature"))), ("fitted", record.get("note")), ("prior", record.get("prior")),
             ("log prior shift", _shift(record))]
    body = kv_table([(k, v) for k, v in facts if v is not None])
    rows = []
    for split, metric in (("val", "ece"), ("val", "nll"), ("test", "ece")):
        before, after = as_number(record.get(f"{split}_{metric}_before")), as_number(record.get(f"{split}_{metric}_after"))
        if before is not None and after is not None:
            rows.append([f"{split} {metric.upper()}", fmt(before), fmt(after)])
    if rows:
        body += table(["", "before T", "after T"], rows, numeric_from=1)
    return body + f'<p class="note">{esc(NOTE)}</p>'


def _probe(runs: list[dict[str, Any]]) -> str:
    rows = []
    for row in runs:
        record = row[CALIBRATION]
        rows.append([row.get("backbone"), row.get("head"), fmt(as_number(record.get("temperature"))),
                     fmt(as_number(record.get("test_ece_before"))), fmt(as_number(record.get("test_ece_after"))),
                     record.get("prior"), _shift(record), record.get("note")])
    body = table(["backbone", "head", "T", "test ECE before T", "test ECE after T", "prior", "log prior shift", "how"], rows, numeric_from=2)
    return body + f'<p class="note">{esc(NOTE)}</p>'
