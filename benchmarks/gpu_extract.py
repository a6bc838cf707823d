"""GPU extraction throughput: headstart end to end vs the founding document's recipe vs compute only.

Run on a machine with a CUDA GPU. ``benchmarks/gpu_run.sh`` runs the GPU tests, then this script for
ResNet-50 eager, then with ``--compile``, in under 5 minutes on one H100:

    python benchmarks/gpu_extract.py [--n 8192] [--models resnet50,efficientnet_b0] [--compile] [--json out.json]
    python benchmarks/gpu_extract.py --device cpu --n 16 --recipe-n 8 --models resnet18 --batch-size 8   # CPU dry run

The corpus: ``--n`` JPEGs of about 500x375, every one a different size (450-519 x 340-399), cut
from real photos (scikit-image and scikit-learn sample images), in 8 class folders; built in
parallel, once per ``--corpus`` folder. For each model at 224 px with random weights (weights do not
change speed), one process times:

* the recipe: ImageFolder + PIL + Resize(256)/CenterCrop(224)/ToTensor/Normalize, fp32, batch 32,
  no workers, ``children()[:-1]``, on ``--recipe-n`` of the JPEGs;
* headstart end to end: ``extract(...)`` from the JPEG files to features committed in the store:
  workers read bytes, nvJPEG decodes, the batched ``roi_align`` resize (the tensor path's default on
  a GPU), bf16, channels_last. The batch size is the automatic one, computed once; a warm-up call on
  one batch comes first (with ``--compile`` it compiles the model, and the timed call reuses it);
* the stages alone, on the main thread from file bytes held in memory: nvJPEG decode; decode + the
  batched ``roi_align`` resize; decode + the per-image ``interpolate`` resize; the two resizes alone
  on decoded batches;
* the compute-only ceiling: the model on a synthetic batch of the same size, bf16 + channels_last
  (eager; with ``--compile`` also the compiled model that headstart ran).

It prints a Markdown table per model and the machine line (card, torch, CUDA, CPU cores); ``--json``
also saves every number for ``benchmarks/gpu_section.py``, which writes the GPU section of
RESULTS.md. With ``--device cpu`` every step runs on the CPU (fp32, CPU decode): a dry run that
checks the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

GOALS = {"eager": 6000, "compile": 10000}  # images/s, ResNet-50 at 224 px end to end on one H100 (issue 16)


def _photos() -> list[np.ndarray]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    return [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(), *load_sample_images().images]


def _write_images(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    folder, start, stop, seed = args
    photos = _photos()
    for index in range(start, stop):
        rng = np.random.default_rng((seed, index))
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        crop_h, crop_w = int(height * rng.uniform(0.6, 1.0)), int(width * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        size = (int(rng.integers(450, 520)), int(rng.integers(340, 400)))
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize(size)
        target = folder / f"class{index % 8}"
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{index:06d}.jpg", quality=90)


def build_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs of about 500x375 cut from real photos, in 8 class folders (reused when complete)."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{n} {seed}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(16, os.cpu_count() or 1))
    step = -(-n // workers)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_images, [(folder, s, min(n, s + step), seed) for s in range(0, n, step)]))
    done.write_text(f"{n} {seed}")
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def recipe(model_name: str, folder: Path, limit: int, device: torch.device) -> float:
    """Images/s of the founding document's recipe on the first ``limit`` images of ``folder``."""
    import torchvision
    from torchvision import transforms

    model = torchvision.models.get_model(model_name, weights=None)
    trunk = torch.nn.Sequential(*list(model.children())[:-1]).to(device).eval()
    transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    dataset = torch.utils.data.Subset(torchvision.datasets.ImageFolder(folder, transform), range(limit))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=0)
    count = 0
    started = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            trunk(images.to(device))
            count += len(images)
    _sync(device)
    return count / (time.perf_counter() - started)


def ceiling(backbone, device: torch.device, batch: int, steps: int) -> float:
    """Images/s of the model alone on a synthetic batch, bf16 autocast (on a GPU) + channels_last."""
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    model = backbone.to(device).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(device):
        for _ in range(3):
            model(x)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(device)
    return batch * steps / (time.perf_counter() - started)


def headstart_rate(backbone, data, warmup, store_root: Path, batch_size: int, device: torch.device, compile_model: bool,
                   workers: int) -> tuple[float, float]:
    """Images/s of ``extract`` from files to committed features, and the seconds of the warm-up call on ``warmup`` before it."""
    from headstart import FeatureStore, extract

    common = dict(image_size=224, batch_size=batch_size, device=device.type, decode="tensor", compile=compile_model,
                  quiet=True, num_workers=workers)
    started = time.perf_counter()
    extract(backbone, warmup, store=FeatureStore(store_root / "warmup"), **common)
    _sync(device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    features = extract(backbone, data, store=FeatureStore(store_root / "timed"), **common)
    _sync(device)
    assert not features.hit and features.valid.all(), "every image must decode and be computed"
    return len(data) / (time.perf_counter() - started), warm_s


def stage_rates(paths: list[str], spec, batch_size: int, device: torch.device) -> dict[str, float]:
    """Images/s of the tensor path's stages on the main thread, from file bytes held in memory."""
    from headstart.features.fastpath import decode_batch, resize_crop_normalize

    blobs = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in paths]
    batches = [blobs[i : i + batch_size] for i in range(0, len(blobs), batch_size)]

    def timed(step) -> float:
        step(batches[0])  # warm-up: nvJPEG handles, kernels
        _sync(device)
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        _sync(device)
        return len(blobs) / (time.perf_counter() - started)

    def decode(batch):
        return decode_batch(batch, device)[0]

    rates = {"decode": timed(decode)}
    for method in ("roi_align", "interpolate"):
        rates[f"decode + {method}"] = timed(lambda batch, m=method: resize_crop_normalize(decode(batch), spec, m))
    decoded = decode(batches[0])
    for method in ("roi_align", "interpolate"):
        resize_crop_normalize(decoded, spec, method)
        _sync(device)
        started = time.perf_counter()
        for _ in range(5):
            resize_crop_normalize(decoded, spec, method)
        _sync(device)
        rates[f"{method} alone"] = 5 * len(decoded) / (time.perf_counter() - started)
    return rates


def machine(device: torch.device) -> dict[str, str]:
    import torchvision

    info = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu_cores": str(os.cpu_count()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device.type,
    }
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    else:
        info["card"] = f"none (CPU dry run: {platform.processor() or platform.machine()})"
    return info


def run_model(model: str, args: argparse.Namespace, corpus: Path, tmp: Path, device: torch.device) -> dict:
    from headstart import load_backbone, load_data
    from headstart.features.extract import auto_batch_size
    from headstart.features.fastpath import default_resize

    name = f"tv:{model}@random"
    backbone = load_backbone(name)
    spec = backbone.spec.with_input_size(224)
    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    batch_size = args.batch_size or auto_batch_size(backbone.to(device).eval(), spec, device)
    everything = load_data(corpus, test_fraction=0.01)
    count = max(batch_size, (min(args.n, len(everything)) // batch_size) * batch_size)  # whole batches: no recompile
    data = everything.subset(np.arange(min(count, len(everything))))
    warmup = everything.subset(np.arange(min(batch_size, len(everything))))  # one batch, into its own store
    result = {"model": model, "backbone": name, "images": len(data), "batch_size": batch_size, "workers": workers,
              "resize": default_resize(spec, device), "compile": args.compile}
    result["recipe"] = recipe(model, corpus, min(args.recipe_n, len(everything)), device)
    result["headstart"], result["warmup_s"] = headstart_rate(backbone, data, warmup, tmp / f"store-{model}", batch_size, device, False, workers)
    result["stages"] = stage_rates(list(data.items), spec, batch_size, device)
    result["ceiling"] = ceiling(load_backbone(name), device, batch_size, args.steps)
    if args.compile:
        compiled = load_backbone(name)
        result["headstart_compiled"], result["compile_and_warmup_s"] = headstart_rate(
            compiled, data, warmup, tmp / f"store-{model}-compiled", batch_size, device, True, workers)
        result["ceiling_compiled"] = ceiling(compiled, device, batch_size, args.steps)  # the model headstart compiled
    return result


def markdown(results: list[dict], info: dict[str, str]) -> str:
    lines = []
    for r in results:
        lines += [
            f"### {r['model']}: {r['images']} JPEGs, batch {r['batch_size']}, {r['workers']} workers, resize {r['resize']}",
            "",
            "| what | images/s | x recipe | of ceiling |",
            "|---|---:|---:|---:|",
        ]
        top = r["ceiling"]

        def row(label: str, value: float, ceiling_value: float = top) -> str:
            return f"| {label} | {value:,.0f} | {value / r['recipe']:.1f}x | {value / ceiling_value:.0%} |"

        lines.append(row("recipe (PIL, fp32, batch 32, no workers)", r["recipe"]))
        lines.append(row("**headstart end to end** (files to committed features)", r["headstart"]))
        if "headstart_compiled" in r:
            lines.append(row("**headstart end to end, --compile**", r["headstart_compiled"], r["ceiling_compiled"]))
        for stage, value in r["stages"].items():
            lines.append(row(f"stage: {stage} (main thread, bytes in memory)", value))
        lines.append(row("compute-only ceiling (bf16, channels_last)", top))
        if "ceiling_compiled" in r:
            lines.append(row("compute-only ceiling, compiled", r["ceiling_compiled"], r["ceiling_compiled"]))
            lines.append(f"\ncompile and warm-up: {r['compile_and_warmup_s']:.0f} s (not in the timed call)")
        lines.append("")
    lines.append(f"{info['card']}, torch {info['torch']}, torchvision {info['torchvision']}"
                 f"{', CUDA ' + info['cuda'] if 'cuda' in info else ''}, Python {info['python']}, {info['cpu_cores']} CPU cores, {info['date']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="JPEGs in the timed extraction (rounded down to whole batches)")
    parser.add_argument("--models", default="resnet50", help="torchvision model names, comma-separated")
    parser.add_argument("--compile", action="store_true", help="also time extract(..., compile=True) and the compiled ceiling")
    parser.add_argument("--recipe-n", type=int, default=512, help="images timed for the (slow) recipe")
    parser.add_argument("--batch-size", type=int, default=None, help="default: headstart's automatic batch size")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per core, up to 16)")
    parser.add_argument("--steps", type=int, default=20, help="batches timed for the compute-only ceiling")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of every step")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus folder, built if incomplete (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also save the numbers here, for benchmarks/gpu_section.py")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_extract.py needs a CUDA GPU (or --device cpu for a dry run).")
    if min(args.n, args.recipe_n, args.steps) < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise SystemExit("--n, --recipe-n, --steps and --batch-size must be at least 1.")
    os.environ.setdefault("HEADSTART_OFFLINE", "1")
    device = torch.device(args.device)
    info = machine(device)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(args.corpus or Path(tmp) / "corpus", max(args.n, args.recipe_n))
        results = []
        for model in args.models.split(","):
            results.append(run_model(model.strip(), args, corpus, Path(tmp), device))
            print(markdown(results[-1:], info), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "argv": sys.argv[1:], "goals": GOALS, "results": results}, indent=2))


if __name__ == "__main__":
    main()
