"""The comparison page: several run directories side by side (``headstart report RUN_A RUN_B --out``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from headstart.report.html import Section, esc, fmt, img, no_plots, table
from headstart.report.page import page_html
from headstart.report.sections import build_sections
from headstart.report.sections.curves import log_phases, log_series
from headstart.runs import RunFiles, as_number, main_result, read_run
from headstart.runs.schema import PROBE_RUNS, WALL_SECONDS

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
            fmt(as_number(result.get("accuracy")), "accuracy"), fmt(as_number(result.get("macro_f1")), "f1"),
            fmt(as_number(result.get("ece")), "ece"), fmt(result.get("n")),
            fmt(len(result.get("per_class") or []) or None), fmt(seconds, "s") if seconds is not None else "",
        ])
    accuracies = [as_number(row[3]) for row in summary_rows]
    best = max((i for i, a in enumerate(accuracies) if a is not None), key=lambda i: accuracies[i], default=None)
    summary = table(
        ["run", "kind", "evaluated", "accuracy", "macro F1", "ECE", "test n", "classes", "wall s"], summary_rows,
        numeric_from=3, highlight={best: "best"} if best is not None else {}, table_id="main-table",
    )
    summary += "<p class=\"note\">" + " · ".join(f"<b>{esc(n)}</b>: <code>{esc(r.path)}</code>" for n, r in zip(names, runs)) + "</p>"
    sections = [Section("summary", "Summary", summary)]
    overlay = _overlay_curves(names, runs)
    if overlay is not None:
        sections.append(overlay)
    per_run = [{s.id: s for s in build_sections(run, main_table=False)} for run in runs]
    ids = list(dict.fromkeys(sid for sections_of_run in per_run for sid in sections_of_run))
    absent = '<p class="note">(not in this run)</p>'
    for sid in ids:
        title = next(p[sid].title for p in per_run if sid in p)
        columns = "".join(f"<div><h3>{esc(name)}</h3>{p[sid].body if sid in p else absent}</div>" for name, p in zip(names, per_run))
        sections.append(Section(sid, title, f'<div class="compare" style="grid-template-columns:repeat({len(runs)}, minmax(340px, 1fr))">{columns}</div>'))
    return page_html(f"headstart: {len(runs)} runs compared", " · ".join(names) + " · rendered " + time.strftime("%Y-%m-%d %H:%M"), sections)


def _unique_names(runs: list[RunFiles]) -> list[str]:
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{run.path.resolve().parent.name}/{run.name}" if names.count(run.name) > 1 else run.name for run in runs]


def _wall_seconds(run: RunFiles) -> float | None:
    manifest = run.manifest if isinstance(run.manifest, dict) else {}
    if as_number(manifest.get(WALL_SECONDS)) is not None:
        return as_number(manifest[WALL_SECONDS])
    runs = manifest.get(PROBE_RUNS)  # probe's manifest: each run's extract_s and fit_s
    if isinstance(runs, list):
        total = sum((as_number(r.get("extract_s")) or 0) + (as_number(r.get("fit_s")) or 0) for r in runs if isinstance(r, dict))
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
    from headstart.report import plots

    png = plots.overlay_png(curves)
    return Section("overlay", "Training curves, all runs", img(png, "training curves of every run") if png else no_plots())


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Render a side-by-side comparison of ``run_dirs`` to ``out`` and return its path."""
    from headstart.io import atomic_write_bytes

    path = Path(out)
    page = render_comparison(run_dirs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, page.encode())
    return path
