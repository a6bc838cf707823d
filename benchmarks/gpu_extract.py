"""GPU extraction throughput: headstart end to end vs the founding document's recipe vs compute only.

Run on a machine with a CUDA GPU (under 5 minutes):

    python benchmarks/gpu_extract.py [--n 4096] [--models resnet50,efficientnet_b0,vit_b_16] [--compile]

It builds its own JPEG corpus from real photos (skimage and scikit-learn sample images, random crops
resized to ImageNet-like sizes around 500x375), then, for each model at 224 px with random weights
(weights do not change speed), times in one process:

* the recipe: ImageFolder + PIL + Resize(256)/CenterCrop(224)/ToTensor/Normalize, fp32, batch 32,
  no workers, ``children()[:-1]``;
* headstart: ``extract(...)`` from files on disk to features committed in the store (nvJPEG decode,
  batched resize, bf16, channels_last, automatic batch size), optionally with ``--compile``;
* the compute-only ceiling: the model on a synthetic batch in bf16 + channels_last.

It prints images/s, the ratio to the recipe and the fraction of the ceiling, as Markdown; ``--write``
also writes "## GPU extraction" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import load, machine, write_section

SECTION = "## GPU extraction (`benchmarks/gpu_extract.py`)"


def build_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs of about 500x375 cut from real photos, in 8 class folders."""
    from PIL import Image
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(), *load_sample_images().images]
    rng = np.random.default_rng(seed)
    for index in range(n):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        crop_h, crop_w = int(height * rng.uniform(0.6, 1.0)), int(width * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        size = (int(rng.integers(450, 520)), int(rng.integers(340, 400)))
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize(size)
        target = folder / f"class{index % 8}"
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{index:06d}.jpg", quality=90)
    return folder


def recipe(model_name: str, folder: Path, device: torch.device) -> float:
    """Images/s of the founding document's recipe."""
    import torchvision
    from torchvision import transforms

    model = torchvision.models.get_model(model_name, weights=None)
    trunk = torch.nn.Sequential(*list(model.children())[:-1]).to(device).eval()
    transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(folder, transform), batch_size=32, num_workers=0)
    count = 0
    started = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            trunk(images.to(device))
            count += len(images)
    torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def ceiling(backbone, device: torch.device, batch: int = 256, steps: int = 20) -> float:
    """Images/s of the model alone on a synthetic batch, bf16 + channels_last."""
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    model = backbone.to(device).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def headstart_rate(name: str, folder: Path, store_root: Path, compile_model: bool) -> tuple[float, int]:
    from headstart import FeatureStore, extract, load_backbone, load_data

    data = load_data(folder, test_fraction=0.01)
    backbone = load_backbone(name)
    started = time.perf_counter()
    features = extract(backbone, data, image_size=224, store=FeatureStore(store_root), compile=compile_model, quiet=True,
                       num_workers=min(16, os.cpu_count() or 1))
    torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - started), len(features.skipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--models", default="resnet50,efficientnet_b0,vit_b_16")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--recipe-n", type=int, default=1024, help="images timed for the (slow) recipe")
    parser.add_argument("--write", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_extract.py needs a CUDA GPU.")
    device = torch.device("cuda")
    from headstart import load_backbone

    load_before = load()
    command = " ".join(["python benchmarks/gpu_extract.py", *(arg for arg in sys.argv[1:] if arg != "--write")])
    lines = [
        SECTION,
        "",
        f"Written by `benchmarks/gpu_extract.py --write`; this run: `{command}`. Images/s from JPEG files to features "
        f"at 224 px (random weights): the recipe on {args.recipe_n:,} JPEGs, headstart `extract` on {args.n:,}, and the "
        "model alone on a synthetic batch (bf16, channels_last).",
        "",
        f"| model | recipe img/s | headstart img/s | x recipe | ceiling img/s | of ceiling |{' compile img/s |' if args.compile else ''}",
        f"|---|---|---|---|---|---|{'---|' if args.compile else ''}",
    ]
    print("\n".join(lines[-2:]))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp) / "corpus", args.n)
        small = build_corpus(Path(tmp) / "recipe", args.recipe_n)
        for model in args.models.split(","):
            name = f"tv:{model}@random"
            base = recipe(model, small, device)
            rate, _ = headstart_rate(name, corpus, Path(tmp) / f"store-{model}", False)
            top = ceiling(load_backbone(name), device)
            row = f"| {model} | {base:,.0f} | {rate:,.0f} | {rate / base:.1f}x | {top:,.0f} | {rate / top:.0%} |"
            if args.compile:
                compiled, _ = headstart_rate(name, corpus, Path(tmp) / f"store-{model}-compiled", True)
                row += f" {compiled:,.0f} |"
            print(row, flush=True)
            lines.append(row)
    lines += [
        "",
        f"- GPU: {torch.cuda.get_device_name(0)}",
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
