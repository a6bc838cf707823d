"""Write one section (or one ``###`` part of a section) of ``benchmarks/RESULTS.md``, leaving the rest alone.

Shared by the benchmark scripts' ``--write`` options. A section runs from its ``## `` heading to the
next ``## `` heading; a missing section is appended at the end. Every write also rewrites the top of
the file (the text before the first section): a fixed note and an index of the sections, the script
that wrote each and the command that reruns it. ``python benchmarks/_results.py`` rewrites the
index alone (after a merge of two branches' sections, say). ``tests/test_results_provenance.py``
checks that every section names a script here that writes it, and that the index is current.

A section should name its script and record its machine: :func:`machine` (CPU model, cores, torch,
Python) and :func:`load` (the load average).
"""

from __future__ import annotations

import os
import platform
import re
import sys
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
    path.write_text(with_index(text.rstrip("\n") + "\n"))


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
    path.write_text(with_index(text[:start] + part + text[end:]))


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



def machine() -> str:
    """The machine line of a result: CPU model, cores, torch (and its threads), Python."""
    try:
        import torch

        runtime = f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
    except ImportError:  # pragma: no cover - every benchmark has torch
        runtime = ""
    return f"{cpu_model()}, {cores()} cores, {runtime}Python {platform.python_version()}"


def load() -> str:
    """The load average over 1, 5 and 15 minutes, as ``a / b / c``."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


PREAMBLE = """# Benchmark results

Every section below is written by the script it names, through `benchmarks/_results.py`; none is
edited by hand, and `tests/test_results_provenance.py` fails on a section that no script in
`benchmarks/` writes. Each section records its machine (CPU model, cores) and the load average when
it ran. Timings on a shared machine move with its load: ratios measured in one process hold better
than absolute times. This index is rewritten with every section (`.venv/bin/python
benchmarks/_results.py` rewrites it alone).
"""

SCRIPT = re.compile(r"benchmarks/([A-Za-z0-9_]+\.py)")
# How each script rewrites its section(s), where it is not ``--write``.
RERUN = {
    "detseg.py": ".venv/bin/python benchmarks/detseg.py",
    "kill_soak.py": ".venv/bin/python benchmarks/kill_soak.py --seed 0 --write",
    "extract.py": ".venv/bin/python benchmarks/extract.py --warmup --repeats 2 --write (and again with --backbone resnet50 --n 300)",
}


def sections(text: str) -> list[tuple[str, str]]:
    """The ``(heading, body)`` of each ``## `` section of a RESULTS.md text, in order."""
    parts = re.split(r"(?m)^(?=## )", text)
    return [(part.split("\n", 1)[0], part) for part in parts[1:]]


def scripts_of(section: str) -> list[str]:
    """The benchmark scripts a section names: those in its ``##``/``###`` headings, else the first in its text."""
    named: list[str] = []
    for line in section.splitlines():
        if line.startswith("#"):
            named += [name for name in SCRIPT.findall(line) if name not in named]
    if not named:
        named = SCRIPT.findall(section)[:1]
    return named


def rerun_command(script: str) -> str:
    """The command that rewrites a script's section."""
    return RERUN.get(script, f".venv/bin/python benchmarks/{script} --write")


def index(text: str) -> str:
    """The top of RESULTS.md for ``text``: the fixed note and a table of its sections and their scripts."""
    lines = [PREAMBLE, "| section | written by | rerun with |", "|---|---|---|"]
    for heading, body in sections(text):
        title = heading[3:].strip()
        names = scripts_of(body)
        written = ", ".join(f"`benchmarks/{name}`" for name in names) or "**no script named**"
        rerun = "; ".join(f"`{rerun_command(name)}`" for name in names) or "-"
        lines.append(f"| {title.replace('|', '/')} | {written} | {rerun} |")
    return "\n".join(lines) + "\n"


def with_index(text: str) -> str:
    """``text`` with its top (everything before the first ``## `` section) replaced by :func:`index`."""
    first = re.search(r"(?m)^## ", text)
    body = text[first.start() :] if first else ""
    return index(body) + ("\n" + body if body else "")


def provenance_problems(text: str, folder: Path = RESULTS.parent) -> list[str]:
    """What is wrong with the provenance of a RESULTS.md text (empty when nothing is).

    Every ``## `` section must name a script in ``folder`` that exists and writes it (its source holds
    the section's heading line and calls ``write_section`` or ``write_subsection``), and record the
    machine's cores and load average; the top must be the current :func:`index`.
    """
    problems = []
    for heading, body in sections(text):
        names = scripts_of(body)
        if not names:
            problems.append(f"{heading!r} names no benchmarks/*.py script")
            continue
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            problems.append(f"{heading!r} names {', '.join(missing)}, not in {folder}")
            continue
        writers = [name for name in names if _writes(folder / name, heading)]
        if not writers:
            problems.append(f"{heading!r}: none of {', '.join(names)} writes this heading with write_section/write_subsection")
        lowered = body.lower()
        if "cores" not in lowered or "load average" not in lowered:
            problems.append(f"{heading!r} does not record the machine's cores and load average")
    if with_index(text) != text:
        problems.append("the index at the top is stale: run .venv/bin/python benchmarks/_results.py")
    return problems


def _writes(script: Path, heading: str) -> bool:
    source = script.read_text()
    return heading in source and ("write_section" in source or "write_subsection" in source)


def main(argv: list[str] | None = None) -> None:
    """Rewrite the index at the top of RESULTS.md (or of the file given) and leave the sections alone."""
    path = Path(argv[0]) if argv else RESULTS
    text = path.read_text() if path.is_file() else EMPTY
    path.write_text(with_index(text))
    print(f"rewrote the index of {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
