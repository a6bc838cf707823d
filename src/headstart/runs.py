"""Run directories: the ``manifest.json`` and ``report.html`` that every command with ``--out`` writes.

``probe``, ``rank``, ``finetune``, ``detect train`` and ``segment train`` each write their own
files (metrics, CSV logs, bundles) and then call :func:`write_manifest` and
:func:`write_report_or_warn`, so every run directory records how it was made the same way and gets a
report. A report that fails to render never loses the run: it is a warning that names the command
that renders it again.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"


def write_manifest(out: str | Path, **fields: Any) -> Path:
    """Write ``out/manifest.json`` atomically and return its path.

    The manifest holds the command line (``sys.argv``), the versions of the packages that shape a
    result, the time it was written, and ``fields``: what the caller knows of the run (seed, device,
    weights sha256, data fingerprint, store keys, wall seconds). Values that JSON cannot hold (paths,
    for example) are written as strings.
    """
    from headstart.versions import package_versions
    from headstart.io import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "command": list(sys.argv),
        "versions": package_versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }
    path = out / MANIFEST_FILE
    atomic_write_json(path, json.loads(json.dumps(document, default=str)))
    return path


def write_report_or_warn(out: str | Path) -> Path | None:
    """Render ``out/report.html``; if that fails, print a warning with the command that renders it again.

    Returns:
        The report's path, or None when it could not be rendered (the run's other files are kept).
    """
    from headstart.console import err_console
    from headstart.evaluate.report import write_report

    try:
        return write_report(out)
    except Exception as exc:  # noqa: BLE001 - the run is saved; only its report is missing
        err_console.print(
            f"warning: report.html was not written ({type(exc).__name__}: {exc}); render it with: headstart report {out}",
            highlight=False, markup=False, soft_wrap=True,
        )
        return None


__all__ = ["MANIFEST_FILE", "write_manifest", "write_report_or_warn"]
