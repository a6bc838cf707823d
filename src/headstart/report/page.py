"""The report page: its shell (CSS, Content-Security-Policy, header and navigation) and writing it.

Every image is embedded as a base64 PNG, and the page loads no script, font or stylesheet: it opens
offline, and its Content-Security-Policy forbids anything else.
"""

from __future__ import annotations

import time
from pathlib import Path

from headstart.report.html import Section, esc
from headstart.report.sections import build_sections
from headstart.runs import REPORT_FILE, RunFiles, read_run, run_dataset

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


def page_html(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def render_report(run_dir: str | Path) -> str:
    """The HTML report of one run directory."""
    run = read_run(run_dir)
    sections = build_sections(run)
    if not any(s.id != "overview" for s in sections) and sections:
        sections.append(Section("empty", "Nothing to draw", '<p class="note">The run directory has no file a section draws yet.</p>'))
    return page_html(f"headstart {run.kind}: {run.name}", run_subtitle(run), sections)


def run_subtitle(run: RunFiles) -> str:
    parts = [str(run.path)]
    dataset = run_dataset(run)
    if dataset and dataset.get("source"):
        parts.append(f"data: {dataset['source']}")
    parts.append("rendered " + time.strftime("%Y-%m-%d %H:%M"))
    return " · ".join(parts)



def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``run_dir`` to ``run_dir/report.html`` (or ``out``) and return the file's path."""
    from headstart.io import atomic_write_bytes

    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    page = render_report(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, page.encode())
    return path


def write_report_or_warn(out: str | Path) -> Path | None:
    """Render ``out/report.html``; if that fails, print a warning with the command that renders it again.

    Every command with ``--out`` calls this last, after :func:`headstart.runs.write_manifest`: a
    report that fails to render never loses the run.

    Returns:
        The report's path, or None when it could not be rendered (the run's other files are kept).
    """
    from headstart.console import err_console

    try:
        return write_report(out)
    except Exception as exc:  # noqa: BLE001 - the run is saved; only its report is missing
        err_console.print(
            f"warning: report.html was not written ({type(exc).__name__}: {exc}); render it with: headstart report {out}",
            highlight=False, markup=False, soft_wrap=True,
        )
        return None
