"""The kept-epoch rule: which epoch's weights a run keeps, decided online so that a resumed run decides the same.

The rule: keep the **latest** epoch whose validation score is within ``keep_within`` standard errors
of the best validation score of the run. The standard error is the adapter's
(:meth:`~headstart.engine.adapter.Adapter.score_noise`): for accuracy on ``n`` validation items,
the binomial ``sqrt(p(1 - p) / n)`` with ``p = (correct + 1) / (n + 2)`` (so that a perfect score
still has some noise). An adapter without a noise model (noise 0) and ``keep_within = 0`` give the
plain rule: the highest score, a tie going to the later epoch where the adapter says so.

Why: on a small validation split, the epoch with the highest accuracy is mostly the luckiest one
(100 items: one item is a point, the standard error near 90 % is 3 points). Among epochs that
validation cannot tell apart, the later one has trained longer at a lower learning rate.

The decision needs no look-ahead and one copy of the weights: the threshold ``best - keep_within *
se(best)`` only rises (it is kept monotone), the epoch that sets a new best is within it, and an
epoch within it replaces the kept one. So the epoch kept at the end is the latest one within the
final threshold, and every quantity lives in the loop state that checkpoints save.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# Standard errors. Fixed at 1 (the one-standard-error rule) before any measurement, not tuned;
# benchmarks/finetune_curves.py reports it on every dataset, beside a k chosen leaving one dataset out.
KEEP_WITHIN = 1.0
RULE = "latest epoch whose validation score is >= best - keep_within * standard error"


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy on ``n`` items, from the rule of succession ``(correct + 1) / (n + 2)``."""
    if n <= 0:
        return 0.0
    p = (accuracy * n + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / n)


def keep_state() -> dict[str, Any]:
    """The rule's entries of a fresh loop state."""
    return {"best_epoch": -1, "best_value": None, "top_epoch": None, "kept_value": None, "threshold": None, "since_best": 0}


def start(state: dict[str, Any], score: float | None, noise_of: Callable[[float], float], keep_within: float) -> None:
    """The start candidate (epoch -1) is the first best and the first kept epoch."""
    threshold = score - keep_within * noise_of(score) if score is not None and keep_within else None
    state.update(best_value=score, top_epoch=-1, best_epoch=-1, kept_value=score, threshold=threshold)


def update(state: dict[str, Any], epoch: int, score: float | None, noise_of: Callable[[float], float], keep_within: float, has_val: bool,
           ties_to_later: bool) -> bool:
    """Update ``state`` with ``epoch``'s validation ``score``; return whether this epoch is now the kept one.

    Args:
        state: The loop state (``best_value``, ``top_epoch``, ``best_epoch`` = the kept epoch,
            ``kept_value``, ``threshold``, ``since_best``), changed in place.
        score: The validation score (higher is better), None without validation.
        noise_of: The standard error of a score (0: exact comparison), taken at the best score.
        keep_within: How many standard errors below the best still count as "as good".
        has_val: Whether the run validates at all (without validation, the last epoch is kept).
        ties_to_later: A score equal to the best is a new best (the later epoch wins ties).
    """
    if score is None:
        kept = state["best_value"] is None or not has_val
        if kept:
            state.update(best_epoch=epoch)
        else:
            state["since_best"] += 1
        return kept
    best = state["best_value"]
    new_top = best is None or score > best or (ties_to_later and score == best)
    if new_top:
        state.update(best_value=score, top_epoch=epoch, since_best=0)
    else:
        state["since_best"] += 1
    tolerance = keep_within * noise_of(state["best_value"]) if keep_within else 0.0
    if tolerance > 0:
        threshold = state["best_value"] - tolerance
        if state.get("threshold") is not None:
            threshold = max(threshold, state["threshold"])
        state["threshold"] = threshold
    kept = new_top or (tolerance > 0 and score >= state["threshold"])
    if kept:
        state.update(best_epoch=epoch, kept_value=score)
    return kept


def summary(state: dict[str, Any], keep_within: float, noise_of: Callable[[float], float], n_val: int, score_name: str) -> dict[str, Any]:
    """The rule and its inputs, for ``metrics.json``."""
    best = state.get("best_value")
    noise = noise_of(best) if best is not None else 0.0
    return {
        "rule": RULE if keep_within and noise else "highest validation score (ties to the later epoch)",
        "score": f"val_{score_name}",
        "keep_within": keep_within,
        "n_val": n_val,
        "standard_error": round(noise, 6) if noise else 0.0,
        "best_value": state.get("best_value"),
        "best_value_epoch": state.get("top_epoch"),
        "threshold": state.get("threshold"),
        "kept_epoch": state.get("best_epoch"),
        "kept_value": state.get("kept_value"),
    }
