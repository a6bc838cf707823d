"""Run details from ``manifest.json``: command line, versions, seed, weights, data, store keys, times."""

from __future__ import annotations

import json
from typing import Any

from headstart.report.html import Section, esc, fmt, kv_table, short_hash, table
from headstart.runs import RunFiles


def manifest_section(run: RunFiles) -> Section | None:
    manifest = run.manifest
    if not isinstance(manifest, dict):
        return None
    facts: list[tuple[str, Any]] = []
    command = manifest.get("command")
    if command:
        facts.append(("command", " ".join(str(c) for c in command) if isinstance(command, list) else command))
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in manifest.items():
        if key in ("command", "versions"):
            continue
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            tables.append((key, value))  # runs, candidates: one row each
        elif isinstance(value, (str, int, float, bool)) or value is None:
            facts.append((key, value))
        else:
            facts.append((key, json.dumps(value, default=str)[:400]))
    versions = manifest.get("versions")
    if isinstance(versions, dict):
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    body = kv_table(facts)
    for key, rows in tables:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        if len(tables) > 1 or key != "runs":
            body += f'<p class="note"><code>{esc(key)}</code></p>'
        body += table(columns, [[short_hash(fmt(r.get(c), c)) for c in columns] for r in rows], numeric_from=2, css="data compact")
    return Section("manifest", "Run details", f"<details open><summary>manifest.json</summary>{body}</details>")
