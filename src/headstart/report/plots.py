"""Plots for run reports, drawn with matplotlib's non-interactive Agg backend.

matplotlib is imported inside each function, so ``import headstart`` never pays for it. Every
function returns PNG bytes, or ``None`` when matplotlib is not installed (the report then shows its
tables and a note naming the install command).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

INSTALL_HINT = "pip install 'headstart[report]'"
BLUE = "#2563eb"
ORANGE = "#ea580c"
GREEN = "#16a34a"
GREY = "#6b7280"
PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")
DPI = 110


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    """pyplot on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "figure.dpi": DPI,
    })
    return plt


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def confusion_matrix_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str = "Confusion matrix") -> bytes | None:
    """A heatmap of row-normalised counts (each row is a true class), annotated with the counts.

    Args:
        matrix: Counts; rows are true classes, columns predicted classes.
        labels: Class names in row order.
        title: The plot title.
    """
    plt = _pyplot()
    if plt is None:
        return None
    counts = np.asarray(matrix, dtype=np.float64)
    n = len(labels)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(3.6, 0.45 * n + 1.6), 11)
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ticks = np.arange(n)
    show_labels = n <= 60
    ax.set_xticks(ticks, [str(label) for label in labels] if show_labels else [], rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(ticks, [str(label) for label in labels] if show_labels else [])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8 if n <= 12 else 6,
                            color="white" if rates[i, j] > 0.55 else "#111827")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return _png(fig)


def reliability_png(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15, title: str = "Reliability diagram") -> bytes | None:
    """Accuracy against confidence in equal-width bins, with the diagonal of perfect calibration.

    Args:
        confidence: Top-1 confidence of each prediction.
        correct: Whether each prediction was right.
        n_bins: Number of equal-width bins over [0, 1] (15, as in the ECE).
        title: The plot title.
    """
    plt = _pyplot()
    if plt is None:
        return None
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / np.maximum(counts, 1)
    mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / np.maximum(counts, 1)
    ece = float(np.abs(accuracy - mean_confidence)[counts > 0] @ counts[counts > 0] / max(len(confidence), 1))
    width = 1.0 / n_bins
    centers = edges[:-1] + width / 2
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = counts > 0
    top.bar(centers[filled], accuracy[filled], width=width * 0.92, color=BLUE, alpha=0.85, label="accuracy")
    top.hlines(mean_confidence[filled], centers[filled] - width * 0.46, centers[filled] + width * 0.46, color=ORANGE,
               linewidth=2.2, label="mean confidence")
    top.plot([0, 1], [0, 1], "--", color=GREY, linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_xlim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title} (ECE {ece:.3f}, n={len(confidence)})")
    top.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.bar(centers, counts, width=width * 0.92, color=GREY)
    bottom.set_ylabel("count")
    bottom.set_xlabel("confidence (top-1 probability)")
    return _png(fig)


def probe_bars_png(rows: list[dict], metric: str = "accuracy", title: str = "Test accuracy by backbone and head") -> bytes | None:
    """Grouped horizontal bars: one group per backbone, one bar per head.

    Args:
        rows: Dicts with ``backbone``, ``head`` and ``metric``.
        metric: The key of the value to draw.
        title: The plot title.
    """
    plt = _pyplot()
    if plt is None:
        return None
    backbones = list(dict.fromkeys(str(row["backbone"]) for row in rows))
    heads = list(dict.fromkeys(str(row["head"]) for row in rows))
    height = 0.8 / max(len(heads), 1)
    fig, ax = plt.subplots(figsize=(7.2, max(1.8, 0.32 * len(backbones) * len(heads) + 0.9)))
    values = [float(row[metric]) for row in rows if row.get(metric) is not None]
    low = max(0.0, min(values) - 0.1) if values else 0.0
    for h, head in enumerate(heads):
        ys, xs = [], []
        for b, backbone in enumerate(backbones):
            match = [r for r in rows if str(r["backbone"]) == backbone and str(r["head"]) == head and r.get(metric) is not None]
            if match:
                ys.append(b + (h - (len(heads) - 1) / 2) * height)
                xs.append(float(match[0][metric]))
        bars = ax.barh(ys, [x - low for x in xs], left=low, height=height * 0.9, color=PALETTE[h % len(PALETTE)], label=head)
        for bar, x in zip(bars, xs):
            ax.text(x + 0.003, bar.get_y() + bar.get_height() / 2, f"{x:.3f}", va="center", fontsize=7)
    ax.set_yticks(range(len(backbones)), backbones)
    ax.invert_yaxis()
    ax.set_xlim(low, min(1.0, max(values) + 0.06) if values else 1.0)
    ax.set_xlabel(metric)
    ax.set_title(title)
    ax.grid(axis="y", visible=False)
    ax.legend(title="head", fontsize=8, frameon=False, loc="lower right")
    return _png(fig)


def pareto_front(costs: Sequence[float], scores: Sequence[float], higher_cost_is_better: bool = False) -> list[int]:
    """Indices of the points no other point beats on both cost and score.

    Lower cost is better unless ``higher_cost_is_better`` (an axis like images/s). Ties count as
    not beaten, so equal points are all on the front. Returned in order of cost, best first.
    """
    sign = -1.0 if higher_cost_is_better else 1.0
    points = sorted(range(len(costs)), key=lambda i: (sign * costs[i], -scores[i]))
    front: list[int] = []
    best = -math.inf
    for i in points:
        if scores[i] >= best:
            front.append(i)
            best = max(best, scores[i])
    return front


def pareto_png(labels: Sequence[str], costs: Sequence[float], scores: Sequence[float], cost_name: str, score_name: str,
               front: Sequence[int] | None = None, higher_cost_is_better: bool = False,
               title: str = "Accuracy versus cost") -> bytes | None:
    """A scatter of candidates by cost and score, with the Pareto front joined and labelled.

    Args:
        labels: Candidate names.
        costs: Cost of each candidate (lower is better).
        scores: Score of each candidate (higher is better).
        cost_name: The x axis label.
        score_name: The y axis label.
        front: Indices on the front (default: computed with :func:`pareto_front`).
        higher_cost_is_better: For an x axis where more is better, such as images/s.
        title: The plot title.
    """
    plt = _pyplot()
    if plt is None:
        return None
    costs = [float(c) for c in costs]
    scores = [float(s) for s in scores]
    front = list(front) if front is not None else pareto_front(costs, scores, higher_cost_is_better)
    on_front = set(front)
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    others = [i for i in range(len(costs)) if i not in on_front]
    ax.scatter([costs[i] for i in others], [scores[i] for i in others], color=GREY, s=28, label="dominated", zorder=2)
    ordered = sorted(front, key=lambda i: costs[i])
    ax.plot([costs[i] for i in ordered], [scores[i] for i in ordered], "-o", color=ORANGE, markersize=6, label="Pareto front", zorder=3)
    if costs and min(costs) > 0 and max(costs) / min(costs) > 30:
        ax.set_xscale("log")
    for i, label in enumerate(labels):
        ax.annotate(_short(str(label), 32), (costs[i], scores[i]), textcoords="offset points", xytext=(5, 4), fontsize=7,
                    color="#111827" if i in on_front else GREY)
    ax.set_xlabel(f"{cost_name} ({'higher' if higher_cost_is_better else 'lower'} is better)")
    ax.set_ylabel(f"{score_name} (higher is better)")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _png(fig)


def curves_png(x: Sequence[float], series: dict[str, Sequence[float | None]], x_name: str,
               phases: Sequence[tuple[float, float, str]] = (), title: str = "Training curves",
               marks: Sequence[tuple[float, str]] = ()) -> bytes | None:
    """Training curves in up to three panels (losses, metrics, learning rate), phases shaded.

    Args:
        x: Epoch (or step) of each row.
        series: Column name to values; missing values are ``None``.
        x_name: The x axis label.
        phases: ``(start, end, label)`` spans, e.g. unfreeze phases; boundaries are marked.
        title: The plot title.
        marks: ``(x, label)`` points to mark with a vertical line, e.g. the best epoch.
    """
    plt = _pyplot()
    if plt is None:
        return None
    groups: dict[str, list[str]] = {"loss": [], "metric": [], "learning rate": []}
    for name in series:
        lowered = name.lower()
        if "loss" in lowered:
            groups["loss"].append(name)
        elif lowered in ("lr", "learning_rate") or lowered.startswith(("lr/", "lr_", "lr-")) or "learning_rate" in lowered:
            groups["learning rate"].append(name)
        else:
            groups["metric"].append(name)
    panels = [(name, columns) for name, columns in groups.items() if columns]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels) + 0.6, 3.4), squeeze=False)
    xs = np.asarray(x, dtype=np.float64)
    from matplotlib.ticker import MaxNLocator
    for ax, (panel, columns) in zip(axes[0], panels):
        for k, column in enumerate(columns):
            ys = np.array([np.nan if v is None else float(v) for v in series[column]])
            keep = np.isfinite(ys)
            style = "--" if column.lower().startswith("train") else "-"
            ax.plot(xs[keep], ys[keep], style, marker="o" if keep.sum() <= 30 else None, markersize=3,
                    color=PALETTE[k % len(PALETTE)], label=column)
        for p, (start, end, label) in enumerate(phases):
            if p % 2 == 1:
                ax.axvspan(start, end, color="#fde68a", alpha=0.35, linewidth=0)
            if p > 0:
                ax.axvline(start, color=ORANGE, linestyle=":", linewidth=1.2)
            ax.text(start, 0.98 if p % 2 == 0 else 0.89, " " + _short(label, 16), transform=ax.get_xaxis_transform(),
                    ha="left", va="top", fontsize=7, color=ORANGE)
        for where, label in marks:
            ax.axvline(where, color=GREEN, linestyle="--", linewidth=1)
            ax.text(where, 0.02, f" {label}", transform=ax.get_xaxis_transform(), ha="left", va="bottom", fontsize=7, color=GREEN)
        if panel == "learning rate":
            positive = [float(v) for c in columns for v in series[c] if v is not None and float(v) > 0]
            if positive and max(positive) / min(positive) > 50:
                ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel(x_name)
        if np.all(xs == np.round(xs)):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, frameon=False, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def overlay_png(curves: Sequence[tuple[str, Sequence[float], str, Sequence[float | None]]], x_name: str = "epoch") -> bytes | None:
    """One line per run: ``(run name, x, column, values)``, for the comparison page."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for k, (name, x, column, values) in enumerate(curves):
        points = [(a, b) for a, b in zip(x, values) if b is not None]
        ax.plot([a for a, _ in points], [b for _, b in points], "-o", markersize=3, color=PALETTE[k % len(PALETTE)],
                label=f"{name}: {column}")
    ax.set_xlabel(x_name)
    ax.set_title("validation curve of each run")
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)
