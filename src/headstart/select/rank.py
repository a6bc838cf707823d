"""The pure parts of a backbone ranking, in one import.

A ranking (:func:`headstart.workflows.rank.rank_backbones`, the run loop) is built from:

- :mod:`headstart.select.candidates`: :class:`Candidate` (``NAME[#LAYER][@SIZE]``) and its parsing;
- :mod:`headstart.select.combine`: the score names, :class:`Combination` and :func:`combine_scores`;
- :mod:`headstart.select.probes`: each candidate's scores and cross-validated probe accuracies;
- :mod:`headstart.select.table`: :class:`RankRow`, :class:`RankTable` and :func:`print_rank_table`;
- :mod:`headstart.select.cost`: what a candidate costs, and the Pareto front.

This module gathers their public names; none of them loads a backbone or touches the store.
"""

from __future__ import annotations

from headstart.select.candidates import POOLED, Candidate, RankError, expand_candidates, parse_candidates, resolve_layer
from headstart.select.combine import (
    ALL_SCORES,
    COMBINE_METHODS,
    DEFAULT_COMBINATION,
    DEFAULT_SCORES,
    PROBES,
    Combination,
    check_scores,
    combine_scores,
)
from headstart.select.probes import compute_rank_scores, cv_accuracy, knn_cv_accuracy, one_thread, source_logits
from headstart.select.table import RankRow, RankTable, finish_ranking, print_rank_table

__all__ = [
    "ALL_SCORES",
    "COMBINE_METHODS",
    "DEFAULT_COMBINATION",
    "DEFAULT_SCORES",
    "POOLED",
    "PROBES",
    "Candidate",
    "Combination",
    "RankError",
    "RankRow",
    "RankTable",
    "check_scores",
    "combine_scores",
    "compute_rank_scores",
    "cv_accuracy",
    "expand_candidates",
    "finish_ranking",
    "knn_cv_accuracy",
    "one_thread",
    "parse_candidates",
    "print_rank_table",
    "resolve_layer",
    "source_logits",
]
