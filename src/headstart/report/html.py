"""Small HTML helpers of the report: escaping, number formatting, tables, embedded images, sections."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headstart.runs import as_number


@dataclass
class Section:
    """One titled part of a report."""

    id: str
    title: str
    body: str


def esc(value: Any) -> str:
    """``value`` as text, escaped for HTML content and attributes (None is empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def unit_scale(column: str, largest: float) -> tuple[float, str] | None:
    """The divisor and unit a column's numbers are shown in (bytes in MB, MACs in G or M, params in millions)."""
    lowered = column.lower()
    if "bytes" in lowered and largest >= 1e6:
        return 1e6, "MB"
    if ("macs" in lowered or "flops" in lowered) and largest >= 1e6:
        return (1e9, "G") if largest >= 1e9 else (1e6, "M")
    if "param" in lowered and largest >= 1e5:
        return 1e6, "millions"
    return None


def fmt(value: Any, column: str = "") -> str:
    """A number formatted for a table cell; other values as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and math.isfinite(value):
        scale = unit_scale(column, abs(value))
        if scale:
            return f"{value / scale[0]:.2f} {scale[1].replace('millions', 'M')}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1, css: str = "data",
          highlight: dict[int, str] | None = None, table_id: str | None = None, short_headers: bool = False,
          header_labels: dict[str, str] | None = None) -> str:
    """A data table; cells from column ``numeric_from`` on that hold numbers are right-aligned."""
    highlight = highlight or {}
    labels = [(header_labels or {}).get(c, c) for c in columns]
    if short_headers:
        shorts = [c.split(".")[-1] for c in columns]
        labels = [short if shorts.count(short) == 1 else column for short, column in zip(shorts, columns)]
    head = "".join(f'<th title="{esc(c)}">{esc(label)}</th>' for c, label in zip(columns, labels))
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, value in enumerate(row):
            numeric = j >= numeric_from and as_number(str(value).replace(",", "").rstrip("M")) is not None
            cells.append(f'<td class="num">{esc(value)}</td>' if numeric else f"<td>{esc(value)}</td>")
        row_css = f' class="{highlight[i]}"' if i in highlight else ""
        body.append(f"<tr{row_css}>{''.join(cells)}</tr>")
    id_attr = f' id="{table_id}"' if table_id else ""
    return f'<div class="table-wrap"><table{id_attr} class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def short_hash(text: str) -> str:
    """A long hex digest (sha256, store key) cut to 12 characters; the full one is in manifest.json."""
    return text[:12] + "…" if len(text) > 24 and re.fullmatch(r"[0-9a-f]+", text) else text


def kv_table(facts: Sequence[tuple[str, Any]], caption: str | None = None) -> str:
    """A two-column table of ``(name, value)`` facts."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v, k))}</td></tr>" for k, v in facts)
    cap = f'<caption class="note">{esc(caption)}</caption>' if caption else ""
    return f'<table class="kv">{cap}{rows}</table>'


def img(png: bytes, alt: str, css: str = "plot") -> str:
    """An ``<img>`` with the PNG embedded as base64."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def no_plots() -> str:
    """The note shown instead of a plot when matplotlib is missing."""
    from headstart.report.plots import INSTALL_HINT

    return f'<p class="note">Plots need matplotlib: {esc(INSTALL_HINT)}.</p>'
