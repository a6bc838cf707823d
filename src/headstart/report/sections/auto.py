"""The decisions of a ``headstart auto`` run, from ``auto.json``: why this model, what each step cost."""

from __future__ import annotations

import math
from typing import Any

from headstart.report.html import Section, esc, fmt, kv_table, table
from headstart.runs import RunFiles, as_number


def auto_section(run: RunFiles) -> Section | None:
    auto = run.auto
    if not auto:
        return None
    choice = auto.get("choice") or {}
    facts: list[tuple[str, Any]] = [
        ("chosen", f"{choice.get('backbone')} + {choice.get('head')}" if choice.get("kind") == "probe" else f"{choice.get('backbone')} (LP-FT)"),
        ("chosen on", "validation data only (out-of-fold predictions; fine-tuning's validation rows)"),
        ("validation accuracy", choice.get("validation_accuracy")),
        ("test accuracy (after the choice)", auto.get("test_accuracy")),
        ("budget s", auto.get("budget_s")),
        ("spent s", auto.get("spent_s")),
    ]
    body = kv_table([(k, v) for k, v in facts if v is not None])
    reasons = auto.get("reasons") or []
    if reasons:
        body += "<h3>Decisions</h3><ol>" + "".join(f"<li>{esc(str(r))}</li>" for r in reasons) + "</ol>"
    probes = auto.get("probes") or {}
    heads = list(dict.fromkeys(head for record in probes.values() if isinstance(record, dict) for head in (record.get("cv") or {})))
    rank = {row.get("candidate"): row for row in auto.get("rank") or [] if isinstance(row, dict)}
    rows = []
    for name, record in probes.items():
        if not isinstance(record, dict):
            continue
        cv = record.get("cv") or {}
        note = record.get("skipped") or "; ".join(f"{h}: {why}" for h, why in (record.get("skipped_heads") or {}).items())
        rows.append([name, fmt((rank.get(name) or {}).get("rank")), *[_with_error(cv.get(h), record.get("n")) if h in cv else "" for h in heads],
                     note or ""])
    if rows:
        body += "<h3>Candidates: out-of-fold accuracy of each head on the training rows (± its binomial standard error)</h3>"
        body += table(["candidate", "rank", *heads, "note"], rows, numeric_from=1)
    compare = auto.get("comparison") or {}
    if compare.get("gain") is not None:
        body += "<h3>Did fine-tuning pay?</h3>" + kv_table([
            ("probe", compare.get("probe")), ("its validation accuracy", compare.get("probe_validation_accuracy")),
            ("fine-tuned", compare.get("finetune")), ("its validation accuracy", compare.get("finetune_validation_accuracy")),
            ("validation rows", compare.get("validation_rows")), ("gain", compare.get("gain")),
        ])
    steps = auto.get("steps") or []
    if steps:
        body += "<h3>Time: planned and spent</h3>" + table(
            ["step", "planned s", "actual s"], [[s.get("step"), fmt(s.get("planned_s")), fmt(s.get("actual_s"))] for s in steps if isinstance(s, dict)]
        )
    control = auto.get("control") or {}
    if control.get("validation_accuracy") is not None:
        body += '<p class="note">' + esc(
            f"Random-init control {control.get('backbone')} + linear: out-of-fold accuracy {control['validation_accuracy']:.3f}"
            + (f", test accuracy {control['test_accuracy']:.3f}" if control.get("test_accuracy") is not None else "")
            + ": what pretraining is worth on this data."
        ) + "</p>"
    return Section("auto", "Auto: what was chosen and why", body)


def _with_error(accuracy: Any, n: Any) -> str:
    """``0.911 ± 0.009``: an accuracy and its binomial standard error over ``n`` rows."""
    value, rows = as_number(accuracy), as_number(n)
    if value is None:
        return ""
    if not rows:
        return fmt(value)
    return f"{value:.3f} ± {math.sqrt(max(value * (1 - value), 0.0) / rows):.3f}"
