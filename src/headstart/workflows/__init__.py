"""Workflows: the library's steps put together into runs (the orchestration layer).

- :mod:`headstart.workflows.probe`: ``probe(data, backbones, heads)`` extracts features through the
  store, fits heads, evaluates them and saves bundles; with ``out``, it writes the run directory.
- :mod:`headstart.workflows.rank`: :func:`~headstart.workflows.rank.rank_backbones` loads each
  candidate, extracts a subsample's features, scores them and measures the cost; with ``out``, it
  writes the run directory (:func:`~headstart.workflows.rank.write_rank_run`).
- :mod:`headstart.workflows.calibration`: a probe head's temperature (out-of-fold) and class-prior
  correction, saved in its bundle.
- :mod:`headstart.workflows.demo`: :func:`~headstart.workflows.demo.run_demo`, ``headstart demo``.

This layer sits above the library (finetune, tasks, select, features, heads, data, backbones...) and
below :mod:`headstart.commands` and :mod:`headstart.cli`; nothing in the library imports it. Each
workflow resolves ``device="auto"`` once, at its entry (:func:`headstart.device.resolve_device`).

The probe function is imported from its module, ``from headstart.workflows.probe import probe``: a
package attribute ``probe`` would be shadowed by the submodule of the same name once it is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "rank_backbones": "headstart.workflows.rank",
    "write_rank_run": "headstart.workflows.rank",
    "run_demo": "headstart.workflows.demo",
    "ProbeReport": "headstart.workflows.probe",
    "ProbeRun": "headstart.workflows.probe",
}

__all__ = ["ProbeReport", "ProbeRun", "rank_backbones", "run_demo", "write_rank_run"]

if TYPE_CHECKING:  # pragma: no cover
    from headstart.workflows.demo import run_demo
    from headstart.workflows.probe import ProbeReport, ProbeRun
    from headstart.workflows.rank import rank_backbones, write_rank_run


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headstart.workflows' has no attribute {name!r}")
