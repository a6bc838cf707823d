"""Time headstart's LinearProbe beside a plain scikit-learn C search, on the same features and splits.

Both sides follow the same protocol on MobileNetV2 (ImageNet) features of Animal-MNIST (100 training
images per class, 112 px; 2,000 test images):

* standardize the features with the mean and scale of all training rows;
* hold out the same stratified 20 % validation split;
* fit L2 logistic regression for each C of ``np.logspace(-6, 5, 45)`` on the rest, and score it on
  the validation split; the best validation accuracy wins, ties go to the lower validation log loss;
* refit with the chosen C on all training rows, and score the test split.

The baseline is ``LogisticRegression(max_iter=1000)``, fitted independently for every C. LinearProbe
warm-starts along the C path and stops once validation accuracy has peaked.

A 200-image validation split decides C by one or two images, and L-BFGS stopped at tol=1e-4 moves
test accuracy by a few tenths of a point too, so one split says little about "the same accuracy".
The comparison is therefore repeated over ``--seeds`` validation splits, and the mean is reported.
Both sides run in one process, alternately, with the same number of threads (``--threads``, default
1, as the CPU may be shared). Times are wall time and CPU time of the process; CPU time is the
steadier of the two on a shared machine.

Usage:
    .venv/bin/python benchmarks/probe.py            # prints the Markdown section
    .venv/bin/python benchmarks/probe.py --write    # also writes "## LinearProbe speed" in benchmarks/RESULTS.md
    .venv/bin/python benchmarks/probe.py --seeds 10 --threads 2 --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _results import load, machine, write_section
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import headstart
from headstart.features import FeatureStore
from headstart.heads import LinearProbe
from headstart.heads._base import encode_targets, stratified_split
from headstart.heads.linear import DEFAULT_CS

BACKBONE = "tv:mobilenet_v2.IMAGENET1K_V1"
STORE = Path(__file__).resolve().parent / "_data" / "store"
SECTION = "## LinearProbe speed (`benchmarks/probe.py`)"


def load_features(image_size: int, per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(X_train, y_train, X_test, y_test)``: pooled MobileNetV2 features of Animal-MNIST."""
    data = headstart.load_data("builtin:animal-mnist", per_class=per_class, seed=0)
    features = headstart.extract(BACKBONE, data, image_size=image_size, store=FeatureStore(STORE), quiet=True)
    X_train, y_train = features.get("train")
    X_test, y_test = features.get("test")
    return X_train, y_train, X_test, y_test


def sklearn_search(X: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple:
    """The baseline: an independent LogisticRegression per C, then a refit on all rows."""
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    best_accuracy, best_loss, best_C = -np.inf, np.inf, None
    for C in DEFAULT_CS:
        model = LogisticRegression(C=C, max_iter=1000).fit(Z[train], y[train])
        proba = model.predict_proba(Z[val])
        accuracy = np.mean(model.classes_[proba.argmax(axis=1)] == y[val])
        loss = log_loss(y[val], proba, labels=model.classes_)
        if accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss):
            best_accuracy, best_loss, best_C = accuracy, loss, C
    final = LogisticRegression(C=best_C, max_iter=1000).fit(Z, y)
    return scaler, final, best_C


def timed(function, *args):
    """Return ``(result, wall seconds, CPU seconds of this process)`` of one call."""
    wall = time.perf_counter()
    cpu = time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="validation splits to compare on")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for both sides")
    parser.add_argument("--device", default="cpu", help="LinearProbe's device: cpu, cuda or auto")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--write", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args()

    X_train, y_train, X_test, y_test = load_features(args.image_size, args.per_class)
    load_before = load()
    print(f"features: {BACKBONE} at {args.image_size} px, train {X_train.shape}, test {X_test.shape}")
    targets = encode_targets(y_train, "LinearProbe")

    rows = []
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        # Warm up torch (first-call overheads) so that the timings measure the search.
        LinearProbe(Cs=1.0, val_fraction=0, device=args.device).fit(X_train[::20], y_train[::20])
        for seed in range(args.seeds):
            # The very split LinearProbe makes with this seed (same function, same arguments).
            train, val = stratified_split(targets, 0.2, seed, "LinearProbe", "")
            probe, probe_wall, probe_cpu = timed(
                LinearProbe(device=args.device, random_state=seed).fit, X_train, y_train
            )
            (scaler, baseline, baseline_C), sk_wall, sk_cpu = timed(sklearn_search, X_train, y_train, train, val)
            row = {
                "seed": seed,
                "probe_accuracy": probe.score(X_test, y_test),
                "probe_C": probe.C_,
                "probe_fits": len(probe.val_curve_),
                "probe_wall": probe_wall,
                "probe_cpu": probe_cpu,
                "sk_accuracy": baseline.score(scaler.transform(X_test), y_test),
                "sk_C": baseline_C,
                "sk_wall": sk_wall,
                "sk_cpu": sk_cpu,
            }
            rows.append(row)
            print(
                f"seed {seed}: LinearProbe {row['probe_accuracy']:.4f} (C={probe.C_:.3g}, "
                f"{row['probe_fits']} fits, {probe_wall:.2f} s wall, {probe_cpu:.2f} s CPU) | "
                f"sklearn {row['sk_accuracy']:.4f} (C={baseline_C:.3g}, 45 fits, {sk_wall:.2f} s wall, "
                f"{sk_cpu:.2f} s CPU)",
                flush=True,
            )

    def mean(key: str) -> float:
        return float(np.mean([row[key] for row in rows]))

    difference = 100 * (mean("probe_accuracy") - mean("sk_accuracy"))
    wall_ratio = mean("sk_wall") / mean("probe_wall")
    cpu_ratio = mean("sk_cpu") / mean("probe_cpu")
    print()
    print(f"mean over {len(rows)} validation splits: accuracy difference {difference:+.2f} points, "
          f"{wall_ratio:.1f}x faster (wall), {cpu_ratio:.1f}x less CPU")
    device = "CPU" if args.device == "cpu" else args.device
    lines = [
        SECTION,
        "",
        "Written by `benchmarks/probe.py --write`. `LinearProbe` beside a plain scikit-learn C search on the same "
        "standardized features and the same stratified 20 % validation split, in one process, alternately "
        f"(the protocol is in the script's docstring). {BACKBONE} features at {args.image_size} px of Animal-MNIST, "
        f"{len(X_train):,} train ({args.per_class} per class) / {len(X_test):,} test; {len(rows)} validation splits "
        f"(seeds 0-{len(rows) - 1}): mean, and min-max test accuracy over the splits; {args.threads} thread(s) for "
        f"both sides; LinearProbe on the {device}.",
        "",
        "| method | C values fitted | test accuracy | wall s | CPU s |",
        "|---|---|---|---|---|",
    ]
    for name, prefix, fits in (
        ("LinearProbe (torch L-BFGS, warm start, early stop)", "probe", f"{mean('probe_fits'):.1f}"),
        ("sklearn LogisticRegression(max_iter=1000) per C", "sk", str(len(DEFAULT_CS))),
    ):
        accuracies = [row[f"{prefix}_accuracy"] for row in rows]
        lines.append(f"| {name} | {fits} | {np.mean(accuracies):.4f} ({min(accuracies):.4f}-{max(accuracies):.4f}) | "
                     f"{mean(prefix + '_wall'):.2f} | {mean(prefix + '_cpu'):.2f} |")
    lines += [
        f"| LinearProbe vs sklearn | | {difference:+.2f} points | **{wall_ratio:.1f}x** faster | {cpu_ratio:.1f}x less |",
        "",
        "Per split (C chosen, test accuracy): "
        + "; ".join(
            f"seed {row['seed']}: LinearProbe C={row['probe_C']:.3g} {row['probe_accuracy']:.4f}, "
            f"sklearn C={row['sk_C']:.3g} {row['sk_accuracy']:.4f}"
            for row in rows
        )
        + ".",
        "",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before: {load_before}; after: {load()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    block = "\n".join(lines)
    print()
    print(block)
    if args.write:
        write_section(block)
        print(f"wrote {SECTION} in benchmarks/RESULTS.md")

if __name__ == "__main__":
    main()
