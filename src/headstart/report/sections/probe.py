"""The probe comparison: one row per (backbone, head) from ``metrics.json`` ``runs`` (or ``results.csv``)."""

from __future__ import annotations

from headstart.report.html import Section, esc, fmt, img, no_plots, table
from headstart.runs import RunFiles, as_number
from headstart.runs.schema import PROBE_ACCURACY, PROBE_COLUMNS

PROBE_HEADERS = {"image_size": "px", "test/accuracy": "accuracy", "test/balanced_accuracy": "balanced acc.", "test/macro_f1": "macro F1",
                 "test/ece": "ECE", "temperature": "T", "extract_s": "extract s", "fit_s": "fit s", "store_hit": "store hit"}


def probe_section(run: RunFiles) -> Section | None:
    if not run.results:
        return None
    rows = run.results
    hidden = {"metrics", "bundle"}
    present = [c for c in dict.fromkeys(key for row in rows for key in row) if c not in hidden]
    columns = [c for c in PROBE_COLUMNS if c in present] + [c for c in present if c not in PROBE_COLUMNS]
    accuracy_column = PROBE_ACCURACY if PROBE_ACCURACY in columns else None
    best_index = None
    if accuracy_column:
        values = [as_number(row.get(accuracy_column)) for row in rows]
        if any(v is not None for v in values):
            best_index = max((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i])
    body = table(
        columns,
        [[fmt(row.get(c), c) for c in columns] for row in rows],
        numeric_from=1,
        highlight={best_index: "best"} if best_index is not None else {},
        header_labels=PROBE_HEADERS,
    )
    if best_index is not None:
        body += f'<p class="note">Test metrics; the best by {esc(accuracy_column)} is highlighted. Seconds are wall time on this machine.</p>'
    skipped = (run.metrics or {}).get("skipped_runs") or []
    if isinstance(skipped, list) and skipped:
        items = "".join(
            f"<li>{esc(str(s.get('backbone')))} + {esc(str(s.get('head')))}: {esc(str(s.get('reason')))}</li>" for s in skipped if isinstance(s, dict)
        )
        body += f'<p class="note">Pairs not trained:</p><ul class="note">{items}</ul>'
    if accuracy_column and all(k in columns for k in ("backbone", "head")) and len(rows) > 1:
        from headstart.report import plots

        png = plots.probe_bars_png(
            [{"backbone": r.get("backbone"), "head": r.get("head"), accuracy_column: as_number(r.get(accuracy_column))} for r in rows],
            metric=accuracy_column, title=f"{accuracy_column} by backbone and head",
        )
        body += img(png, "probe comparison") if png else no_plots()
    return Section("probes", "Probe comparison", body)
