"""Choose a backbone before training: transferability scores, cost, and the ranking that combines them.

The scores (:mod:`headstart.select.scores`) need only numpy and scipy. The ranking's parts
(:mod:`headstart.select.rank` gathers them) and cost (:mod:`headstart.select.cost`) import torch,
so they load on first use. The run loop that loads each candidate and extracts its features,
``rank_backbones``, is a workflow: :mod:`headstart.workflows.rank` (also ``headstart.rank_backbones``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from headstart.select.scores import (
    SCORES,
    ScoreUndefined,
    UnknownScoreError,
    compute_scores,
    hscore,
    hscore_shrinkage,
    leep,
    logme,
    nce,
    nleep,
    score_needs_source_logits,
    sfda,
)

_LAZY = {
    "ALL_SCORES": "headstart.select.combine",
    "Candidate": "headstart.select.candidates",
    "Combination": "headstart.select.combine",
    "DEFAULT_COMBINATION": "headstart.select.combine",
    "DEFAULT_SCORES": "headstart.select.combine",
    "RankError": "headstart.select.candidates",
    "RankRow": "headstart.select.table",
    "RankTable": "headstart.select.table",
    "combine_scores": "headstart.select.combine",
    "print_rank_table": "headstart.select.table",
    "Cost": "headstart.select.cost",
    "measure_cost": "headstart.select.cost",
    "pareto_front": "headstart.select.cost",
}

__all__ = [
    "ALL_SCORES",
    "DEFAULT_COMBINATION",
    "DEFAULT_SCORES",
    "SCORES",
    "Candidate",
    "Combination",
    "Cost",
    "RankError",
    "RankRow",
    "RankTable",
    "ScoreUndefined",
    "UnknownScoreError",
    "combine_scores",
    "compute_scores",
    "hscore",
    "hscore_shrinkage",
    "leep",
    "logme",
    "measure_cost",
    "nce",
    "nleep",
    "pareto_front",
    "print_rank_table",
    "score_needs_source_logits",
    "sfda",
]

if TYPE_CHECKING:  # pragma: no cover
    from headstart.select.candidates import Candidate, RankError
    from headstart.select.combine import ALL_SCORES, DEFAULT_COMBINATION, DEFAULT_SCORES, Combination, combine_scores
    from headstart.select.cost import Cost, measure_cost, pareto_front
    from headstart.select.table import RankRow, RankTable, print_rank_table


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headstart.select' has no attribute {name!r}")
