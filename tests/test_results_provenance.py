"""benchmarks/RESULTS.md: every section is written by a script in benchmarks/ that names itself there.

Cheap: reads files, runs no benchmark. A section pasted by hand (naming no script, or a script that
does not write that heading) fails here, and so does a stale index at the top of the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _results  # noqa: E402

RESULTS = BENCHMARKS / "RESULTS.md"


def test_every_results_section_is_written_by_a_benchmark_script():
    text = RESULTS.read_text()
    assert _results.sections(text), "RESULTS.md has no sections"
    assert _results.provenance_problems(text) == []


@pytest.mark.parametrize("heading", [heading for heading, _ in _results.sections(RESULTS.read_text())])
def test_each_section_names_an_existing_script(heading):
    body = dict(_results.sections(RESULTS.read_text()))[heading]
    names = _results.scripts_of(body)
    assert names, f"{heading} names no benchmarks/*.py script"
    for name in names:
        assert (BENCHMARKS / name).is_file(), f"{heading} names benchmarks/{name}, which does not exist"


def _scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "good.py").write_text('SECTION = "## Good (`benchmarks/good.py`)"\nwrite_section(block)\n')
    (folder / "silent.py").write_text('print("## Silent (`benchmarks/silent.py`)")\n')
    return folder


MACHINE = "- machine: some CPU, 2 cores; load average 0.1 / 0.2 / 0.3\n"


def test_a_section_written_by_its_script_passes(tmp_path):
    folder = _scripts(tmp_path)
    text = _results.with_index(f"## Good (`benchmarks/good.py`)\n\nA number: 0.91.\n{MACHINE}")
    assert _results.provenance_problems(text, folder) == []
    assert "| Good (`benchmarks/good.py`) | `benchmarks/good.py` | `.venv/bin/python benchmarks/good.py --write` |" in text


@pytest.mark.parametrize(
    ("section", "complaint"),
    [
        (f"## Hand-written\n\nThe oracle reached 0.941.\n{MACHINE}", "names no benchmarks/*.py script"),
        (f"## Gone (`benchmarks/gone.py`)\n\n0.5\n{MACHINE}", "gone.py, not in"),
        (f"## Silent (`benchmarks/silent.py`)\n\n0.5\n{MACHINE}", "writes this heading"),
        ("## Good (`benchmarks/good.py`)\n\n0.5 on some machine\n", "cores and load average"),
    ],
)
def test_a_hand_written_section_fails(tmp_path, section, complaint):
    folder = _scripts(tmp_path)
    problems = _results.provenance_problems(_results.with_index(section), folder)
    assert len(problems) == 1 and complaint in problems[0], problems


def test_a_stale_index_fails(tmp_path):
    folder = _scripts(tmp_path)
    current = _results.with_index(f"## Good (`benchmarks/good.py`)\n\n0.5\n{MACHINE}")
    stale = current + f"\n## Good two (`benchmarks/good.py`)\n\n0.6\n{MACHINE}"
    assert any("index" in problem for problem in _results.provenance_problems(stale, folder))


def test_write_section_replaces_one_section_and_rewrites_the_index(tmp_path):
    path = tmp_path / "RESULTS.md"
    _results.write_section(f"## A (`benchmarks/a.py`)\n\nfirst\n{MACHINE}", path)
    _results.write_subsection("## B", "Part (benchmarks/b.py)", f"second\n{MACHINE}", path)
    _results.write_section(f"## A (`benchmarks/a.py`)\n\nthird\n{MACHINE}", path)
    text = path.read_text()
    assert "first" not in text and "third" in text and "second" in text
    assert text.index("## A") < text.index("## B")
    top = text[: text.index("## A")]
    assert "`benchmarks/a.py`" in top and "`benchmarks/b.py`" in top
    assert _results.with_index(text) == text


def test_rerun_commands_are_options_the_scripts_have():
    for name in {name for _, body in _results.sections(RESULTS.read_text()) for name in _results.scripts_of(body)}:
        command = _results.rerun_command(name)
        source = (BENCHMARKS / name).read_text()
        for option in (word for word in command.split() if word.startswith("--")):
            assert f'"{option}"' in source, f"{command}: benchmarks/{name} has no {option} option"
