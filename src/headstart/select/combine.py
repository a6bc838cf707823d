"""How a ranking combines its scores: the score names, :class:`Combination`, :func:`combine_scores`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.errors import did_you_mean
from headstart.select.candidates import RankError
from headstart.select.scores import SCORES, UnknownScoreError

__all__ = [
    "ALL_SCORES",
    "COMBINE_METHODS",
    "DEFAULT_COMBINATION",
    "DEFAULT_SCORES",
    "PROBES",
    "Combination",
    "check_scores",
    "combine_scores",
]

# Direct probes: cross-validated accuracy of a head fitted on the subsample.
PROBES = ("linear", "knn")
ALL_SCORES = tuple(SCORES) + PROBES


@dataclass(frozen=True)
class Combination:
    """How scores become one ranking number per candidate.

    ``mean_rank``: each score ranks the candidates for which it is defined (ties share the mean
    rank); a candidate's position becomes a fraction in [0, 1] (1 = best, 0 = worst of those
    ranked); the combined value is the mean of its fractions over the combined scores that are
    defined for it. It needs no assumption about the scores' scales, and one extreme value cannot
    dominate. ``zscore``: each score is standardized over the candidates, and the combined value
    is the mean of a candidate's z-scores. A candidate with none of the combined scores defined
    gets no combined value and ranks last.

    Attributes:
        scores: The scores to combine (names from :data:`ALL_SCORES`).
        method: ``mean_rank`` or ``zscore``.
    """

    scores: tuple[str, ...]
    method: str = "mean_rank"

    def describe(self) -> str:
        how = "mean of rank positions" if self.method == "mean_rank" else "mean of z-scores"
        return f"{how} of {', '.join(self.scores)}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scores": list(self.scores), "description": self.describe()}


# Chosen by benchmarks/rank.py (benchmarks/RESULTS.md, "Ranking"; docs/choosing-a-backbone.md): on six
# datasets (four image, two text), among the combinations whose scores cost at most 0.9 CPU seconds per
# candidate on 2,000 images, the one with the lowest mean top-1 regret against linear-probe accuracy
# (ties: the higher weighted tau). kNN alone; LEEP + kNN had the same regret with a lower tau. Left out
# in turn, each dataset's choice on the other five had a mean regret of about 1 point on it.
DEFAULT_COMBINATION = Combination(scores=("knn",), method="mean_rank")
# Computed by default: kNN, LEEP (0.03 s: shown for pretrained pooled candidates), and ridge, whose
# leave-one-out errors say how far apart the candidates are (the table's "vs #1" column). Add others
# with ``scores=``.
DEFAULT_SCORES = ("knn", "leep", "ridge")
COMBINE_METHODS = ("mean_rank", "zscore")


def combine_scores(values: Sequence[dict[str, float | None]], combination: Combination) -> list[float | None]:
    """Combine each candidate's scores into one number; higher is better.

    Args:
        values: One dict per candidate from score name to value (None when undefined).
        combination: Which scores, and how (see :class:`Combination`).

    Returns:
        One combined value per candidate, or None when none of the combined scores is defined.
    """
    from scipy.stats import rankdata

    if combination.method not in COMBINE_METHODS:
        raise RankError(f"Unknown combination method {combination.method!r}; use one of {', '.join(COMBINE_METHODS)}.")
    parts: list[list[float]] = [[] for _ in values]
    for name in combination.scores:
        defined = [i for i, row in enumerate(values) if _is_number(row.get(name))]
        if not defined:
            continue
        column = np.array([values[i][name] for i in defined], dtype=np.float64)
        if combination.method == "mean_rank":
            if len(defined) == 1:
                transformed = np.ones(1)
            else:
                transformed = (rankdata(column) - 1.0) / (len(defined) - 1.0)  # 1 = highest value
        else:
            spread = column.std()
            transformed = (column - column.mean()) / spread if spread > 0 else np.zeros_like(column)
        for i, value in zip(defined, transformed):
            parts[i].append(float(value))
    return [float(np.mean(p)) if p else None for p in parts]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_scores(scores: Sequence[str] | None, combine: Sequence[str] | None, method: str = "mean_rank") -> tuple[tuple[str, ...], Combination]:
    """Validate score names, the combined subset and the method; return (scores, combination).

    Raises:
        UnknownScoreError: A name is unknown, or a combined score is not computed.
        RankError: The method is unknown.
    """
    names = tuple(dict.fromkeys(DEFAULT_SCORES if scores is None else scores))
    if not names:
        raise UnknownScoreError(f"Name at least one score; known scores: {', '.join(ALL_SCORES)}.")
    for name in names:
        if name not in ALL_SCORES:
            raise UnknownScoreError(f"Unknown score {name!r}. Known scores: {', '.join(ALL_SCORES)}.{did_you_mean(name, ALL_SCORES)}")
    if method not in COMBINE_METHODS:
        raise RankError(f"Unknown combination method {method!r}; use one of {', '.join(COMBINE_METHODS)}.")
    if combine is None:
        combined = tuple(name for name in DEFAULT_COMBINATION.scores if name in names) or names
    else:
        combined = tuple(dict.fromkeys(combine))
        missing = [name for name in combined if name not in names]
        if missing or not combined:
            raise UnknownScoreError(
                f"Every combined score must also be computed, but {', '.join(missing) or 'none'} "
                f"is not among the scores ({', '.join(names)}). Add it to the scores, or combine a subset of them."
            )
    return names, Combination(scores=combined, method=method)
