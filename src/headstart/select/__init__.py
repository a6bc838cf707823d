"""Choose a backbone before training: transferability scores, cost, and the ranking that combines them.

The scores (:mod:`headstart.select.scores`) need only numpy and scipy. The ranking
(:mod:`headstart.select.rank`) and cost (:mod:`headstart.select.cost`) import torch, so they load
on first use.
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
    "ALL_SCORES": "headstart.select.rank",
    "Candidate": "headstart.select.rank",
    "Combination": "headstart.select.rank",
    "DEFAULT_COMBINATION": "headstart.select.rank",
    "DEFAULT_SCORES": "headstart.select.rank",
    "RankError": "headstart.select.rank",
    "RankRow": "headstart.select.rank",
    "RankTable": "headstart.select.rank",
    "combine_scores": "headstart.select.rank",
    "print_rank_table": "headstart.select.rank",
    "rank_backbones": "headstart.select.rank",
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
    "rank_backbones",
    "score_needs_source_logits",
    "sfda",
]

if TYPE_CHECKING:  # pragma: no cover
    from headstart.select.cost import Cost, measure_cost, pareto_front
    from headstart.select.rank import (
        ALL_SCORES,
        DEFAULT_COMBINATION,
        DEFAULT_SCORES,
        Candidate,
        Combination,
        RankError,
        RankRow,
        RankTable,
        combine_scores,
        print_rank_table,
        rank_backbones,
    )


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headstart.select' has no attribute {name!r}")
