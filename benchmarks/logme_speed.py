"""Time headstart's LogME on a large input, and beside the plain reference on a smaller one.

The large case is the speed goal: 50,000 samples x 2,048 float32 features in at most 3 s on 2 CPU
cores. The reference (the paper's algorithm written plainly, from tests/test_scores.py) is too slow
for that size, so it runs on a smaller case, where both are timed and their scores compared.

Usage:
    .venv/bin/python benchmarks/logme_speed.py
    .venv/bin/python benchmarks/logme_speed.py --samples 50000 --features 2048 --classes 1000 --check-float64
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from headstart.select.scores import logme

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_scores import reference_logme


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


def timed(function, *args) -> tuple[float, float]:
    """Return (result, wall-clock seconds) of one call."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=2_048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-samples", type=int, default=5_000)
    parser.add_argument("--reference-features", type=int, default=256)
    parser.add_argument("--check-float64", action="store_true", help="also score the large case in float64 and compare")
    args = parser.parse_args()

    # Timings on a shared machine: the load average says how many other processes competed.
    print(f"cpus available: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")

    features, labels = synthetic_features(args.samples, args.features, args.classes)
    print(f"large case: {args.samples} x {args.features} float32, {args.classes} classes")
    seconds = []
    cpu_start = time.process_time()
    for _ in range(args.repeats):
        score, elapsed = timed(logme, features, labels)
        seconds.append(elapsed)
    cpu_per_call = (time.process_time() - cpu_start) / args.repeats
    print(
        f"  headstart logme: {score:.10f}  seconds: "
        + ", ".join(f"{s:.2f}" for s in seconds)
        + f"  (best {min(seconds):.2f}; CPU time per call {cpu_per_call:.2f})"
    )
    if args.check_float64:
        exact, elapsed = timed(logme, features.astype(np.float64), labels)
        print(
            f"  float64 logme:   {exact:.10f}  seconds: {elapsed:.2f}  "
            f"relative difference: {abs(score - exact) / abs(exact):.1e}"
        )
    del features

    small, small_labels = synthetic_features(
        args.reference_samples, args.reference_features, min(args.classes, 20), dtype=np.float64, seed=1
    )
    print(f"small case: {args.reference_samples} x {args.reference_features} float64, {min(args.classes, 20)} classes")
    expected, reference_seconds = timed(reference_logme, small, small_labels)
    score, elapsed = timed(logme, small, small_labels)
    print(f"  reference logme: {expected:.10f}  seconds: {reference_seconds:.2f}")
    print(
        f"  headstart logme: {score:.10f}  seconds: {elapsed:.2f}  "
        f"relative difference: {abs(score - expected) / abs(expected):.1e}"
    )


if __name__ == "__main__":
    main()
