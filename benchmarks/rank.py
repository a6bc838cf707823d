"""Does the ranking predict reality? Weighted Kendall tau of every score against linear-probe accuracy.

The proof that ``headstart rank`` is worth running (issue 5):

* **Candidate pool** (12): the four offline ImageNet backbones (MobileNetV2, EfficientNet-Lite0/1/2),
  a random-init copy of each, and two intermediate layers of MobileNetV2 and of Lite0.
* **Datasets**: Animal-MNIST and Fashion-MNIST, 100 training and 100 test images per class, at
  64 px (``--image-size``).
* **Truth**: the test accuracy of a ``LinearProbe`` fitted on all 100 training images per class.
  (LP-FT is not run: it is too slow on a 2-core CPU.)
* **Scores**: ``rank_backbones`` on a stratified subsample of 20 training images per class
  (``--per-class``), for several subsample seeds (``--seeds``); every score of ``ALL_SCORES``, and
  several combinations of them.
* **Metric**: ``scipy.stats.weightedtau(score, truth)`` over the candidates for which the score is
  defined (LEEP only has the four pretrained pooled candidates), averaged over the seeds.
* **Choice of the default**: the combination with the highest worst-dataset mean tau among the
  fixed list ``COMBINATIONS`` below; ``DEFAULT_COMBINATION`` in ``headstart.select.combine`` must
  be it (the script says so when it is not).

``--timing`` also times ranking 10 candidates on 2,000 images with the default settings, from an
empty store, and splits the time into loading + extraction (what extracting the features costs
anyway) and the rest (scores, probes, cost). The goal is rest <= 10 s.

Usage:
    .venv/bin/python benchmarks/rank.py                 # tau tables (features are cached in _data/store)
    .venv/bin/python benchmarks/rank.py --timing --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_section
from scipy.stats import weightedtau

import headstart
from headstart.backbones import load_backbone
from headstart.data.dataset import Dataset, subsample_per_class
from headstart.features import FeatureStore, extract
from headstart.heads import LinearProbe
from headstart.select.rank import ALL_SCORES, DEFAULT_COMBINATION, Combination, combine_scores, compute_rank_scores, one_thread, source_logits
from headstart.workflows.rank import rank_backbones

os.environ.setdefault("HEADSTART_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
STORE = HERE / "_data" / "store"

POOL = [
    "tv:mobilenet_v2.IMAGENET1K_V1",
    "timm:tf_efficientnet_lite0",
    "timm:tf_efficientnet_lite1",
    "timm:tf_efficientnet_lite2",
    "tv:mobilenet_v2@random",
    "timm:tf_efficientnet_lite0@random",
    "timm:tf_efficientnet_lite1@random",
    "timm:tf_efficientnet_lite2@random",
    "tv:mobilenet_v2.IMAGENET1K_V1#features.10",
    "tv:mobilenet_v2.IMAGENET1K_V1#features.14",
    "timm:tf_efficientnet_lite0#blocks.3",
    "timm:tf_efficientnet_lite0#blocks.5",
]
DATASETS = ("builtin:animal-mnist", "builtin:fashion-mnist")
SCORE_BUDGET_S = 0.7  # CPU seconds per candidate for the default scores (1 s each for 10 candidates, less the cost measurement)
PUBLISHED = {"logme": 0.51, "leep": 0.41, "nleep": 0.61, "sfda": 0.71}

# The combinations compared. A first run (seeds 0-2) compared those without LEEP bar the single
# scores; after it, the cheap ones with LEEP and the single scores were added. Choosing among this
# fixed, short list on seeds 0-2, and then scoring the choice on fresh subsamples (seeds 3-5), keeps
# the selection honest.
COMBINATIONS = [
    Combination(("knn",)),
    Combination(("logme",)),
    Combination(("leep", "knn")),
    Combination(("linear", "knn")),
    Combination(("leep", "linear", "knn")),
    Combination(("logme", "knn")),
    Combination(("logme", "linear", "knn")),
    Combination(("nleep", "knn")),
    Combination(("leep", "nleep", "knn")),
    Combination(("logme", "sfda", "linear", "knn")),
    Combination(("logme", "nleep", "nce", "hscore_shrinkage", "linear", "knn")),
    Combination(("logme", "leep", "nleep", "nce", "hscore", "hscore_shrinkage", "sfda", "linear", "knn")),
    Combination(("leep", "knn"), method="zscore"),
    Combination(("linear", "knn"), method="zscore"),
    Combination(("logme", "linear", "knn"), method="zscore"),
]


def truth_dataset(source: str, per_class: int = 100, seed: int = 0) -> Dataset:
    """``per_class`` training and ``per_class`` test images per class."""
    data = headstart.load_data(source, per_class=per_class, seed=seed)
    test = subsample_per_class(data.labels, data.indices("test"), per_class, seed)
    return data.subset(np.sort(np.concatenate([data.indices("train"), test])))


def truth(data: Dataset, image_size: int, store: FeatureStore) -> dict[str, dict]:
    """Linear-probe test accuracy of every pool candidate (features extracted or read back)."""
    results = {}
    for name in POOL:
        backbone_name, _, layer = name.partition("#")
        features = extract(load_backbone(backbone_name), data, layer=layer or None, image_size=image_size, store=store, quiet=True)
        X_train, y_train = features.get("train")
        X_test, y_test = features.get("test")
        with one_thread():  # small L-BFGS steps: a second thread only adds waiting on a shared CPU
            probe = LinearProbe(random_state=0).fit(X_train, y_train)
        accuracy = float(np.mean(probe.predict(X_test) == y_test))
        results[name] = {"accuracy": accuracy, "extract_s": None if features.hit else features.seconds}
        print(f"  truth {name:<45} {accuracy:.3f}" + ("" if features.hit else f"  (extracted in {features.seconds:.0f} s)"), flush=True)
    return results


def tau(values: list[float | None], target: list[float]) -> tuple[float | None, int]:
    """Weighted Kendall tau over the candidates with a defined value, and how many there were."""
    pairs = [(v, t) for v, t in zip(values, target) if v is not None]
    if len(pairs) < 3:
        return None, len(pairs)
    x, y = zip(*pairs)
    return float(weightedtau(x, y).statistic), len(pairs)


def evaluate_dataset(source: str, image_size: int, per_class: int, seeds: list[int], store: FeatureStore, cache: Path, reuse: bool) -> dict:
    """Truth, and every candidate's scores for each seed (raw; taus are computed by ``taus``).

    The result is saved to ``cache``; with ``reuse``, truth and seeds found there are not recomputed.
    """
    saved = json.loads(cache.read_text()) if reuse and cache.is_file() else {}
    data = truth_dataset(source)
    if saved.get("accuracy") and set(saved["accuracy"]) == set(POOL):
        accuracy = saved["accuracy"]
        print(f"{source}: truth read from {cache}", flush=True)
    else:
        print(f"{source}: truth (linear probe, 100 per class) at {image_size} px", flush=True)
        accuracy = truth(data, image_size, store)
    tables = {int(k): v for k, v in saved.get("tables", {}).items()}
    seconds = {int(k): v for k, v in saved.get("seconds", {}).items()}
    for seed in seeds:
        if seed in tables and set(tables[seed]) == set(POOL):
            continue
        started = time.perf_counter()
        with one_thread():  # scores on 200 x 1280 matrices: on a shared 2-core CPU, a second BLAS thread mostly waits
            table = rank_backbones(
                POOL, data, scores=ALL_SCORES, sample=per_class * len(data.classes), image_size=image_size, seed=seed, cost=False,
                store=store, quiet=True,
            )
        by_candidate = {row.candidate.rsplit("@", 1)[0]: row for row in table.rows}
        tables[seed] = {name: by_candidate[name].scores for name in POOL}
        seconds[seed] = time.perf_counter() - started
        print(f"  seed {seed}: scored {len(POOL)} candidates in {seconds[seed]:.0f} s", flush=True)
        result = {"accuracy": accuracy, "tables": tables, "seconds": seconds}
        cache.write_text(json.dumps(result, indent=1))
    return {"accuracy": accuracy, "tables": tables, "seconds": seconds}


def taus(result: dict, seeds: list[int], values_of) -> tuple[float | None, float | None, int]:
    """Mean and sd over ``seeds`` of the tau of ``values_of(table)`` against the truth; and n."""
    target = [result["accuracy"][name]["accuracy"] for name in POOL]
    found = [tau(values_of(result["tables"][seed]), target) for seed in seeds]
    values = [t for t, _ in found if t is not None]
    n = found[0][1]
    if not values:
        return None, None, n
    return float(np.mean(values)), float(np.std(values)), n


def score_values(name: str):
    return lambda table: [table[candidate][name] for candidate in POOL]


def combination_values(combination: Combination):
    return lambda table: combine_scores([table[candidate] for candidate in POOL], combination)


def timing(image_size: int, n_candidates: int = 10, n_images: int = 2000) -> dict:
    """Rank ``n_candidates`` on ``n_images`` with the default settings, from an empty store, then again.

    The first run's wall time splits into loading + extracting (what extracting the features costs
    anyway) and the rest. The second run finds every feature stored, so its time is all "rest"; its
    CPU time does not depend on what else the shared machine runs.
    """
    data = truth_dataset("builtin:animal-mnist")
    data = Dataset(data.source, data.modality, data.classes, data.items[:n_images], data.labels[:n_images], np.full(min(n_images, len(data)), "train", dtype=object))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        table = rank_backbones(POOL[:n_candidates], data, sample=n_images, image_size=image_size, store=FeatureStore(folder), quiet=True)
        total = time.perf_counter() - started
        started, cpu_started = time.perf_counter(), time.process_time()
        again = rank_backbones(POOL[:n_candidates], data, sample=n_images, image_size=image_size, store=FeatureStore(folder), quiet=True)
        stored_wall, stored_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert all(row.store_hit for row in again.rows)
    load = sum(row.load_seconds for row in table.rows)
    extraction = sum(row.extract_seconds for row in table.rows)
    return {
        "candidates": len(table.rows), "images": table.sample["n_samples"], "total": total, "load": load, "extract": extraction,
        "rest": total - load - extraction, "combination": table.combination.describe(), "best": table.best.candidate,
        "scores": {name: sum(row.score_seconds.get(name, 0.0) for row in table.rows) for name in table.scores},
        "cost": sum(row.cost_seconds for row in table.rows),
        "stored_wall": stored_wall, "stored_cpu": stored_cpu,
        "load_average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
    }


def score_seconds(image_size: int, n_images: int = 2000) -> dict[str, float]:
    """CPU seconds of each score on ``n_images`` MobileNetV2 features (1,280 wide), on one thread."""
    data = truth_dataset("builtin:animal-mnist")
    backbone = load_backbone(POOL[0])
    features = extract(backbone, data, image_size=image_size, store=FeatureStore(STORE), quiet=True)
    X, y = features.X[:n_images], features.labels[:n_images]
    logits, reason = source_logits(backbone, backbone.spec.default_layer, X)
    seconds = {}
    with one_thread():
        for name in ALL_SCORES:
            started = time.process_time()
            compute_rank_scores((name,), X, y, logits, reason, 0)
            seconds[name] = time.process_time() - started
    return seconds


def fmt(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"


def report(results: dict[str, dict], args, timed: dict | None, score_cost: dict[str, float]) -> tuple[str, Combination]:
    """The markdown section, and the combination that validated best within the time budget."""
    names = [source.removeprefix("builtin:") for source in results]
    select, confirm = args.seeds, args.confirm_seeds
    lines = ["## Ranking", ""]
    lines.append(
        f"`benchmarks/rank.py`: {len(POOL)} candidates (4 ImageNet backbones, their random-init copies, 2 intermediate layers "
        f"each of MobileNetV2 and Lite0) at {args.image_size} px. Truth: LinearProbe test accuracy with 100 training images per class "
        f"(1,000 test images). Scores on {args.per_class} training images per class (a stratified subsample; one per seed). "
        "Metric: weighted Kendall tau (`scipy.stats.weightedtau`, hyperbolic weights on the top ranks) of each score against the "
        f"truth, over the candidates where the score is defined; mean ± sd over seeds. {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; run on {time.strftime('%Y-%m-%d')}."
    )
    lines += ["", "Truth (linear-probe test accuracy, 100 training images per class):", "",
              "| candidate | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name in POOL:
        lines.append(f"| `{name}` | " + " | ".join(f"{results[s]['accuracy'][name]['accuracy']:.3f}" for s in results) + " |")

    every = select + confirm
    lines += ["", f"Weighted tau of each score (seeds {', '.join(map(str, every))}; n = candidates where it is defined):", "",
              "| score | " + " | ".join(names) + " | n | published average |", "|---|" + "---|" * (len(names) + 2)]
    for name in ALL_SCORES:
        found = [taus(results[s], every, score_values(name)) for s in results]
        published = PUBLISHED.get(name)
        lines.append(f"| {name} | " + " | ".join(fmt(m, sd) for m, sd, _ in found) + f" | {found[0][2]} | {published if published is not None else ''} |")

    lines += ["", (f"Combinations (mean_rank: mean of rank positions; zscore: mean of z-scores), tau over all seeds, and the worst "
                   f"dataset's tau on seeds {', '.join(map(str, select))} and on {', '.join(map(str, confirm))} (fresh subsamples). "
                   "CPU s: what the combination's scores cost per candidate on 2,000 images x 1,280 features, one thread. The "
                   f"default is the combination with the best worst-dataset tau among those whose scores fit {SCORE_BUDGET_S} s per "
                   "candidate, so that ranking 10 candidates costs at most 10 s more than extracting their features."), "",
              "| combination | " + " | ".join(names) + " | worst | worst, seeds " + ",".join(map(str, select))
              + " | worst, seeds " + ",".join(map(str, confirm)) + " | CPU s |",
              "|---|" + "---|" * (len(names) + 4)]
    best, best_worst = None, -np.inf
    for combination in COMBINATIONS:
        overall = [taus(results[s], every, combination_values(combination)) for s in results]
        worst = min(m for m, _, _ in overall)
        worst_select = min(taus(results[s], select, combination_values(combination))[0] for s in results)
        worst_confirm = min(taus(results[s], confirm, combination_values(combination))[0] for s in results) if confirm else None
        seconds = sum(score_cost[name] for name in combination.scores)
        fits = seconds <= SCORE_BUDGET_S
        marker = " **(default)**" if combination == DEFAULT_COMBINATION else ""
        lines.append(
            f"| {combination.describe()}{marker} | " + " | ".join(fmt(m, sd) for m, sd, _ in overall)
            + f" | {worst:.2f} | {worst_select:.2f} | {fmt(worst_confirm)} | {seconds:.2f}{'' if fits else ' (too slow)'} |"
        )
        if fits and worst > best_worst:
            best, best_worst = combination, worst
    verdict = "it is the default." if best == DEFAULT_COMBINATION else f"**the default ({DEFAULT_COMBINATION.describe()}) is not it.**"
    lines += ["", f"Best worst-dataset tau within the time budget: {best.describe()} ({best_worst:.2f}); {verdict}"]
    lines += ["", "CPU seconds per score on 2,000 x 1,280 features (MobileNetV2 on Animal-MNIST), one thread: "
              + ", ".join(f"{name} {seconds:.2f}" for name, seconds in score_cost.items()) + "."]
    if timed is not None:
        per_score = ", ".join(f"{k} {v:.1f} s" for k, v in timed["scores"].items())
        lines += [
            "",
            (f"Timing: ranking {timed['candidates']} candidates (the first 10 of the pool) on {timed['images']:,} Animal-MNIST images at "
             f"{args.image_size} px with the default settings ({timed['combination']}; cost measured), from an empty store: "
             f"{timed['total']:.0f} s in all = {timed['load'] + timed['extract']:.0f} s loading and extracting features "
             f"({timed['load']:.0f} s + {timed['extract']:.0f} s) + **{timed['rest']:.1f} s for everything else** "
             f"(scores: {per_score}; cost: {timed['cost']:.1f} s). Ranking again with the features stored: "
             f"{timed['stored_wall']:.1f} s wall, {timed['stored_cpu']:.1f} s CPU. Goal: everything else <= 10 s. "
             f"Load average at the end: {timed['load_average']} on {os.cpu_count()} cores (the CPU is shared with other work)."),
        ]
    return "\n".join(lines) + "\n", best




def seed_list(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",") if seed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="Subsample seeds that choose the default combination.")
    parser.add_argument("--confirm-seeds", type=seed_list, default=[3, 4, 5], help="Fresh subsample seeds that check the choice.")
    parser.add_argument("--timing", action="store_true", help="Also time ranking 10 candidates on 2,000 images.")
    parser.add_argument("--write", action="store_true", help="Write the section into benchmarks/RESULTS.md.")
    parser.add_argument("--reuse", action="store_true", help="Reuse truth and scores saved by an earlier run with the same settings.")
    args = parser.parse_args()

    store = FeatureStore(STORE)
    results = {}
    for source in args.datasets.split(","):
        cache = HERE / "_data" / f"rank-{source.removeprefix('builtin:')}-{args.image_size}px-{args.per_class}pc.json"
        results[source] = evaluate_dataset(source, args.image_size, args.per_class, args.seeds + args.confirm_seeds, store, cache, args.reuse)
    timed = None
    if args.timing:
        print("timing: ranking 10 candidates on 2,000 images from an empty store", flush=True)
        timed = timing(args.image_size)
    score_cost = score_seconds(args.image_size)
    section, best = report(results, args, timed, score_cost)
    print(section)
    if args.write:
        write_section(section)
        print(f"wrote {RESULTS}")
    if best != DEFAULT_COMBINATION:
        print(f"note: {best.describe()} validated best; DEFAULT_COMBINATION is {DEFAULT_COMBINATION.describe()}", file=sys.stderr)


if __name__ == "__main__":
    main()
