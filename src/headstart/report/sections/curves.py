"""Training curves from the run's epoch logs, with the unfreeze phases shaded and the kept epoch marked.

An epoch log is any ``*.csv`` (or ``logs/*.csv``) with an epoch or step column: headstart's
``metrics.csv`` and a hand-written loop's log alike. A column whose name holds one of
:data:`~headstart.runs.schema.PHASE_WORDS` is the phase of an unfreeze schedule; the phase numbers
are named from ``metrics.json`` ``policy``, and ``best_epoch`` is marked.
"""

from __future__ import annotations

import math
from typing import Any

from headstart.report.html import Section, esc, img, kv_table, no_plots
from headstart.runs import EpochLog, RunFiles, as_number, csv_numbers
from headstart.runs.schema import BEST_EPOCH, NOT_CURVES, PHASE_WORDS, POLICY


def log_phases(log: EpochLog) -> tuple[str | None, list[tuple[float, float, str]]]:
    """The phase column of an epoch log and its spans ``(start, end, label)``, one per run of equal values."""
    phase_column = next((c for c in log.rows[0] if c and any(w in c.lower() for w in PHASE_WORDS)), None)
    if phase_column is None:
        return None, []
    spans: list[tuple[float, float, str]] = []
    previous_x = None
    for row in log.rows:
        x = as_number(row.get(log.x_name))
        if x is None:
            continue
        value = str(row.get(phase_column) or "").strip()
        label = value if as_number(value) is None else f"{phase_column} {value}"
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
    rows = [row for row in log.rows if as_number(row.get(log.x_name)) is not None]
    x = [as_number(row[log.x_name]) for row in rows]
    series: dict[str, list[float | None]] = {}
    for column in rows[0] if rows else []:
        if not column or column in (log.x_name, phase_column):
            continue
        lowered = column.lower()
        if any(word in lowered for word in NOT_CURVES) or lowered.endswith("_s"):
            continue
        values = [as_number(row.get(column)) for row in rows]
        if any(v is not None for v in values):
            series[column] = values
    return x, series


def curves_section(run: RunFiles) -> Section | None:
    if not run.logs:
        return None
    from headstart.report import plots

    body = ""
    metrics = run.metrics if isinstance(run.metrics, dict) else {}
    names = policy_phase_names(metrics.get(POLICY))
    best_epoch = as_number(metrics.get(BEST_EPOCH))
    for log in run.logs:
        phase_column, phases = log_phases(log)
        if names and phase_column:
            phases = [(start, end, names.get(label.split()[-1], label)) for start, end, label in phases]
        x, series = log_series(log, phase_column)
        if not series:
            body += f'<p class="note">{esc(log.name)}: no numeric columns to draw.</p>'
            continue
        marks = [(best_epoch, "best")] if best_epoch is not None and log.x_name.lower().startswith("epoch") else []
        png = plots.curves_png(x, series, log.x_name, phases, title=log.name, marks=marks)
        body += img(png, f"training curves from {log.name}") if png else no_plots()
        if phases:
            body += '<p class="note">Phases (column <code>' + esc(phase_column) + "</code>): " + "; ".join(
                f"{esc(label)} from {log.x_name} {math.ceil(start):g}" for start, _, label in phases) + ".</p>"
        if marks:
            rule = metrics.get("keep_rule") if isinstance(metrics.get("keep_rule"), dict) else {}
            how = f"the {rule['rule']}" if rule.get("rule") else "best validation metric"
            body += f'<p class="note">The kept weights are those of {esc(log.x_name)} {best_epoch:g} ({esc(how)}).</p>'
        last = csv_numbers(log.rows[-1])
        body += kv_table([(k, v) for k, v in last.items() if k], caption=f"last row of {log.name}")
    return Section("curves", "Training curves", body)


def policy_phase_names(policy: Any) -> dict[str, str]:
    """Phase number to a readable name from a fine-tuning policy's ``trainable`` and ``unfreeze``.

    Phase 0 trains ``trainable``; phase k adds the k-th entry of the ``unfreeze`` schedule (by epoch).
    """
    if not isinstance(policy, dict) or not isinstance(policy.get("unfreeze"), dict):
        return {}
    trainable = policy.get("trainable") or []
    names = {"0": "train " + ", ".join(str(p) for p in trainable) if trainable else "phase 0"}
    schedule = sorted(policy["unfreeze"].items(), key=lambda item: as_number(item[0]) or 0)
    for k, (_, patterns) in enumerate(schedule, start=1):
        names[str(k)] = "+ " + ", ".join(str(p) for p in (patterns if isinstance(patterns, list) else [patterns]))
    return names

