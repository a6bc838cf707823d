"""Transferability scores: how well a frozen backbone's features suit a new labelled task.

Each score is a pure function ``score(features, labels[, source_logits]) -> float`` that needs no
training of the backbone. Every score follows one sign convention: **higher means better
transferability**, so a ranking sorts candidates by descending score. Scores are comparable across
backbones on the same data, not across datasets.

``features`` is an array of shape (n_samples, n_features); ``labels`` holds one class label per
sample (integers, strings, anything ``numpy.unique`` can sort); ``source_logits``, where a score uses
them, has shape (n_samples, n_source_classes) and holds the backbone's own classifier outputs (before
softmax) for the same samples.

| name | paper | range | needs source logits |
|---|---|---|---|
| ``logme`` | You et al., ICML 2021 | any real (mean log evidence per sample) | no |
| ``ridge`` | closed-form leave-one-out ridge regression (this package) | [0, 1] (accuracy) | no |
| ``leep`` | Nguyen et al., ICML 2020 | (-inf, 0] | yes |
| ``nleep`` | Li et al., CVPR 2021 | (-inf, 0] | no (a Gaussian mixture stands in) |
| ``nce`` | Tran et al., ICCV 2019 | [-log(n_classes), 0] | no (uses them when given) |
| ``hscore`` | Bao et al., ICIP 2019 | [0, n_classes - 1] when well conditioned | no |
| ``hscore_shrinkage`` | Ibrahim et al., 2022 | [0, n_classes - 1] | no |
| ``sfda`` | Shao et al., ECCV 2022 | (0, 1] | no |

A score that cannot be computed from the inputs raises :class:`ScoreUndefined` with the reason.
:func:`compute_scores` runs several scores and keeps such failures as values, so that one failing
score never hides the others.

One module per family: :mod:`~headstart.select.scores.linear_evidence` (LogME),
:mod:`~headstart.select.scores.ridge` (leave-one-out ridge accuracy),
:mod:`~headstart.select.scores.label_entropy` (LEEP, N-LEEP, NCE),
:mod:`~headstart.select.scores.class_separation` (H-score, SFDA); the shared input checks are in
:mod:`~headstart.select.scores.common`, the registry and :func:`compute_scores` in
:mod:`~headstart.select.scores.registry`.
"""

from __future__ import annotations

from headstart.select.scores.class_separation import hscore, hscore_shrinkage, sfda
from headstart.select.scores.common import ScoreUndefined, UnknownScoreError
from headstart.select.scores.label_entropy import leep, nce, nleep
from headstart.select.scores.linear_evidence import logme
from headstart.select.scores.ridge import RidgeLoo, ridge, ridge_loo
from headstart.select.scores.registry import SCORES, compute_scores, score_needs_source_logits

__all__ = [
    "SCORES",
    "RidgeLoo",
    "ScoreUndefined",
    "UnknownScoreError",
    "compute_scores",
    "hscore",
    "hscore_shrinkage",
    "leep",
    "logme",
    "nce",
    "nleep",
    "ridge",
    "ridge_loo",
    "score_needs_source_logits",
    "sfda",
]
