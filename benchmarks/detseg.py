"""Detection and segmentation: does an ImageNet backbone beat the same network from random init?

Setup (the issue's): ``builtin:animal-scenes`` (synthetic: Animal-MNIST silhouettes on crops of real
photographs), 300 training and 100 test scenes of 128 px; the test scenes use silhouettes that no
training scene uses. 10% of the training scenes are held out for validation (the best epoch is kept).

For each backbone, ``tv:mobilenet_v2.IMAGENET1K_V1`` (ImageNet, sha256-checked offline weights)
and ``tv:mobilenet_v2@random`` (the same architecture, seeded random init), with the same settings:

* detection: Faster R-CNN + FPN (128 channels), AdamW, everything trains (BatchNorm statistics
  frozen for the pretrained backbone, trained for the random one: the policy's defaults);
* segmentation: the light FPN decoder, same policy defaults.

Each training run (detection or segmentation, per backbone) has a CPU budget of at most 10
minutes, measured as the process's CPU time (``time.process_time``, all threads) so that a shared
machine does not change the amount of work; ``max_cpu_seconds`` stops a run that would overrun (its
row then says "budget"). The epoch counts (4 for detection, 12 for segmentation) normally end first.
Reported: test mAP@0.5 (and mAP, COCO-style, crowd regions ignored) and test mIoU (and pixel
accuracy), the margins, CPU and wall seconds, and a reading of the per-class results (AP@0.5 and IoU
of each class, the epoch kept by validation) written from the same results. The section
"## Detection and segmentation" of ``benchmarks/RESULTS.md`` is replaced (``--no-record``: not).

Usage:
    .venv/bin/python benchmarks/detseg.py            # the full run (four runs of at most 10 CPU-minutes each)
    .venv/bin/python benchmarks/detseg.py --quick    # 40/20 scenes, 1 epoch: a smoke test
    # the four runs side by side, then the report:
    for b in tv:mobilenet_v2.IMAGENET1K_V1 tv:mobilenet_v2@random; do for t in detection segmentation; do
        .venv/bin/python benchmarks/detseg.py --backbone $b --task $t --threads 1 --no-record & done; done; wait
    .venv/bin/python benchmarks/detseg.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _results import cores, cpu_model, load, write_section

os.environ.setdefault("HEADSTART_OFFLINE", "1")

BACKBONES = ("tv:mobilenet_v2.IMAGENET1K_V1", "tv:mobilenet_v2@random")
SECTION = "## Detection and segmentation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--det-epochs", type=int, default=4)
    parser.add_argument("--seg-epochs", type=int, default=12)
    parser.add_argument("--det-cpu", type=float, default=600.0, help="CPU seconds for detection training, per backbone")
    parser.add_argument("--seg-cpu", type=float, default=600.0, help="CPU seconds for segmentation training, per backbone")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-detseg"))
    parser.add_argument("--backbone", choices=BACKBONES, action="append", help="run only these (repeat); default: both")
    parser.add_argument("--task", choices=("detection", "segmentation"), action="append", help="run only these (repeat); default: both")
    parser.add_argument("--report-only", action="store_true", help="build the report from the results already in --out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.det_epochs, args.seg_epochs = 40, 20, 1, 1
    torch.set_num_threads(args.threads)
    args.load_before = load()
    if not args.report_only:
        _run(args, args.backbone or list(BACKBONES), args.task or ["detection", "segmentation"])
    rows = {}
    for name in BACKBONES:
        parts = {task: args.out / _slug(name) / f"{task}.json" for task in ("detection", "segmentation")}
        if all(path.is_file() for path in parts.values()):
            rows[name] = {task: json.loads(path.read_text()) for task, path in parts.items()}
    if len(rows) < len(BACKBONES):
        print(f"results so far: {json.dumps(rows, indent=1)}; run the missing backbone/task pairs, then --report-only")
        return
    report = _report(rows, args)
    print(report)
    if not args.no_record and not args.quick:
        write_section(report)
        print(f"wrote {SECTION} in benchmarks/RESULTS.md")


def _run(args, backbones: list[str], tasks: list[str]) -> None:
    """Train and test each (backbone, task) pair; each result is saved as JSON under --out.

    Pairs may run in separate processes at the same time (``--backbone X --task Y``): each keeps
    its own CPU budget, measured on its own process.
    """
    from headstart.tasks import animal_scenes, train_detector, train_segmenter

    tick = time.perf_counter()
    scenes = animal_scenes(n_train=args.train, n_test=args.test, size=args.size, seed=args.seed)
    print(f"generated {len(scenes)} scenes in {time.perf_counter() - tick:.1f} s: {scenes.summary()['counts']}", flush=True)
    for name in backbones:
        folder = args.out / _slug(name)
        if "detection" in tasks:
            det = train_detector(
                scenes, name, epochs=args.det_epochs, batch_size=4, lr=1e-3, fpn_channels=128, image_size=args.size,
                max_cpu_seconds=args.det_cpu, seed=args.seed, out=folder / "detect",
            )
            _save(folder / "detection.json", _summary(det, args.threads))
        if "segmentation" in tasks:
            seg = train_segmenter(
                scenes, name, epochs=args.seg_epochs, batch_size=8, lr=1e-3, image_size=args.size,
                max_cpu_seconds=args.seg_cpu, seed=args.seed, out=folder / "segment",
            )
            _save(folder / "segmentation.json", _summary(seg, args.threads))


def _save(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    print(f"{path}: {json.dumps(summary)}", flush=True)


def _slug(name: str) -> str:
    return name.replace(":", "-").replace("@", "-").replace(".", "-")


def _summary(result, threads: int) -> dict:
    test = result.test or {}
    keys = ("map_50", "map") if result.task == "detection" else ("miou", "pixel_accuracy")
    if result.task == "detection":
        per_class = {name: row.get("ap_50") for name, row in (test.get("per_class") or {}).items()}
    else:
        per_class = dict(test.get("per_class_iou") or {})
    return {
        **{k: test.get(k) for k in keys},
        "per_class": per_class,
        "val_curve": [row.get(f"val_{result.val_metric}") for row in result.history],
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "steps": sum(row["steps"] for row in result.history),
        "stopped_by_budget": result.stopped_by_budget,
        "cpu_seconds": round(result.cpu_seconds, 1),
        "wall_seconds": round(result.seconds, 1),
        "threads": threads,
        "load_average": load(),
    }


def _report(rows: dict, args) -> str:
    pre, rand = (rows[name] for name in BACKBONES)
    lines = [
        SECTION,
        "",
        f"Written by `benchmarks/detseg.py` ({time.strftime('%Y-%m-%d')}, {pre['detection'].get('threads', '?')} thread(s) per run). Data: `builtin:animal-scenes` (**synthetic**: Animal-MNIST silhouettes pasted on crops of real "
        f"photographs), {args.train} training / {args.test} test scenes of {args.size} px, test silhouettes unseen in training; "
        "10% of training held out for validation (best epoch kept). Same settings for both backbones: Faster R-CNN + FPN "
        f"({args.det_epochs} epochs, batch 4) and the light FPN segmentation decoder ({args.seg_epochs} epochs, batch 8), AdamW 1e-3, "
        f"everything trains. Budget: process CPU time of each training run ≤ {args.det_cpu / 60:.0f} min (detection) and "
        f"≤ {args.seg_cpu / 60:.0f} min (segmentation); the CPU columns below are whole runs (training, validation, test).",
        "",
        "| backbone | det mAP@0.5 | det mAP | seg mIoU | seg pixel acc. | det epochs (steps) | seg epochs (steps) | CPU s (det + seg) | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in BACKBONES:
        d, s = rows[name]["detection"], rows[name]["segmentation"]
        lines.append(
            f"| `{name}` | {_f(d['map_50'])} | {_f(d['map'])} | {_f(s['miou'])} | {_f(s['pixel_accuracy'])} | "
            f"{d['epochs_run']} ({d['steps']}){' budget' if d['stopped_by_budget'] else ''} | {s['epochs_run']} ({s['steps']}){' budget' if s['stopped_by_budget'] else ''} | "
            f"{d['cpu_seconds']:.0f} + {s['cpu_seconds']:.0f} | {d['wall_seconds'] + s['wall_seconds']:.0f} |"
        )
    det_margin = _diff(pre["detection"]["map_50"], rand["detection"]["map_50"])
    seg_margin = _diff(pre["segmentation"]["miou"], rand["segmentation"]["miou"])
    lines += [
        "",
        f"Margins (ImageNet minus random init): detection mAP@0.5 **{det_margin}**, segmentation mIoU **{seg_margin}**.",
        f"One run each (seed {args.seed}). Wall time depends on the load of the shared machine (the four runs may run side by side); CPU time does not.",
        "",
        _reading(rows, args),
        "",
        f"- machine: {cpu_model()}, {cores()} cores, torch {torch.__version__}, Python {platform.python_version()}",
        "- load average (1/5/15 min) at the end of each run: " + "; ".join(
            f"{task} {'ImageNet' if name == BACKBONES[0] else 'random'} {rows[name][task].get('load_average', '-')}"
            for name in BACKBONES for task in ("detection", "segmentation")
        ) + f"; when this report was written: {load()}",
        "",
    ]
    return "\n".join(lines)


def _range(values: list[float]) -> str:
    return f"{min(values):.2f} to {max(values):.2f}" if values else "-"


def _kept(row: dict, planned: int) -> str:
    """``epoch K of N`` (counted from 1) for the kept epoch, and whether it was the last one run."""
    curve = row.get("val_curve") or []
    best = row.get("best_epoch")
    if best is None or best < 0:
        return "no fine-tuned epoch (the start was kept)"
    last = " (the last; validation still rising)" if best == len(curve) - 1 else ""
    planned = "" if row["epochs_run"] == planned else f" run ({planned} planned)"
    return f"epoch {best + 1} of {row['epochs_run']}{planned}{last}"


def _reading(rows: dict, args) -> str:
    """What the per-class results say, written from them (no hand-written numbers)."""
    pre, rand = (rows[name] for name in BACKBONES)
    det_pre, det_rand = pre["detection"], rand["detection"]
    seg_pre, seg_rand = pre["segmentation"], rand["segmentation"]
    classes = [name for name in det_pre.get("per_class", {}) if det_pre["per_class"][name] is not None and det_rand.get("per_class", {}).get(name) is not None]
    ap_pre = [det_pre["per_class"][name] for name in classes]
    ap_rand = [det_rand["per_class"][name] for name in classes]
    higher = sum(a > b for a, b in zip(ap_pre, ap_rand))
    sentences = ["Reading (written by the script from the results above)."]
    if det_pre.get("map_50") and det_rand.get("map_50"):
        ratio = f" ({det_pre['map_50'] / det_rand['map_50']:.1f}x)" if det_rand["map_50"] > 0 else ""
        sentences.append(
            f"Detection: mAP@0.5 {_f(det_pre['map_50'])} against {_f(det_rand['map_50'])}{ratio}, mAP {_f(det_pre['map'])} against "
            f"{_f(det_rand['map'])}; AP@0.5 is higher with the ImageNet backbone for {higher} of the {len(classes)} classes "
            f"({_range(ap_pre)}, against {_range(ap_rand)})."
        )
    iou_pre, iou_rand = seg_pre.get("per_class", {}), seg_rand.get("per_class", {})
    if iou_pre and iou_rand and seg_pre.get("miou") is not None and seg_rand.get("miou") is not None:
        objects = [name for name in iou_pre if name != "background"]
        obj_pre = [iou_pre[n] for n in objects if iou_pre.get(n) is not None]
        obj_rand = [iou_rand[n] for n in objects if iou_rand.get(n) is not None]

        def above(values: list[float]) -> int:
            return sum(v > 0.05 for v in values)

        background = ""
        if iou_pre.get("background") is not None and iou_rand.get("background") is not None:
            background = f"; the background's IoU is {iou_pre['background']:.2f} and {iou_rand['background']:.2f}"
        relative = f", {100 * (seg_pre['miou'] / seg_rand['miou'] - 1):+.0f}%" if seg_rand["miou"] > 0 else ""
        sentences.append(
            f"Segmentation: mIoU {_f(seg_pre['miou'])} against {_f(seg_rand['miou'])} ({_diff(seg_pre['miou'], seg_rand['miou'])}{relative}), "
            f"the mean over {len(iou_pre)} classes{background}. On the {len(objects)} object classes, IoU is above 0.05 for "
            f"{above(obj_pre)} with the ImageNet backbone (best {max(obj_pre, default=float('nan')):.2f}, mean "
            f"{np.mean(obj_pre) if obj_pre else float('nan'):.3f}) and for {above(obj_rand)} from random init (best "
            f"{max(obj_rand, default=float('nan')):.2f}, mean {np.mean(obj_rand) if obj_rand else float('nan'):.3f})."
        )
    sentences.append(
        f"Kept by validation (counted from 1): detection, {_kept(det_pre, args.det_epochs)} for ImageNet and "
        f"{_kept(det_rand, args.det_epochs)} from random init; segmentation, {_kept(seg_pre, args.seg_epochs)} for ImageNet and "
        f"{_kept(seg_rand, args.seg_epochs)} from random init."
    )
    cpu = [rows[name][task]["cpu_seconds"] for name in BACKBONES for task in ("detection", "segmentation")]
    wall = [rows[name][task]["wall_seconds"] for name in BACKBONES for task in ("detection", "segmentation")]
    sentences.append(
        f"Each run (training, validation and test) used {min(cpu) / 60:.1f} to {max(cpu) / 60:.1f} CPU-minutes (training budget: "
        f"{args.det_cpu / 60:.0f} for detection, {args.seg_cpu / 60:.0f} for segmentation) and {min(wall) / 60:.1f} to "
        f"{max(wall) / 60:.1f} minutes of wall time."
    )
    return " ".join(sentences)


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _diff(a, b) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{a - b:+.3f}"


if __name__ == "__main__":
    main()
