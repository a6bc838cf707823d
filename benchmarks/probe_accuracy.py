"""Linear-probe accuracy on Animal-MNIST (100 per class, 2,000 test images) at 112 and 224 px.

    python benchmarks/probe_accuracy.py [--sizes 112,224] [--seed 0]

Reference points (DESIGN.md, hand-written baseline at 112 px): EfficientNet-Lite0 0.945,
MobileNetV2 0.926, MobileNetV2 random init 0.756. Goal: EfficientNet-Lite0 >= 0.94.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import torch

from headstart import FeatureStore, load_data
from headstart.workflows.probe import probe

BACKBONES = ("timm:tf_efficientnet_lite0", "tv:mobilenet_v2.IMAGENET1K_V1", "tv:mobilenet_v2@random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="112,224")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache", default=None, help="feature store (default: a temporary one)")
    args = parser.parse_args()
    store = FeatureStore(args.cache or tempfile.mkdtemp(prefix="hs-probe-acc-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    for seed in seeds:
        data = load_data("builtin:animal-mnist", per_class=100, seed=seed)
        for size in sizes:
            report = probe(data, list(BACKBONES), ["linear"], image_size=size, seed=seed, store=store, quiet=True)
            for run in report.runs:
                results.setdefault((run.backbone, size), []).append(run.test.accuracy)
                print(f"seed {seed} {size}px {run.backbone}: {run.test.accuracy:.4f}", flush=True)
    print(f"\n| backbone | {' | '.join(f'{s} px' for s in sizes)} |")
    print(f"|---|{'---|' * len(sizes)}")
    for backbone in BACKBONES:
        cells = []
        for size in sizes:
            values = results[(backbone, size)]
            cells.append(f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {backbone} | {' | '.join(cells)} |")
    print(f"\nmean (min-max) test accuracy over seeds {seeds} (split and head seed); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")


if __name__ == "__main__":
    main()
