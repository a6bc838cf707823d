"""The result of a ranking: :class:`RankRow`, :class:`RankTable` (JSON and CSV), and its console table."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.select.combine import Combination, combine_scores
from headstart.select.cost import Cost, pareto_front

__all__ = ["RankRow", "RankTable", "finish_ranking", "print_rank_table"]


@dataclass
class RankRow:
    """One ranked candidate.

    Attributes:
        candidate: The candidate as ``NAME[#LAYER][@SIZE]``, with layer and size filled in.
        backbone: The backbone name.
        layer: The layer the features come from (``pooled`` for the penultimate one).
        image_size: The input side in pixels (None for text encoders and baselines).
        feature_dim: The width of the features.
        pretrained: False for a random initialisation.
        scores: Score name to value; None where the score is undefined.
        undefined: Score name to the reason it is undefined (only for undefined scores).
        combined: The combined value (higher is better), or None.
        rank: 1 for the best candidate.
        cost: The measured cost, or None with ``cost_error`` saying why.
        pareto: On the quality-versus-MACs Pareto front.
        pareto_speed: On the quality-versus-images/s Pareto front.
        store_hit: Features were read back from the store without running the network.
        load_seconds: Time to load the backbone (0 when the previous candidate had loaded it).
        extract_seconds: Time to extract (or read back) the subsample's features.
        cost_seconds: Time to measure the cost (0 when an identical architecture was measured).
        score_seconds: Time per score.
        n_samples: Rows the scores saw.
        weights_sha256: The sha256 of the backbone's weights (None for baselines); in the run's
            ``manifest.json``, not in ``rank.json``.
        store_key: The feature store key the features were read from or written to (None for
            baselines); in the run's ``manifest.json``, not in ``rank.json``.
    """

    candidate: str
    backbone: str
    layer: str
    image_size: int | None
    feature_dim: int
    pretrained: bool
    scores: dict[str, float | None]
    undefined: dict[str, str]
    combined: float | None = None
    rank: int = 0
    cost: Cost | None = None
    cost_error: str | None = None
    pareto: bool = False
    pareto_speed: bool = False
    store_hit: bool = False
    load_seconds: float = 0.0
    extract_seconds: float = 0.0
    cost_seconds: float = 0.0
    score_seconds: dict[str, float] = field(default_factory=dict)
    n_samples: int = 0
    weights_sha256: str | None = None
    store_key: str | None = None
    vs_first: dict[str, float | bool] | None = None
    ridge_correct: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "candidate": self.candidate,
            "backbone": self.backbone,
            "layer": self.layer,
            "image_size": self.image_size,
            "feature_dim": self.feature_dim,
            "pretrained": self.pretrained,
            "combined": self.combined,
            "scores": {
                name: {"value": value, "reason": self.undefined.get(name)} if value is None else {"value": value}
                for name, value in self.scores.items()
            },
            "cost": self.cost.to_dict() if self.cost is not None else None,
            "cost_error": self.cost_error,
            "pareto": self.pareto,
            "pareto_speed": self.pareto_speed,
            "vs_first": self.vs_first,
            "store_hit": self.store_hit,
            "n_samples": self.n_samples,
            "seconds": {
                "load": round(self.load_seconds, 3),
                "extract": round(self.extract_seconds, 3),
                "cost": round(self.cost_seconds, 3),
                "scores": {name: round(s, 3) for name, s in self.score_seconds.items()},
            },
        }


@dataclass
class RankTable:
    """The result of :func:`headstart.workflows.rank.rank_backbones`: ranked rows, skipped candidates and the settings.

    Attributes:
        rows: Ranked candidates, best first.
        skipped: ``(candidate, reason)`` for candidates that could not be ranked.
        scores: The score names computed, in column order.
        combination: How the scores were combined.
        dataset: The dataset summary.
        sample: Rows, classes and rows per class of the scored subsample.
        seed: The seed of the subsample, the probes and the stochastic scores.
        seconds: Wall time of the whole ranking.
    """

    rows: list[RankRow]
    skipped: list[tuple[str, str]]
    scores: tuple[str, ...]
    combination: Combination
    dataset: dict[str, Any]
    sample: dict[str, int]
    seed: int
    seconds: float = 0.0

    SCHEMA_VERSION = 1

    @property
    def best(self) -> RankRow:
        """The top-ranked candidate."""
        if not self.rows:
            raise HeadstartError("The ranking is empty: every candidate was skipped.")
        return self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``schema_version`` changes when fields change meaning."""
        return {
            "schema_version": self.SCHEMA_VERSION,
            "dataset": self.dataset,
            "sample": self.sample,
            "seed": self.seed,
            "scores": list(self.scores),
            "combination": self.combination.to_dict(),
            "pareto_axes": {"pareto": "combined vs MACs", "pareto_speed": "combined vs images/s"},
            "rows": [row.to_dict() for row in self.rows],
            "skipped": [{"candidate": c, "reason": r} for c, r in self.skipped],
            "seconds": round(self.seconds, 3),
        }

    def to_csv(self) -> str:
        """One line per ranked candidate; undefined values are empty cells."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["rank", "candidate", "backbone", "layer", "image_size", "feature_dim", "combined", *self.scores,
             "params", "macs", "images_per_s", "peak_memory_mb", "pareto", "pareto_speed", "store_hit"]
        )
        for row in self.rows:
            cost = row.cost
            writer.writerow(
                [row.rank, row.candidate, row.backbone, row.layer, row.image_size, row.feature_dim, _cell(row.combined),
                 *[_cell(row.scores.get(name)) for name in self.scores],
                 cost.params if cost else "", cost.macs if cost else "",
                 f"{cost.images_per_s:.1f}" if cost else "", f"{cost.peak_memory_bytes / 1e6:.1f}" if cost else "",
                 row.pareto, row.pareto_speed, row.store_hit]
            )
        return buffer.getvalue()

    def write(self, out: str | Path) -> Path:
        """Write ``rank.json`` and ``rank.csv`` into the run directory ``out``; return ``out``."""
        import json

        from headstart.io import atomic_write_bytes

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "rank.json", (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        atomic_write_bytes(out / "rank.csv", self.to_csv().encode())
        return out


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"

def finish_ranking(rows: list[RankRow], combination: Combination) -> None:
    """Combine, sort best first, number the ranks, and mark the Pareto fronts (in place)."""
    combined = combine_scores([row.scores for row in rows], combination)
    for row, value in zip(rows, combined):
        row.combined = value
    rows.sort(key=lambda row: (row.combined is None, -(row.combined or 0.0)))
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    quality = [row.combined for row in rows]
    macs = [row.cost.macs if row.cost else None for row in rows]
    speed = [row.cost.images_per_s if row.cost else None for row in rows]
    for row, on_front in zip(rows, pareto_front(quality, macs)):
        row.pareto = on_front
    for row, on_front in zip(rows, pareto_front(quality, speed, lower_cost_is_better=False)):
        row.pareto_speed = on_front
    compare_with_first(rows)


# A candidate whose leave-one-out accuracy is within this many paired standard errors of the first
# one's is marked close: on this sample, the order of the two is noise.
CLOSE_ERRORS = 2.0


def compare_with_first(rows: list[RankRow]) -> None:
    """Set each row's ``vs_first``: its ridge leave-one-out accuracy gap to the first row, on the same samples.

    The gap is the mean of the paired per-sample differences of leave-one-out correctness (first
    minus this row, in points; negative when this row does better), with its standard error
    sd / sqrt(n). ``close`` is True within :data:`CLOSE_ERRORS` standard errors. Rows without the
    ridge score, or scored on other samples, get None.
    """
    first = rows[0].ridge_correct if rows else None
    for row in rows:
        row.vs_first = None
        if first is None or row.ridge_correct is None or row.ridge_correct.shape != first.shape or row is rows[0]:
            continue
        difference = first.astype(np.float64) - row.ridge_correct.astype(np.float64)
        gap = float(difference.mean())
        error = float(difference.std(ddof=1) / np.sqrt(difference.size)) if difference.size > 1 else 0.0
        row.vs_first = {"points": round(100 * gap, 2), "error": round(100 * error, 2), "close": bool(gap <= CLOSE_ERRORS * error)}

# --------------------------------------------------------------------------------------------------
# Console output
# --------------------------------------------------------------------------------------------------


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3f}"


def _format_gap(row: RankRow) -> str:
    if row.vs_first is None:
        return "" if row.rank == 1 else "n/a"
    return f"{row.vs_first['points']:+.1f} ± {row.vs_first['error']:.1f}" + (" ~" if row.vs_first["close"] else "")


def print_rank_table(table: RankTable, title: str | None = None, console=None) -> None:
    """Print the ranking as a rich table, then the reasons for every n/a and every skip."""
    from rich.table import Table

    from headstart.console import console as default_console

    console = console or default_console
    output = Table(title=title or f"ranking ({table.combination.describe()}; {table.sample['n_samples']} images)")
    output.add_column("#", justify="right")
    output.add_column("candidate")
    output.add_column("combined", justify="right")
    for name in table.scores:
        output.add_column(name, justify="right")
    gaps = any(row.vs_first is not None for row in table.rows)
    if gaps:
        output.add_column("vs #1", justify="right")
    for column in ("params", "MMACs", "img/s", "peak MB", "front"):
        output.add_column(column, justify="right")
    for row in table.rows:
        cost = row.cost
        output.add_row(
            str(row.rank),
            row.candidate,
            _format(row.combined),
            *[_format(row.scores.get(name)) for name in table.scores],
            *([_format_gap(row)] if gaps else []),
            f"{cost.params / 1e6:.2f}M" if cost else "n/a",
            f"{cost.macs / 1e6:.0f}" if cost else "n/a",
            f"{cost.images_per_s:.0f}" if cost else "n/a",
            f"{cost.peak_memory_bytes / 1e6:.0f}" if cost else "n/a",
            "*" if row.pareto else "",
        )
    if not console.is_terminal and console.width < 200:
        # Piped output is not cut to 80 columns: a table of "tim…" cells helps nobody.
        from rich.console import Console

        console = Console(file=console.file, width=200)
    console.print(output)
    notes = []
    seen: set[tuple[str, str]] = set()
    for row in table.rows:
        for name, reason in row.undefined.items():
            if (name, reason) not in seen:
                seen.add((name, reason))
                notes.append(f"n/a {name} ({row.candidate}): {reason}")
        if row.cost_error:
            notes.append(f"n/a cost ({row.candidate}): {row.cost_error}")
    for candidate, reason in table.skipped:
        notes.append(f"skipped {candidate}: {reason}")
    if gaps:
        close = [row.candidate for row in table.rows if row.vs_first and row.vs_first["close"]]
        notes.append(
            f"vs #1: how many points of leave-one-out ridge accuracy #1 leads by on these {table.sample['n_samples']} samples, "
            f"± one paired standard error; ~ marks a lead under {CLOSE_ERRORS:g} standard errors, where the order is noise"
            + (f" ({len(close)} candidate{'s' if len(close) != 1 else ''}: {', '.join(close)}); probe them all (headstart probe) to choose." if close else "; every other candidate is clearly behind.")
        )
    notes.append("front: * = on the Pareto front of combined score vs MACs (no candidate is both better and cheaper).")
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
