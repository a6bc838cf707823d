"""Write one section (or one ``###`` part of a section) of ``benchmarks/RESULTS.md``, leaving the rest alone.

Shared by the benchmark scripts' ``--write`` options. A section runs from its ``## `` heading to the
next ``## `` heading; a missing section is appended at the end.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
EMPTY = "# Benchmark results\n"


def _span(text: str, heading: str) -> tuple[int, int] | None:
    """Start and end offsets of the section under ``heading`` (end: the next ``## `` heading or the end)."""
    start = text.find(heading + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + len(heading))
    return start, len(text) if end < 0 else end + 1


def write_section(block: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section whose heading is ``block``'s first line with ``block``."""
    text = path.read_text() if path.is_file() else EMPTY
    block = block.strip("\n") + "\n\n"
    span = _span(text, block.split("\n", 1)[0])
    text = text.rstrip("\n") + "\n\n" + block if span is None else text[: span[0]] + block + text[span[1] :]
    path.write_text(text.rstrip("\n") + "\n")


def write_subsection(section: str, title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or add) the ``### title`` part of ``section`` (a ``## `` heading) with ``body``."""
    text = path.read_text() if path.is_file() else EMPTY
    span = _span(text, section)
    if span is None:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
        span = _span(text, section)
    start, end = span
    part = text[start:end]
    block = f"### {title}\n\n{body.strip()}\n\n"
    sub = part.find(f"### {title}\n")
    if sub < 0:
        part = part.rstrip("\n") + "\n\n" + block
    else:
        sub_end = part.find("\n### ", sub + 4)
        part = part[:sub] + block + (part[sub_end + 1 :] if sub_end >= 0 else "")
    path.write_text(text[:start] + part + text[end:])


def cpu_fields() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def cpu_model() -> str:
    """The CPU's model name, for the machine line of a result."""
    return cpu_fields().get("model name") or platform.processor() or "unknown CPU"

