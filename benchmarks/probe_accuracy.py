"""Linear-probe accuracy on Animal-MNIST (100 per class, 2,000 test images) at 112 and 224 px.

    .venv/bin/python benchmarks/probe_accuracy.py [--sizes 112,224] [--seeds 0,1,2] [--write]

For each seed (the training sample, the validation split and the head), each backbone and each size,
a ``LinearProbe(random_state=seed)`` (C chosen on its 20 % validation split), as ``headstart probe``
fits it, on the pooled penultimate features of the training images scores the 2,000 test images.
The training and test images are extracted as two datasets, so that the test set's features are
computed once and read back from the store for the other seeds. For ``--oracle`` (default
EfficientNet-Lite0), the script also fits one probe per C of the same grid on all training images and
keeps the best test accuracy: an oracle choice of C, which says how much of a gap to the goal is the
choice of C on 200 validation images rather than the features.

Reference points (DESIGN.md, hand-written baseline at 112 px, one split with a 100-per-class test
set): EfficientNet-Lite0 0.945, MobileNetV2 0.926, MobileNetV2 random init 0.756. Goal:
EfficientNet-Lite0 >= 0.94. ``--write`` writes "## Linear probe accuracy" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from _results import load, machine, write_section

from headstart import FeatureStore, extract, load_data
from headstart.heads import LinearProbe
from headstart.heads.linear import DEFAULT_CS

BACKBONES = ("timm:tf_efficientnet_lite0", "tv:mobilenet_v2.IMAGENET1K_V1", "tv:mobilenet_v2@random")
LABELS = {
    "timm:tf_efficientnet_lite0": "timm:tf_efficientnet_lite0 (ImageNet)",
    "tv:mobilenet_v2@random": "tv:mobilenet_v2@random (control)",
}
REFERENCE_112 = {"timm:tf_efficientnet_lite0": 0.945, "tv:mobilenet_v2.IMAGENET1K_V1": 0.926, "tv:mobilenet_v2@random": 0.756}
GOAL = 0.94
SECTION = "## Linear probe accuracy (`benchmarks/probe_accuracy.py`)"


def features_of(backbone: str, data, size: int, store: FeatureStore) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (X, y), "test": (X, y)}``: training (and val) rows and test rows, extracted as two datasets."""
    parts = {"train": np.flatnonzero(np.isin(data.split, ("train", "val"))), "test": data.indices("test")}
    out = {}
    for name, rows in parts.items():
        part = data.subset(rows)
        features = extract(backbone, part, image_size=size, store=store, quiet=True)
        out[name] = (features.X[features.valid], part.labels[features.valid])
    return out


def accuracy(probe: LinearProbe, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probe.predict(X) == y))


def oracle_accuracy(features: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The best test accuracy of a LinearProbe over the C grid, each fitted on all training rows."""
    (X_train, y_train), (X_test, y_test) = features["train"], features["test"]
    return max(
        accuracy(LinearProbe(Cs=float(C), val_fraction=0, device="cpu").fit(X_train, y_train), X_test, y_test)
        for C in DEFAULT_CS
    )


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="112,224")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--oracle", default="timm:tf_efficientnet_lite0", help="backbone whose oracle-C accuracy is measured ('' for none)")
    parser.add_argument("--cache", default=None, help="feature store (default: a temporary one)")
    parser.add_argument("--write", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args()
    store = FeatureStore(args.cache or tempfile.mkdtemp(prefix="hs-probe-acc-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = load()
    started = time.perf_counter()
    results: dict[tuple[str, int], list[float]] = {}
    oracle: dict[int, list[float]] = {}
    for seed in seeds:
        data = load_data("builtin:animal-mnist", per_class=100, seed=seed)
        for size in sizes:
            for backbone in BACKBONES:
                features = features_of(backbone, data, size, store)
                probe = LinearProbe(random_state=seed).fit(*features["train"])
                results.setdefault((backbone, size), []).append(accuracy(probe, *features["test"]))
                print(f"seed {seed} {size}px {backbone}: {results[(backbone, size)][-1]:.4f} (C={probe.C_:.3g})", flush=True)
                if backbone == args.oracle:
                    oracle.setdefault(size, []).append(oracle_accuracy(features))
                    print(f"seed {seed} {size}px {backbone}, oracle C: {oracle[size][-1]:.4f}", flush=True)
    n_train, n_test = len(data.indices("train")), len(data.indices("test"))

    lines = [
        SECTION,
        "",
        f"Written by `benchmarks/probe_accuracy.py --write` (seeds {args.seeds}, sizes {args.sizes}). Animal-MNIST, "
        f"{n_train:,} training images (100 per class, drawn with each seed), {n_test:,} held-out test images; "
        "`LinearProbe` on pooled penultimate features, C chosen on its stratified 20 % validation split (seeded). "
        f"Test accuracy, mean (min-max) over seeds {', '.join(map(str, seeds))}.",
        "",
        f"| backbone | {' | '.join(f'{s} px' for s in sizes)} |",
        f"|---|{'---|' * len(sizes)}",
    ]
    for backbone in BACKBONES:
        best = {size: np.mean(results[(backbone, size)]) for size in sizes}
        top = max(best.values())
        cells = [(f"**{cell(results[(backbone, s)])}**" if best[s] == top and backbone == BACKBONES[0] else cell(results[(backbone, s)])) for s in sizes]
        lines.append(f"| {LABELS.get(backbone, backbone)} | {' | '.join(cells)} |")
    if oracle:
        lines.append(f"| {args.oracle}, C chosen on the test set (oracle) | {' | '.join(cell(oracle[s]) if s in oracle else '' for s in sizes)} |")
    lead = BACKBONES[0]
    verdicts = [
        f"{size} px {'met' if np.mean(results[(lead, size)]) >= GOAL else 'missed'} "
        f"({np.mean(results[(lead, size)]):.3f}, {sum(v >= GOAL for v in results[(lead, size)])} of {len(seeds)} seeds at or above)"
        for size in sizes
    ]
    lines += [
        "",
        f"Goal: EfficientNet-Lite0 at least {GOAL:.2f}: " + "; ".join(verdicts) + ". "
        "Reference points quoted from DESIGN.md (the hand-written baseline at 112 px, one split with a 100-per-class "
        "test set, not rerun here): " + ", ".join(f"{b} {v:.3f}" for b, v in REFERENCE_112.items()) + ".",
    ]
    if oracle:
        lines.append(
            "The oracle row fits one probe per C of the same grid (45 values, 1e-6 to 1e5) on all training images and "
            "keeps the best test accuracy; its distance to the row above is what choosing C on 200 validation images costs."
        )
    lines += [
        "",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before: {load_before}; after: {load()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {(time.perf_counter() - started) / 60:.1f} min in all",
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
