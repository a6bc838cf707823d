"""Fine-tuning on Animal-MNIST: linear probe vs LP-FT vs last-stage vs full fine-tuning from random init.

Setup (issue 4): built-in Animal-MNIST with 100 training images per class (1,000; fine-tuning holds
out 10 % of them for validation and early stopping) and 2,000 test images, MobileNetV2 with
torchvision's ImageNet weights (``tv:mobilenet_v2.IMAGENET1K_V1``), 112 px, on the CPU.

Rows, all scored on the same 2,000 test images:

* the linear probe (``headstart probe``: LinearProbe on all 1,000 training images' stored features);
* LP-FT (``strategy="lp-ft"``): the probe's head, then the whole network;
* plain fine-tuning of the last stage (``strategy="last-stage"``: random head, last stage trains);
* full fine-tuning from random init (``tv:mobilenet_v2@random``, ``strategy="full"``).

Speed: seconds per training epoch of headstart's loop (full fine-tuning, every parameter trains)
beside a plain PyTorch loop written like the founding document: the same torchvision MobileNetV2
and the same 900 training images, per-image PIL transforms (RandomResizedCrop, flip, ToTensor,
Normalize), a DataLoader with batch 32 and no workers, fp32, Adam. Both run in this process with the
same threads; wall time and process CPU time are reported (CPU time is steadier on a shared machine).

Usage:
    .venv/bin/python benchmarks/finetune.py            # prints a Markdown block
    .venv/bin/python benchmarks/finetune.py --write    # also replaces "## Fine-tuning" in benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_section

BACKBONE = "tv:mobilenet_v2.IMAGENET1K_V1"
RANDOM = "tv:mobilenet_v2@random"
HERE = Path(__file__).resolve().parent
STORE = HERE / "_data" / "store"
SECTION = "## Fine-tuning"


def plain_loop_epochs(data, train_rows: np.ndarray, image_size: int, epochs: int, seed: int) -> list[tuple[float, float]]:
    """Train MobileNetV2 the founding document's way; return (wall, CPU) seconds of each epoch."""
    from PIL import Image
    from torch import nn
    from torchvision import transforms

    from headstart.backbones import load_backbone

    torch.manual_seed(seed)
    backbone = load_backbone(BACKBONE)  # the same sha256-checked torchvision weights
    model = backbone.model
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, len(data.classes)))
    spec = backbone.spec
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(train_rows)

        def __getitem__(self, i):
            row = train_rows[i]
            image = Image.fromarray(data.items[row]).convert("RGB")
            return transform(image), int(data.labels[row])

    loader = torch.utils.data.DataLoader(Images(), batch_size=32, shuffle=True, num_workers=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def run(args) -> str:
    from headstart.data import load_data
    from headstart.features import FeatureStore
    from headstart.finetune import finetune
    from headstart.finetune.data import split_indices
    from headstart.workflows.probe import probe

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    data = load_data("builtin:animal-mnist", per_class=args.per_class, seed=0)
    train_rows, val_rows, _ = split_indices(data, 0.1, 0)  # what finetune() trains and validates on
    n_all, n_test = len(data.indices("train")), len(data.indices("test"))
    store = FeatureStore(STORE)
    common = {"image_size": args.image_size, "store": store, "seed": 0, "quiet": args.quiet}
    rows = []

    report = probe(data, [BACKBONE], ["linear"], image_size=args.image_size, store=store, quiet=True)
    probe_accuracy = report.runs[0].test.accuracy
    rows.append((f"linear probe (all {n_all:,} training images)", "-", probe_accuracy, None, report.runs[0].extract_seconds + report.runs[0].fit_seconds))

    with tempfile.TemporaryDirectory() as tmp:
        lpft = finetune(data, BACKBONE, strategy="lp-ft", epochs=args.epochs, out=Path(tmp) / "lpft", **common)
        rows.append(("LP-FT", len(lpft.history), lpft.test.accuracy, lpft.seconds_per_epoch, lpft.seconds))
        last = finetune(data, BACKBONE, strategy="last-stage", epochs=args.epochs, out=Path(tmp) / "last", **common)
        rows.append(("last stage (features.18) + head", len(last.history), last.test.accuracy, last.seconds_per_epoch, last.seconds))
        scratch = finetune(data, RANDOM, strategy="full", epochs=args.epochs, out=Path(tmp) / "random", **common)
        rows.append(("full, from random init", len(scratch.history), scratch.test.accuracy, scratch.seconds_per_epoch, scratch.seconds))

    baseline = plain_loop_epochs(data, train_rows, args.image_size, args.baseline_epochs, seed=0)
    ours = [(row["seconds_train"], row["cpu_seconds"]) for row in scratch.history]
    base_wall, base_cpu = min(w for w, _ in baseline), min(c for _, c in baseline)
    ours_wall, ours_cpu = min(w for w, _ in ours), min(c for _, c in ours)
    total = time.perf_counter() - started

    lines = [
        SECTION,
        "",
        f"`benchmarks/finetune.py`: Animal-MNIST, {args.per_class} training images per class ({len(train_rows)} train + "
        f"{len(val_rows)} validation for fine-tuning), {n_test:,} test images, {BACKBONE}, {args.image_size} px, "
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}, Python {platform.python_version()}; the whole script took {total / 60:.1f} min "
        f"(load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: on a shared machine wall times "
        "mostly measure the other jobs, and CPU times are the steadier comparison).",
        "",
        "| model | epochs run | test accuracy | s/epoch | total s |",
        "|---|---|---|---|---|",
    ]
    for name, epochs, accuracy, per_epoch, seconds in rows:
        lines.append(f"| {name} | {epochs} | {accuracy:.3f} | {'-' if per_epoch is None else f'{per_epoch:.1f}'} | {seconds:.0f} |")
    lines += [
        "",
        f"LP-FT minus linear probe: {100 * (lpft.test.accuracy - probe_accuracy):+.1f} points "
        f"(LP-FT's own probe, fitted on its {len(train_rows)} training images: {lpft.probe_test_accuracy:.3f}; "
        f"LP-FT kept epoch {lpft.best_epoch}).",
        "",
        f"Seconds per training epoch ({len(train_rows)} images, every parameter trains, fastest epoch of each; "
        "headstart's is the full fine-tuning run's, since weights do not change speed):",
        "",
        "| loop | wall s | CPU s |",
        "|---|---|---|",
        f"| plain PyTorch, like the founding document (PIL transforms per image, batch 32, no workers, fp32) | {base_wall:.1f} | {base_cpu:.1f} |",
        f"| headstart `finetune` (batched tensor augmentation, channels_last) | {ours_wall:.1f} | {ours_cpu:.1f} |",
        f"| ratio (plain / headstart) | {base_wall / ours_wall:.2f}x | {base_cpu / ours_cpu:.2f}x |",
        "",
    ]
    return "\n".join(lines)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="Most epochs of each fine-tuning run.")
    parser.add_argument("--baseline-epochs", type=int, default=1, help="Epochs of the plain loop (timing only).")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops (1: steadier on a shared CPU).")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--write", action="store_true", help=f"Write the block into {RESULTS.name}.")
    args = parser.parse_args()
    os.environ.setdefault("HEADSTART_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    block = run(args)
    print(block)
    if args.write:
        write_section(block)


if __name__ == "__main__":
    main()
