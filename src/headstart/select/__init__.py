"""Choose a backbone before training: transferability scores computed from frozen features."""

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

__all__ = [
    "SCORES",
    "ScoreUndefined",
    "UnknownScoreError",
    "compute_scores",
    "hscore",
    "hscore_shrinkage",
    "leep",
    "logme",
    "nce",
    "nleep",
    "score_needs_source_logits",
    "sfda",
]
