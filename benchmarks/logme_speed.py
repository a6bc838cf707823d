"""Time headstart's LogME beside the paper's algorithm written plainly, in one process, on the same inputs.

The reference is ``reference_logme`` of tests/test_scores.py (You et al., ICML 2021, Algorithm 1:
one SVD, then MacKay's fixed-point updates per class with explicit vectors, float64). Both run on
the same synthetic features (ReLU of a random projection of class centres plus noise, like pooled
CNN features), alternately, ``--repeats`` times each; the fastest wall time and its CPU time are kept,
and the two scores are compared.

* the shared cases (``--cases``, ``NxDxC``): both sides, float64, and the speed-up;
* the large case (``--samples`` x ``--features``, float32, ``--classes``): headstart alone (the
  reference would take minutes), against the goal of at most 3 s on 2 CPU cores; ``--check-float64``
  also scores it in float64 and compares.

Usage:
    .venv/bin/python benchmarks/logme_speed.py            # prints the Markdown section
    .venv/bin/python benchmarks/logme_speed.py --write    # also writes "## LogME speed" in benchmarks/RESULTS.md
    .venv/bin/python benchmarks/logme_speed.py --cases 2000x128x10 --samples 5000 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _results import cores, load, machine, write_section

from headstart.select.scores import logme

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_scores import reference_logme

SECTION = "## LogME speed (`benchmarks/logme_speed.py`)"
GOAL_SECONDS = 3.0


def synthetic_features(
    n_samples: int, n_features: int, n_classes: int, dtype: type = np.float32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """ReLU features of a random projection of class centres plus noise, like pooled CNN features."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_samples)
    centres = rng.standard_normal((n_classes, 64)).astype(np.float32)
    projection = rng.standard_normal((64, n_features)).astype(np.float32) / 32
    features = centres[labels] @ projection
    features += rng.standard_normal((n_samples, n_features), dtype=np.float32)
    features += 0.5
    np.maximum(features, 0.0, out=features)
    return features.astype(dtype, copy=False), labels


def timed(function, *args) -> tuple[float, float, float]:
    """Return ``(result, wall seconds, CPU seconds of this process)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def fastest(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The run with the lowest wall time."""
    return min(runs, key=lambda run: run[1])


def parse_case(text: str) -> tuple[int, int, int]:
    n, d, c = (int(part) for part in text.lower().split("x"))
    return n, d, c


def run(args) -> str:
    load_before = load()
    rows = []
    for n, d, c in (parse_case(case) for case in args.cases.split(",")):
        features, labels = synthetic_features(n, d, c, dtype=np.float64, seed=1)
        ours, reference = [], []
        for _ in range(args.repeats):
            reference.append(timed(reference_logme, features, labels))
            ours.append(timed(logme, features, labels))
        (expected, ref_wall, ref_cpu), (score, wall, cpu) = fastest(reference), fastest(ours)
        rows.append((n, d, c, wall, cpu, ref_wall, ref_cpu, abs(score - expected) / abs(expected)))
        print(f"{n} x {d}, {c} classes: headstart {wall:.2f} s ({cpu:.2f} CPU), reference {ref_wall:.2f} s "
              f"({ref_cpu:.2f} CPU), {ref_wall / wall:.1f}x", flush=True)
        del features

    features, labels = synthetic_features(args.samples, args.features, args.classes)
    large = [timed(logme, features, labels) for _ in range(args.repeats)]
    score, wall, cpu = fastest(large)
    print(f"large case: {wall:.2f} s ({cpu:.2f} CPU)", flush=True)
    exact_line = ""
    if args.check_float64:
        exact, exact_wall, _ = timed(logme, features.astype(np.float64), labels)
        exact_line = (f" Scored in float64 instead: {exact_wall:.2f} s, relative difference of the float32 score "
                      f"{abs(score - exact) / abs(exact):.1e}.")
    load_after = load()

    lines = [
        SECTION,
        "",
        "Written by `benchmarks/logme_speed.py --write`. headstart's `logme` beside the paper's algorithm written "
        "plainly (`reference_logme` in tests/test_scores.py: one SVD, then MacKay's updates per class, float64), "
        "in one process, alternately, on the same synthetic features (ReLU of a random projection of class "
        f"centres plus noise); fastest of {args.repeats} runs each, wall and CPU seconds of the process.",
        "",
        "| features (float64) | classes | headstart wall s | headstart CPU s | reference wall s | reference CPU s "
        "| speed-up (wall) | speed-up (CPU) | relative difference of the scores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, d, c, ours_wall, ours_cpu, ref_wall, ref_cpu, difference in rows:
        lines.append(
            f"| {n:,} x {d:,} | {c} | {ours_wall:.2f} | {ours_cpu:.2f} | {ref_wall:.2f} | {ref_cpu:.2f} | "
            f"**{ref_wall / ours_wall:.1f}x** | {ref_cpu / max(ours_cpu, 1e-9):.1f}x | {difference:.1e} |"
        )
    verdict = "met" if wall <= GOAL_SECONDS else "missed"
    lines += [
        "",
        f"Large case, headstart alone (the reference would take minutes): {args.samples:,} x {args.features:,} "
        f"float32 features, {args.classes} classes: **{wall:.2f} s** wall, {cpu:.2f} s CPU (fastest of "
        f"{args.repeats}); goal at most {GOAL_SECONDS:.0f} s on 2 cores: {verdict} (on {cores()} cores at a 1-minute load "
        f"average of {os.getloadavg()[0]:.1f}; its CPU time over {cores()} cores, {cpu / max(cores(), 1):.2f} s, bounds the wall "
        f"time of an idle machine from below).{exact_line}",
        "",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before: {load_before}; after: {load_after}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="5000x256x20,10000x1024x20", help="shared cases, NxDxC, comma-separated")
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=2_048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--check-float64", action="store_true", help="also score the large case in float64 and compare")
    parser.add_argument("--write", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    block = run(args)
    print(block)
    if args.write:
        write_section(block)
        print(f"wrote {SECTION} in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
