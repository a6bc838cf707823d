"""The overview (headline metrics and facts, notes on unreadable files) and the dataset summary."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Section, esc, fmt, kv_table, table
from headstart.runs import RunFiles, as_number, main_result, run_dataset


def overview_section(run: RunFiles) -> Section | None:
    chips: list[tuple[str, str]] = []
    found = main_result(run)
    if found:
        where, result = found
        chips.append(("evaluated", where))
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("macro_f1", "macro F1"), ("ece", "ECE")):
            value = as_number(result.get(key))
            if value is not None:
                chips.append((f"{result.get('split', 'test')} {label}", f"{value:.3f}"))
        if result.get("n") is not None:
            chips.append(("examples", fmt(result.get("n"))))
    if isinstance(run.metrics, dict) and not found:
        for key, value in _scalars(run.metrics)[:8]:
            chips.append((key, fmt(value, key)))
    facts = []
    if isinstance(run.metrics, dict):
        facts = [(k, v) for k, v in run.metrics.items() if k not in ("out",) and (isinstance(v, (str, int, float, bool)))]
    if not chips and not facts and not run.notes:
        return None
    body = '<div class="chips">' + "".join(
        f'<div class="chip"><span>{esc(label)}</span><b>{esc(value)}</b></div>' for label, value in chips
    ) + "</div>"
    if facts:
        body += kv_table(facts)
    body += "".join(f'<p class="note">{esc(note)}</p>' for note in run.notes)
    return Section("overview", "Overview", body)


def _scalars(data: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Top-level numbers of a metrics dict (one level of nesting), for runs without an evaluation."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((name, value))
        elif isinstance(value, dict) and depth == 0:
            out += _scalars(value, f"{name}/", 1)
    return out


def dataset_section(run: RunFiles) -> Section | None:
    dataset = run_dataset(run)
    if dataset is None:
        return None
    classes = [str(c) for c in dataset.get("classes") or []]
    counts = dataset.get("counts") or {}
    splits = [s for s in ("train", "val", "test") if s in counts] + [s for s in counts if s not in ("train", "val", "test")]
    facts = [("source", dataset.get("source")), ("modality", dataset.get("modality")), ("classes", len(classes))]
    facts += [(f"{split} examples", sum(counts[split].values())) for split in splits]
    skipped = dataset.get("skipped") or []
    facts.append(("skipped files", len(skipped)))
    body = kv_table(facts)
    if classes and splits:
        rows = [[name, *[counts[s].get(name, 0) for s in splits]] for name in classes]
        rows.append(["total", *[sum(counts[s].values()) for s in splits]])
        body += table(["class", *splits], rows, numeric_from=1, css="data compact")
    body = f'<div class="side">{body}</div>'
    if skipped:
        listed = "".join(f"<li><code>{esc(s.get('item'))}</code>: {esc(s.get('reason'))}</li>" for s in skipped[:200])
        more = f"<li>… and {len(skipped) - 200} more</li>" if len(skipped) > 200 else ""
        body += f"<details><summary>{len(skipped)} skipped file(s)</summary><ul>{listed}{more}</ul></details>"
    return Section("dataset", "Dataset", body)
