"""``headstart demo``: the whole transfer-learning story on built-in data, offline, in minutes.

Each step is a few lines in :func:`run_demo`; later features (ranking, fine-tuning) add steps here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

DEMO_BACKBONES = ("tv:mobilenet_v2.IMAGENET1K_V1", "timm:tf_efficientnet_lite0", "tv:mobilenet_v2@random")
DEMO_HEADS = ("linear", "knn", "mlp")
RANK_PER_CLASS = 20  # the ranking step scores 20 training images per class
FINETUNE_BACKBONE = "tv:mobilenet_v2.IMAGENET1K_V1"
# The schedule was chosen on Fashion-MNIST and digits, not on the demo's own data: 6 epochs at the default lr beat
# the linear probe on both (benchmarks/finetune_curves.py --part demo, benchmarks/RESULTS.md).
FINETUNE_EPOCHS = 6
FINETUNE_EMA = None  # no weight averaging: the 6-epoch rows of that grid ran without it


def run_demo(out: str | Path = "runs/demo", per_class: int = 100, image_size: int = 112, seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """Run the demo and return its results as a dict (also written under ``out``).

    Steps:
        1. Load built-in Animal-MNIST: ``per_class`` training images per class, 2,000 test images.
        2. Extract features with two offline ImageNet backbones and a random-init control
           (through the feature store: a second run reads them back).
        3. Rank the backbones before training anything: scores and cheap probes on 20 training
           images per class (rows of the features just stored), with each backbone's cost.
        4. Fit linear, kNN and MLP heads on each, evaluate them on the test split, print the
           comparison table and save every bundle; the best one goes to ``out/bundle``.
        5. Reload the best bundle from disk and predict a few test images with it.
        6. Fine-tune MobileNetV2 with LP-FT (the linear probe's head first, then the whole network
           for a short schedule) and compare its test accuracy with the linear probe's.
    """
    from headstart.io import check_out_dir

    check_out_dir(out)
    from headstart.bundles import Bundle
    from headstart.console import console, err_console
    from headstart.data import load_data
    from headstart.features import FeatureStore, extract
    from headstart.select.table import print_rank_table
    from headstart.workflows.probe import print_probe_table, probe
    from headstart.workflows.rank import rank_backbones

    started = time.perf_counter()
    out = Path(out)
    show = err_console if quiet else console  # quiet (and --json) keeps stdout for the result alone

    # 1. Data.
    data = load_data("builtin:animal-mnist", per_class=per_class, seed=seed)
    counts = data.counts()
    err_console.print(
        f"[bold]1. data[/] builtin:animal-mnist: {sum(counts['train'].values())} train, "
        f"{sum(counts['test'].values())} test, {len(data.classes)} classes"
    )

    # 2. Extract through the store (the ranking and the probes both read these features back).
    store = FeatureStore()
    err_console.print(f"[bold]2. extract[/] {', '.join(DEMO_BACKBONES)} at {image_size} px")
    for name in DEMO_BACKBONES:
        extract(name, data, image_size=image_size, store=store, quiet=quiet)

    # 3. Rank the backbones on a small subsample, before fitting any head.
    sample = RANK_PER_CLASS * len(data.classes)
    err_console.print(f"[bold]3. rank[/] on {sample} training images (transferability scores, a cross-validated probe, cost)")
    ranking = rank_backbones(list(DEMO_BACKBONES), data, sample=sample, image_size=image_size, seed=seed, store=store, quiet=True)
    print_rank_table(ranking, title=f"Animal-MNIST, backbones ranked on {ranking.sample['n_samples']} training images", console=show)
    ranking.write(out)

    # 4. Fit heads, evaluate, save bundles.
    err_console.print(f"[bold]4. fit heads[/] {', '.join(DEMO_HEADS)} on all {sum(counts['train'].values())} training images")
    report = probe(data, list(DEMO_BACKBONES), list(DEMO_HEADS), image_size=image_size, seed=seed, out=out, store=store, quiet=quiet)
    print_probe_table(report.runs, title="Animal-MNIST, test accuracy by backbone and head", console=show)
    linear_best = max((run for run in report.runs if run.head == "linear"), key=lambda run: run.test.accuracy)
    verdict = "agrees with" if ranking.best.backbone == linear_best.backbone else "differs from"
    show.print(f"ranking's pick: {ranking.best.backbone}; it {verdict} the best linear probe on all the data ({linear_best.backbone}, {linear_best.test.accuracy:.3f})")

    # 5. Reload the best bundle and predict a few held-out images.
    best = report.best
    bundle = Bundle.load(out / "bundle")
    test_rows = data.indices("test")[:: max(1, len(data.indices("test")) // 5)][:5]
    images = [data.items[i] for i in test_rows]
    predicted = bundle.predict(images)
    truth = [data.classes[data.labels[i]] for i in test_rows]
    show.print(f"best: {best.backbone} + {best.head} head, test accuracy {best.test.accuracy:.3f}; bundle saved to {out / 'bundle'}")
    for want, got in zip(truth, predicted):
        show.print(f"  predict: true {want:<9} -> predicted {got}")

    # 6. Fine-tune with LP-FT (its probe reads the stored features) and compare with the probe.
    from headstart.finetune import finetune

    err_console.print(f"[bold]6. fine-tune[/] {FINETUNE_BACKBONE} with LP-FT, {FINETUNE_EPOCHS} epochs at {image_size} px")
    tuned = finetune(
        data, FINETUNE_BACKBONE, strategy="lp-ft", epochs=FINETUNE_EPOCHS, ema_decay=FINETUNE_EMA, image_size=image_size, seed=seed,
        out=out / "finetune", quiet=quiet,
    )
    probe_run = next(r for r in report.runs if r.backbone == FINETUNE_BACKBONE and r.head == "linear")
    kept = "; " if tuned.best_epoch >= 0 else "; every fine-tuned epoch scored lower on validation, so the probe's weights were kept; "
    kept += "the schedule: benchmarks/finetune_curves.py --part demo"
    show.print(
        f"{FINETUNE_BACKBONE}: linear probe {probe_run.test.accuracy:.3f} -> LP-FT fine-tune {tuned.test.accuracy:.3f} "
        f"(test accuracy, {tuned.seconds:.0f} s{kept}); bundle saved to {tuned.bundle_path}"
    )

    seconds = time.perf_counter() - started
    show.print(f"demo finished in {seconds:.0f} s; store hits: {sum(r.store_hit for r in report.runs)}/{len(report.runs)} runs")
    reports = _write_reports(out)
    err_console.print(f"report: {reports[0]}  (open it in a browser; `headstart report {out}` renders it again)", highlight=False)
    return {
        "seconds": seconds,
        "rank": [{"rank": row.rank, "candidate": row.candidate, "combined": row.combined, "scores": row.scores} for row in ranking.rows],
        "best": best.row(),
        "runs": [run.row() for run in report.runs],
        "predictions": [{"true": t, "predicted": p} for t, p in zip(truth, predicted)],
        "agreement": float(np.mean([t == p for t, p in zip(truth, predicted)])),
        "finetune": {
            "backbone": FINETUNE_BACKBONE,
            "strategy": "lp-ft",
            "epochs": FINETUNE_EPOCHS,
            "probe_accuracy": probe_run.test.accuracy,
            "finetune_accuracy": tuned.test.accuracy,
            "best_epoch": tuned.best_epoch,
            "seconds": tuned.seconds,
            "bundle": str(tuned.bundle_path),
        },
    }


def _write_reports(out: Path) -> list[Path]:
    """The probe run's report.html (written by probe) and one for each sub-run directory with metrics, e.g. a fine-tune."""
    from headstart.report import write_report

    reports = [out / "report.html"]
    for sub_run in sorted(p for p in out.iterdir() if p.is_dir() and (p / "metrics.json").is_file()):
        reports.append(write_report(sub_run))
    return reports
