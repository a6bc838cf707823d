"""``headstart report``: re-render a run directory's report.html, or compare several runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.commands.common import Json, print_json

COMPARISON_FILE = "compare-report.html"


def report_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories written by probe, rank or finetune (--out).")],
    out: Annotated[Optional[Path], typer.Option("--out", help=f"HTML file to write (default: RUN_DIR/report.html; for several runs, ./{COMPARISON_FILE}).")] = None,
    json_out: Json = False,
) -> None:
    """Render a self-contained HTML report of a run directory; several directories give a side-by-side comparison."""
    from headstart.console import console
    from headstart.report import write_comparison, write_report
    from headstart.runs import read_run

    if len(run_dirs) == 1:
        path = write_report(run_dirs[0], out)
    else:
        path = write_comparison(run_dirs, out or Path(COMPARISON_FILE))
    if json_out:
        runs = [read_run(run_dir) for run_dir in run_dirs]
        print_json({"report": str(path), "runs": [{"path": str(run.path), "kind": run.kind, "notes": run.notes} for run in runs]})
        return
    console.print(f"report: {path}  (open file://{path.resolve()} in a browser)", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``headstart report`` to the CLI."""
    app.command("report")(report_cmd)
