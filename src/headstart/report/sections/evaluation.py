"""The detailed evaluation: confusion matrix, per-class metrics (or per-class AP/IoU), and calibration."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headstart.report.html import Section, esc, fmt, img, no_plots, table
from headstart.runs import RunFiles, as_number, main_result


def confusion_section(run: RunFiles) -> Section | None:
    found = main_result(run)
    if not found:
        return None
    where, result = found
    if result.get("multilabel"):
        return None
    matrix = result.get("confusion_matrix")
    labels = [str(row.get("class")) for row in result.get("per_class", [])]
    if not matrix or len(matrix) != len(labels):
        return None
    from headstart.report import plots

    png = plots.confusion_matrix_png(matrix, labels, title=f"Confusion matrix ({result.get('split', 'test')}, {where})")
    body = img(png, "confusion matrix", css="plot square") if png else no_plots()
    pairs = _top_confusions(matrix, labels)
    if pairs:
        body += '<p class="note">Most frequent confusions: ' + "; ".join(
            f"{esc(t)} → {esc(p)} ({n})" for t, p, n in pairs) + ".</p>"
    return Section("confusion", "Confusion matrix", body)


def _top_confusions(matrix: Sequence[Sequence[int]], labels: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    pairs = [(labels[i], labels[j], int(matrix[i][j])) for i in range(len(labels)) for j in range(len(labels)) if i != j and matrix[i][j]]
    return sorted(pairs, key=lambda pair: -pair[2])[:k]


def task_per_class(run: RunFiles) -> Section | None:
    """Per-class AP (detection) or IoU (segmentation): ``test.per_class`` as a dict, or ``test.per_class_iou``."""
    test = run.metrics.get("test") if isinstance(run.metrics, dict) else None
    if not isinstance(test, dict):
        return None
    per_class = test.get("per_class")
    if isinstance(per_class, dict) and per_class and all(isinstance(v, dict) for v in per_class.values()):
        columns = list(dict.fromkeys(k for v in per_class.values() for k in v))
        rows = [[name, *[fmt(values.get(c), c) for c in columns]] for name, values in per_class.items()]
        title = "Per-class AP" if any("ap" in c for c in columns) else "Per-class metrics"
        return Section("per-class", title, table(["class", *columns], rows, numeric_from=1))
    iou = test.get("per_class_iou")
    if isinstance(iou, dict) and iou:
        rows = [[name, "n/a" if value is None else fmt(value, "iou")] for name, value in iou.items()]
        return Section("per-class", "Per-class IoU", table(["class", "IoU"], rows, numeric_from=1))
    return None


def per_class_section(run: RunFiles) -> Section | None:
    found = main_result(run)
    if not found:
        return task_per_class(run)
    where, result = found
    per_class = result.get("per_class") or []
    if not per_class:
        return None
    f1s = [as_number(row.get("f1")) for row in per_class]
    worst = min((i for i, v in enumerate(f1s) if v is not None), key=lambda i: f1s[i], default=None)
    rows_html = []
    for i, row in enumerate(per_class):
        cells = [f"<td>{esc(row.get('class'))}</td>"]
        for key in ("precision", "recall", "f1"):
            value = as_number(row.get(key))
            bar = f'<div class="bar" style="width:{max(0.0, min(1.0, value or 0)) * 100:.1f}%"></div>' if value is not None else ""
            cells.append(f'<td class="num barcell">{bar}<span>{"" if value is None else f"{value:.3f}"}</span></td>')
        cells.append(f'<td class="num">{esc(fmt(row.get("support")))}</td>')
        css = ' class="worst"' if i == worst and len(per_class) > 1 else ""
        rows_html.append(f"<tr{css}>{''.join(cells)}</tr>")
    body = (f'<table class="data"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr></thead>'
            f"<tbody>{''.join(rows_html)}</tbody></table>")
    body += f'<p class="note">{esc(result.get("split", "test"))} split of {esc(where)}; the class with the lowest F1 is marked.</p>'
    return Section("per-class", "Per-class metrics", body)


def _prediction_arrays(run: RunFiles) -> tuple[np.ndarray, np.ndarray] | None:
    confidence, correct = [], []
    for row in run.predictions:
        value = as_number(row.get("confidence"))
        if value is None:
            continue
        confidence.append(value)
        correct.append(str(row.get("true")) == str(row.get("predicted")))
    if not confidence:
        return None
    return np.asarray(confidence), np.asarray(correct)


def reliability_section(run: RunFiles) -> Section | None:
    arrays = _prediction_arrays(run)
    if arrays is None:
        return None
    from headstart.report import plots

    found = main_result(run)
    where = found[0] if found else "test predictions"
    png = plots.reliability_png(*arrays, title="Reliability")
    body = img(png, "reliability diagram", css="plot square") if png else no_plots()
    body += (f'<p class="note">Top-1 confidence of {esc(where)} on {len(arrays[0])} test examples, in 15 equal-width bins. '
             "Bars below the diagonal mean overconfidence.</p>")
    return Section("reliability", "Calibration", body)
