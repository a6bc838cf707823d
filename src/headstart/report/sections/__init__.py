"""The sections of a report, one small module each group, in reading order (:data:`BUILDERS`).

A builder takes the run's files (:class:`headstart.runs.RunFiles`) and returns a
:class:`~headstart.report.html.Section`, or None when the run has no file for it. A new section is
a function here and one entry in :data:`BUILDERS`.
"""

from __future__ import annotations

from headstart.report.html import Section
from headstart.report.sections.auto import auto_section
from headstart.report.sections.calibration import calibration_section
from headstart.report.sections.curves import curves_section
from headstart.report.sections.evaluation import confusion_section, per_class_section, reliability_section
from headstart.report.sections.manifest import manifest_section
from headstart.report.sections.overview import dataset_section, overview_section
from headstart.report.sections.pictures import grid_section, wrong_section
from headstart.report.sections.probe import probe_section
from headstart.report.sections.rank import rank_section
from headstart.runs import RunFiles

BUILDERS = (
    overview_section,
    dataset_section,
    auto_section,
    rank_section,
    probe_section,
    curves_section,
    confusion_section,
    per_class_section,
    reliability_section,
    calibration_section,
    wrong_section,
    grid_section,
    manifest_section,
)


def build_sections(run: RunFiles, main_table: bool = True) -> list[Section]:
    """Every section the run's files support, in reading order.

    Args:
        run: The run's files.
        main_table: Mark the first table ``id="main-table"`` (single-run pages).
    """
    sections: list[Section] = []
    for builder in BUILDERS:
        section = builder(run)
        if section is not None:
            sections.append(section)
    if main_table:
        for section in sections:
            if 'class="data"' in section.body and section.id != "overview":
                section.body = section.body.replace('<table class="data"', '<table id="main-table" class="data"', 1)
                break
    return sections


__all__ = ["BUILDERS", "build_sections"]
