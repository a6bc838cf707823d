"""LP-FT ablations on Animal-MNIST: BatchNorm mode (stats-frozen, train, AdaBN) and the weight EMA.

The setting of ``benchmarks/finetune.py``: built-in Animal-MNIST with 100 training images per class
(900 train + 100 validation for fine-tuning, the best epoch kept), 2,000 test images,
``tv:mobilenet_v2.IMAGENET1K_V1`` at 112 px, on the CPU, seed 0. Every row is ``finetune(...,
strategy="lp-ft")`` with the library's defaults except the one thing the row names:

* ``stats-frozen`` (the default): BatchNorm keeps ImageNet's running statistics;
* ``bn train``: the same policy with ``bn="train"`` (batch statistics, running statistics follow);
* ``AdaBN``: BatchNorm's running statistics are first re-estimated on the 900 training images (one
  pass in train mode, cumulative average, no gradient), then LP-FT runs on that backbone as usual:
  its probe is fitted on the adapted features (a fresh feature store), BatchNorm ``stats-frozen``;
* ``EMA 0.99``: ``ema_decay=0.99``: the exponential moving average of the weights is validated,
  kept and scored;

each for ``--epochs`` (5) epochs and, for the default and the EMA, also for ``--short`` (2) epochs.
Reported: the LP-FT probe's test accuracy, the first epoch's mean training loss, the kept epoch, the
test accuracy, and wall and CPU seconds of the call. ``docs/finetuning.md`` quotes this section.

Usage:
    .venv/bin/python benchmarks/finetune_ablations.py            # prints the Markdown section (about 10 CPU-minutes)
    .venv/bin/python benchmarks/finetune_ablations.py --write    # also writes its section in benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import load, machine, write_section

BACKBONE = "tv:mobilenet_v2.IMAGENET1K_V1"
HERE = Path(__file__).resolve().parent
STORE = HERE / "_data" / "store"
SECTION = "## Fine-tuning: BatchNorm and EMA (`benchmarks/finetune_ablations.py`)"


def adabn(backbone, data, rows: np.ndarray, image_size: int, batch_size: int = 100) -> None:
    """Re-estimate every BatchNorm's running statistics on ``rows`` (full images, no augmentation), in place."""
    from headstart.data.augment import AugmentConfig, augment_batch

    spec = backbone.spec.with_input_size(image_size)
    whole = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    norms = [m for m in backbone.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    backbone.model.train()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            images = np.stack([data.items[i] for i in rows[start : start + batch_size]])
            backbone.model(augment_batch(images, spec, whole, seed=0))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    backbone.model.eval()


def run(args) -> str:
    from headstart.backbones import load_backbone
    from headstart.data import load_data
    from headstart.engine.policy import strategy_policy
    from headstart.features import FeatureStore
    from headstart.finetune import finetune
    from headstart.finetune.data import split_indices

    started, load_before = time.perf_counter(), load()
    data = load_data("builtin:animal-mnist", per_class=args.per_class, seed=0)
    train_rows, val_rows, _ = split_indices(data, 0.1, 0)  # what finetune() trains and validates on
    n_test = len(data.indices("test"))
    common = {"image_size": args.image_size, "seed": 0, "quiet": args.quiet}
    rows = []

    def record(name: str, call) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        first_loss = result.history[0]["train_loss"] if result.history else float("nan")
        rows.append((name, len(result.history), result.probe_test_accuracy, first_loss, result.best_epoch, result.test.accuracy, wall, cpu, result.lr))
        print(f"{name}: {result.test.accuracy:.4f} (kept epoch {result.best_epoch}, epoch-1 loss {first_loss:.3f}, {wall:.0f} s)", flush=True)

    store = FeatureStore(STORE)
    with tempfile.TemporaryDirectory() as tmp:
        record(f"stats-frozen (default), {args.epochs} epochs",
               lambda: finetune(data, BACKBONE, strategy="lp-ft", epochs=args.epochs, store=store, out=Path(tmp) / "default", **common))
        lr = rows[-1][-1]
        spec = load_backbone(BACKBONE).spec
        policy = dataclasses.replace(strategy_policy("lp-ft", spec, args.epochs), bn="train")
        record(f"bn train, {args.epochs} epochs",
               lambda: finetune(data, BACKBONE, policy=policy, lr=lr, epochs=args.epochs, store=store, out=Path(tmp) / "train", **common))

        def adapted():
            backbone = load_backbone(BACKBONE)
            adabn(backbone, data, train_rows, args.image_size)
            fresh = FeatureStore(Path(tmp) / "adabn-store")  # the adapted weights' features, never the stored ones
            return finetune(data, backbone, strategy="lp-ft", epochs=args.epochs, store=fresh, out=Path(tmp) / "adabn", **common)

        record(f"AdaBN, then stats-frozen, {args.epochs} epochs", adapted)
        record(f"EMA 0.99, {args.epochs} epochs",
               lambda: finetune(data, BACKBONE, strategy="lp-ft", epochs=args.epochs, ema_decay=0.99, store=store, out=Path(tmp) / "ema", **common))
        record(f"stats-frozen (default), {args.short} epochs",
               lambda: finetune(data, BACKBONE, strategy="lp-ft", epochs=args.short, store=store, out=Path(tmp) / "default-short", **common))
        record(f"EMA 0.99, {args.short} epochs",
               lambda: finetune(data, BACKBONE, strategy="lp-ft", epochs=args.short, ema_decay=0.99, store=store, out=Path(tmp) / "ema-short", **common))

    lines = [
        SECTION,
        "",
        "Written by `benchmarks/finetune_ablations.py --write`. LP-FT (`finetune(..., strategy=\"lp-ft\")`, learning rate "
        f"{lr:g}, the library's other defaults) on Animal-MNIST, {args.per_class} training images per class ({len(train_rows)} train "
        f"+ {len(val_rows)} validation, best epoch kept), {n_test:,} test images, {BACKBONE}, {args.image_size} px, CPU, "
        f"{torch.get_num_threads()} torch thread(s), seed 0, one run per row; each row changes one thing (see the script's "
        "docstring). AdaBN: BatchNorm's running statistics re-estimated on the training images before the probe is fitted.",
        "",
        "| LP-FT with | epochs run | its probe's test accuracy | epoch-1 mean training loss | kept epoch | test accuracy | wall s | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, epochs, probe_accuracy, first_loss, best, accuracy, wall, cpu, _ in rows:
        kept = "probe (-1)" if best < 0 else str(best)
        lines.append(f"| {name} | {epochs} | {probe_accuracy:.3f} | {first_loss:.2f} | {kept} | {accuracy:.3f} | {wall:.0f} | {cpu:.0f} |")
    lines += [
        "",
        "Kept epoch counts from 0; -1 is the probe's head before any fine-tuning.",
        "",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before: {load_before}; after: {load()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {(time.perf_counter() - started) / 60:.1f} min in all",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="Epochs of the main rows.")
    parser.add_argument("--short", type=int, default=2, help="Epochs of the short default and EMA rows.")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU).")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--write", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("HEADSTART_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    block = run(args)
    print(block)
    if args.write:
        write_section(block)
        print(f"wrote {SECTION} in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
