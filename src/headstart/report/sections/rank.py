"""The rank table and its Pareto plots, from ``rank.json``.

``rank.json`` as :class:`headstart.select.rank.RankTable` writes it carries ``schema_version``;
the section reads its keys (:mod:`headstart.runs.schema`, ``RANK_*``): the ``rows`` with their
``rank`` and ``candidate``, a Pareto plot for each entry of ``pareto_axes``, the ``skipped``
candidates, the ``combination`` and the ``sample``.

A ``rank.json`` without ``schema_version`` (schema 0: written by hand or by another tool) is read by
the legacy reader: the rows may be a list or sit under ``rows`` or ``candidates``, the name column is
the first of :data:`LEGACY_NAME_KEYS`, and without ``pareto_axes`` the plot puts the first of
:data:`LEGACY_SCORE_KEYS` against the first of :data:`LEGACY_COST_KEYS` (or images/s), with the
front flagged by a ``pareto`` column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headstart.report.html import Section, esc, fmt, img, kv_table, no_plots, table, unit_scale
from headstart.runs import RunFiles, as_number
from headstart.runs.schema import (
    RANK_COMBINATION,
    RANK_HIDDEN,
    RANK_IMAGE_SIZE,
    RANK_LAYER,
    RANK_NAME,
    RANK_PARETO_AXES,
    RANK_POSITION,
    RANK_ROWS,
    RANK_SAMPLE,
    RANK_SCHEMA,
    RANK_SKIPPED,
    RANK_SPEED_COLUMNS,
)

# The legacy (schema 0) reader's column names.
LEGACY_ROW_KEYS = (RANK_ROWS, "candidates")
LEGACY_NAME_KEYS = (RANK_NAME, "name", "backbone")
LEGACY_SCORE_KEYS = ("probe_accuracy", "accuracy", "combined", "logme")
LEGACY_COST_KEYS = ("macs", "params")
LEGACY_FRONT_KEYS = ("pareto",)


def is_schema_rank(rank: Any) -> bool:
    """Whether ``rank`` is a ``rank.json`` that :class:`~headstart.select.rank.RankTable` wrote."""
    return isinstance(rank, dict) and RANK_SCHEMA in rank


def rank_rows(rank: Any) -> list[dict[str, Any]]:
    """The candidate rows of ``rank.json``, nested dicts flattened to ``a.b`` keys.

    Reads the ``rows`` of a schema ``rank.json``; the legacy reader also accepts a list of row
    dicts, or one under ``candidates``. A score given as ``{"value": null, "reason": ...}`` becomes
    ``"n/a: reason"``.
    """
    rows = rank
    if isinstance(rank, dict):
        keys = (RANK_ROWS,) if is_schema_rank(rank) else LEGACY_ROW_KEYS
        rows = next((rank[key] for key in keys if isinstance(rank.get(key), list)), None)
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


def pick_column(columns: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first column whose name (or last dotted part) is one of ``wanted``, in ``wanted`` order."""
    lowered = {column: column.lower().replace("-", "_").replace(" ", "_").split(".")[-1].split("/")[-1] for column in columns}
    for want in wanted:
        for column, short in lowered.items():
            if short == want:
                return column
    return None


@dataclass
class ParetoAxes:
    """One Pareto plot of a ranking: the score (y) and cost (x) columns and the front's flag column."""

    score: str
    cost: str
    front: str | None
    higher_cost_is_better: bool


def pareto_axes(rank: Any, columns: Sequence[str]) -> list[ParetoAxes]:
    """The Pareto plots a ranking asks for.

    ``rank.json`` names them as ``"pareto_axes": {"pareto": "combined vs MACs", ...}``: each key is
    the column flagging the front, each value ``"<score> vs <cost>"``, and a name matches a column
    or its last dotted part (``MACs`` is ``cost.macs``). A legacy ``rank.json`` without them gets
    the first score column of :data:`LEGACY_SCORE_KEYS` against the first cost column.
    """
    found: list[ParetoAxes] = []
    declared = rank.get(RANK_PARETO_AXES) if isinstance(rank, dict) else None
    if isinstance(declared, dict):
        for flag, text in declared.items():
            match = re.match(r"\s*(.+?)\s+vs\.?\s+(.+?)\s*$", str(text))
            if not match:
                continue
            score = pick_column(columns, (_column_word(match.group(1)),))
            cost = pick_column(columns, (_column_word(match.group(2)),))
            if score and cost:
                found.append(ParetoAxes(score, cost, flag if flag in columns else None, _is_speed(cost)))
    if found or is_schema_rank(rank):
        return found
    score = pick_column(columns, LEGACY_SCORE_KEYS)
    cost = pick_column(columns, LEGACY_COST_KEYS) or pick_column(columns, RANK_SPEED_COLUMNS)
    if score and cost:
        found.append(ParetoAxes(score, cost, pick_column(columns, LEGACY_FRONT_KEYS), _is_speed(cost)))
    return found


def _column_word(text: str) -> str:
    """``"images/s"`` -> ``images_per_s``; ``"MACs"`` -> ``macs``."""
    return text.strip().lower().replace("/", "_per_").replace(" ", "_").replace("-", "_")


def _is_speed(column: str) -> bool:
    return column.lower().split(".")[-1] in RANK_SPEED_COLUMNS


def _no_axes_note(rank: Any) -> str:
    if is_schema_rank(rank):
        declared = rank.get(RANK_PARETO_AXES)
        wanted = ", ".join(str(v) for v in declared.values()) if isinstance(declared, dict) and declared else "none declared"
        return f'<p class="note">No Pareto plot: rank.json has no score and cost columns for its pareto_axes ({esc(wanted)}).</p>'
    return ('<p class="note">No Pareto plot: rank.json has no score and cost columns '
            f'(looked for {", ".join(LEGACY_SCORE_KEYS)} and {", ".join(LEGACY_COST_KEYS + RANK_SPEED_COLUMNS)}).</p>')


def rank_section(run: RunFiles) -> Section | None:
    if run.rank is None:
        return None
    rows = rank_rows(run.rank)
    if not rows:
        expected = RANK_ROWS if is_schema_rank(run.rank) else f"a list of dicts, or one under {', '.join(LEGACY_ROW_KEYS)}"
        return Section("rank", "Backbone ranking", f'<p class="note">rank.json has no candidate rows (expected {expected}).</p>')
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if is_schema_rank(run.rank):
        rank_column = RANK_POSITION if RANK_POSITION in columns else None
        name_column = RANK_NAME if RANK_NAME in columns else columns[0]
    else:
        rank_column = pick_column(columns, (RANK_POSITION,))
        name_column = pick_column(columns, LEGACY_NAME_KEYS) or columns[0]
    if rank_column and all(as_number(row.get(rank_column)) is not None for row in rows):
        rows = sorted(rows, key=lambda row: as_number(row[rank_column]))
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
            body += kv_table(facts)
    body += table(
        ordered,
        [["n/a" if isinstance(row.get(c), str) and row[c].startswith("n/a: ") else fmt(row.get(c), c) for c in ordered] for row in rows],
        numeric_from=1,
        highlight={i: "front" for i in front_rows},
        short_headers=True,
    )
    if reasons:
        body += '<ul class="note">' + "".join(
            f"<li><code>{esc(column)}</code> is n/a for {esc(', '.join(names))}: {esc(reason)}</li>" for (column, reason), names in reasons.items()
        ) + "</ul>"
    if front_rows:
        body += (f'<p class="note">Highlighted rows are on the Pareto front of {esc(axes[0].score)} against '
                 f"{esc(axes[0].cost)} (column <code>{esc(front_column)}</code>).</p>")
    errors = [(row.get(name_column), row.get("cost_error")) for row in rows if row.get("cost_error")]
    skipped = run.rank.get(RANK_SKIPPED) if isinstance(run.rank, dict) else None
    if errors:
        body += '<p class="note">No cost for ' + "; ".join(f"{esc(n)}: {esc(e)}" for n, e in errors) + ".</p>"
    if isinstance(skipped, list) and skipped:
        items = "".join(f"<li><code>{esc(s.get('candidate'))}</code>: {esc(s.get('reason'))}</li>" for s in skipped if isinstance(s, dict))
        body += f"<details open><summary>{len(skipped)} candidate(s) skipped</summary><ul>{items}</ul></details>"
    if not axes:
        body += _no_axes_note(run.rank)
    for axis in axes:
        body += _pareto_plot(rows, name_column, columns, axis, is_schema_rank(run.rank))
    return Section("rank", "Backbone ranking", body)


def _rank_facts(rank: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    facts: list[tuple[str, Any]] = []
    combination = rank.get(RANK_COMBINATION)
    if isinstance(combination, dict) and combination.get("description"):
        facts.append(("combined score", combination["description"]))
    sample = rank.get(RANK_SAMPLE)
    if isinstance(sample, dict):
        facts.append(("sample", ", ".join(f"{k} {v}" for k, v in sample.items())))
    for key, value in rank.items():
        if key in (RANK_SCHEMA, RANK_PARETO_AXES) or key in LEGACY_ROW_KEYS:
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


def _pareto_plot(rows: list[dict[str, Any]], name_column: str, columns: Sequence[str], axis: ParetoAxes, schema: bool) -> str:
    from headstart.report import plots

    points = [(i, as_number(row.get(axis.cost)), as_number(row.get(axis.score))) for i, row in enumerate(rows)]
    points = [(i, c, s) for i, c, s in points if c is not None and s is not None]
    if len(points) < 2:
        return f'<p class="note">No Pareto plot of {esc(axis.score)} against {esc(axis.cost)}: fewer than two candidates have both.</p>'
    costs = [c for _, c, _ in points]
    cost_label = axis.cost
    scale = unit_scale(axis.cost, max(abs(c) for c in costs))
    if scale:
        divisor, unit = scale
        costs = [c / divisor for c in costs]
        cost_label = f"{axis.cost} ({unit})"
    front = None
    if axis.front:
        front = [k for k, (i, _, _) in enumerate(points) if rows[i].get(axis.front) is True]
    if schema:
        layer = RANK_LAYER if RANK_LAYER in columns else None
        size = RANK_IMAGE_SIZE if RANK_IMAGE_SIZE in columns else None
    else:
        layer, size = pick_column(columns, (RANK_LAYER,)), pick_column(columns, (RANK_IMAGE_SIZE,))
    png = plots.pareto_png(
        [_candidate_label(rows[i], name_column, layer, size) for i, _, _ in points], costs, [s for _, _, s in points],
        cost_label, axis.score, front=front, higher_cost_is_better=axis.higher_cost_is_better,
        title=f"{axis.score} versus {axis.cost}",
    )
    return img(png, f"{axis.score} against {axis.cost}") if png else no_plots()


def _candidate_label(row: dict[str, Any], name_column: str, layer: str | None, size: str | None) -> str:
    label = str(row.get(name_column))
    if layer and row.get(layer) not in (None, "", "pooled") and str(row.get(layer)) not in label:
        label += f" @{row[layer]}"
    if size and row.get(size) not in (None, "") and str(row.get(size)) not in label:
        label += f" {row[size]}px"
    return label
