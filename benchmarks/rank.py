"""Does the default ranking generalise? Choose the score combination on all datasets but one, measure it on that one.

Issue 14's ranking benchmark. For every dataset and every candidate, the truth is the test accuracy
of a ``LinearProbe`` fitted on the training sample; the scores are what ``headstart rank``
computes on that same training sample (``compute_rank_scores``: the transferability scores and the
cross-validated probes). A combination of scores ranks the candidates; its **top-1 regret** is the
best candidate's probe accuracy minus the accuracy of the candidate it ranked first, in points.

* **Datasets** (all offline): Animal-MNIST, Fashion-MNIST, scikit-learn's 8x8 digits (upscaled to
  32 px RGB), crops of the objects of ``builtin:animal-scenes`` (64 px, 20% context), and VADER
  tweets and movies (the other VADER files are reserved for an independent check).
* **Candidates**: images: the 4 offline ImageNet backbones at their pooled layer and one
  intermediate stage, at 64 px (8; on digits also at 112 px: 16), plus the 4 random-init
  controls at 64 px. Texts: MiniLM pooled
  as SentenceTransformer and as the bare encoder (CLS-free mean pooling of hidden states 4 and 5),
  and its random-init control. ``sk:tfidf`` is left out: it has no features, only the linear probe.
* **Training samples**: 100 per class (images) or 200 per class (texts). On digits and the scene
  crops, drawn from a pool (about 108 and 150 per class) with seeds 0 and 1; on the others one
  sample (seed 0). The test split is fixed per dataset: 100 or 150 per class for images, the
  natural test split for tweets (686), 500 per class for movies. Features are extracted once per candidate
  (stored in ``benchmarks/_data/store``); the seeds subsample rows.
* **Leave one dataset out**: for each dataset in turn, the combination with the lowest mean regret
  on the *other* datasets (ties: higher mean weighted tau) among those that fit the time budget is
  measured on the one left out. Goal: mean regret <= 0.5 point, no dataset over 1.5 points.
* **The default** (``DEFAULT_COMBINATION``) is the combination chosen on all datasets; the
  leave-one-out figures are the evidence that this choice generalises.

``--timing`` also times ranking 10 candidates on 2,000 Animal-MNIST images with the default
settings, from an empty store, and splits the time into loading + extraction (what extracting the
features costs anyway) and the rest (scores, probes, cost). The goal is rest <= 10 s.

Usage:
    .venv/bin/python benchmarks/rank.py             # everything (about an hour on 2 cores from an empty store)
    .venv/bin/python benchmarks/rank.py --reuse --timing --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _results import cores, cpu_model, write_section
from scipy.stats import weightedtau

import headstart
from headstart.backbones import load_backbone
from headstart.data.dataset import Dataset, subsample_per_class
from headstart.features import FeatureStore, extract
from headstart.heads import LinearProbe
from headstart.select.combine import DEFAULT_COMBINATION, Combination, combine_scores
from headstart.select.probes import compute_rank_scores, one_thread, source_logits
from headstart.workflows.rank import rank_backbones

os.environ.setdefault("HEADSTART_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
STORE = DATA / "store"

# Each backbone at its pooled layer and one intermediate stage (the second-to-last stage before the head).
IMAGE_BACKBONES = {
    "tv:mobilenet_v2.IMAGENET1K_V1": ("features.14",),
    "timm:tf_efficientnet_lite0": ("blocks.5",),
    "timm:tf_efficientnet_lite1": ("blocks.5",),
    "timm:tf_efficientnet_lite2": ("blocks.5",),
}
IMAGE_SIZES = (64, 112)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SCORES = ("logme", "ridge", "leep", "nce", "sfda", "knn")  # "linear" (5 L-BFGS fits per candidate) costs 6x the budget
SEEDS = (0, 1)
# CPU seconds per candidate that a default's scores may cost on 2,000 x 1,280 features, one thread:
# ranking 10 candidates then costs at most about 10 s beyond extracting their features.
SCORE_BUDGET_S = 0.9


@dataclass(frozen=True)
class Candidate:
    backbone: str
    layer: str | None
    size: int | None

    @property
    def name(self) -> str:
        return self.backbone + (f"#{self.layer}" if self.layer else "") + (f"@{self.size}" if self.size else "")


def image_candidates(sizes: tuple[int, ...] = IMAGE_SIZES) -> list[Candidate]:
    found = []
    for size in sizes:
        for backbone, layers in IMAGE_BACKBONES.items():
            found += [Candidate(backbone, layer, size) for layer in (None, *layers)]
    return found + [Candidate(f"{backbone.split('.')[0]}@random", None, 64) for backbone in IMAGE_BACKBONES]


TEXT_CANDIDATES = [
    Candidate(f"st:{MINILM}", None, None),
    Candidate(f"hf:{MINILM}", None, None),
    Candidate(f"hf:{MINILM}", "hidden.4", None),
    Candidate(f"hf:{MINILM}", "hidden.5", None),
    Candidate(f"st:{MINILM}@random", None, None),
]


# ----- the datasets: a training pool and a fixed test split ---------------------------------------


def builtin(source: str, pool_per_class: int, test_per_class: int | None) -> Dataset:
    data = headstart.load_data(source, per_class=pool_per_class, seed=100)
    test = data.indices("test")
    if test_per_class is not None:
        test = subsample_per_class(data.labels, test, test_per_class, 100)
    return data.subset(np.sort(np.concatenate([data.indices("train"), test])))


def digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images), upscaled to 32 px RGB; 40% of each class is the test split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = np.stack([
        np.asarray(Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BICUBIC).convert("RGB")) for image in raw.images
    ])
    labels = raw.target.astype(np.int64)
    return Dataset("sklearn:digits@32px", "image", [str(i) for i in range(10)], images, labels, _split(labels))


def _split(labels: np.ndarray, test: float = 0.4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        split[members[: int(round(test * len(members)))]] = "test"
    return split


def scene_crops(per_class: int = 150, size: int = 64) -> Dataset:
    """Every visible object of ``builtin:animal-scenes`` (128 px scenes), cropped with 20% context and resized."""
    from PIL import Image

    from headstart.data.scenes.synthetic import animal_scenes

    scenes = animal_scenes(n_train=8 * per_class, n_test=8 * per_class, size=128, seed=0)
    crops, labels, splits = [], [], []
    for scene, split in zip(scenes.scenes, scenes.split):
        image = scene.load_image()
        for box, label, crowd in zip(scene.boxes, scene.labels, scene.iscrowd):
            if crowd:
                continue
            x0, y0, x1, y1 = box
            pad_x, pad_y = 0.2 * (x1 - x0), 0.2 * (y1 - y0)
            box = (max(0, int(x0 - pad_x)), max(0, int(y0 - pad_y)), min(image.shape[1], int(np.ceil(x1 + pad_x))), min(image.shape[0], int(np.ceil(y1 + pad_y))))
            crops.append(np.asarray(Image.fromarray(image).crop(box).resize((size, size), Image.BICUBIC)))
            labels.append(int(label))
            splits.append(split)
    labels = np.array(labels, dtype=np.int64)
    data = Dataset("builtin:animal-scenes crops", "image", list(scenes.classes), np.stack(crops), labels, np.array(splits, dtype=object))
    keep = np.concatenate([subsample_per_class(labels, data.indices(s), per_class, 100) for s in ("train", "test")])
    return data.subset(np.sort(keep))


# Dataset -> (loader, training examples per class, image sizes, seeds). Both sizes on digits; 64 px
# only and one seed on the larger sets, which keeps the whole benchmark within about an hour on 2 cores.
DATASETS = {
    "animal-mnist": (lambda: builtin("builtin:animal-mnist", 100, 100), 100, (64,), (0,)),
    "fashion-mnist": (lambda: builtin("builtin:fashion-mnist", 100, 100), 100, (64,), (0,)),
    "digits": (digits, 100, IMAGE_SIZES, SEEDS),
    "animal-scenes": (scene_crops, 100, (64,), SEEDS),
    "vader-tweets": (lambda: builtin("builtin:vader-tweets", 200, None), 200, (), (0,)),
    "vader-movies": (lambda: builtin("builtin:vader-movies", 200, 500), 200, (), (0,)),
}


# ----- truth and scores ----------------------------------------------------------------------------


def evaluate_dataset(name: str, store: FeatureStore, reuse: bool) -> dict:
    """Per candidate and seed: probe test accuracy (truth) and every score on the training sample."""
    cache = DATA / f"rank-loo-{name}.json"
    saved = json.loads(cache.read_text()) if reuse and cache.is_file() else {"candidates": {}}
    make, per_class, sizes, seeds = DATASETS[name]
    data = make()
    candidates = TEXT_CANDIDATES if data.modality == "text" else image_candidates(sizes)
    train_pool, test = data.indices("train"), data.indices("test")
    print(f"{name}: {len(train_pool)} training pool, {len(test)} test, {len(candidates)} candidates", flush=True)
    saved["candidates"] = {c.name: saved["candidates"][c.name] for c in candidates if c.name in saved["candidates"]}
    for candidate in candidates:
        if candidate.name in saved["candidates"]:
            continue
        started = time.perf_counter()
        backbone = load_backbone(candidate.backbone)
        features = extract(backbone, data, layer=candidate.layer, image_size=candidate.size, store=store, quiet=True)
        layer = candidate.layer or backbone.spec.default_layer
        result = {"extract_s": None if features.hit else round(features.seconds, 1), "seeds": {}}
        for seed in seeds:
            train = subsample_per_class(data.labels, train_pool, per_class, seed)
            X, y = features.X[train], data.labels[train]
            with one_thread():
                probe = LinearProbe(random_state=0).fit(X, y)
                accuracy = float(np.mean(probe.predict(features.X[test]) == data.labels[test]))
                logits, reason = source_logits(backbone, layer, X)
                values, _, seconds = compute_rank_scores(SCORES, X, y, logits, reason, seed)
            result["seeds"][str(seed)] = {"accuracy": accuracy, "scores": values, "seconds": seconds}
        saved["candidates"][candidate.name] = result
        print(f"  {candidate.name:<58} probe {result['seeds']['0']['accuracy']:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
        cache.write_text(json.dumps(saved, indent=1))
    saved["n_train"] = {str(seed): int(len(subsample_per_class(data.labels, train_pool, per_class, seed))) for seed in seeds}
    saved["n_test"] = int(len(test))
    saved["classes"] = len(data.classes)
    cache.write_text(json.dumps(saved, indent=1))
    return saved


# ----- combinations, regret and the leave-one-dataset-out choice -----------------------------------


def combinations() -> list[Combination]:
    singles = [Combination((s,)) for s in SCORES]
    mixes = [("leep", "knn"), ("ridge", "knn"), ("ridge", "leep"), ("ridge", "leep", "knn"), ("logme", "knn"), ("logme", "ridge"),
             ("ridge", "logme", "knn"), ("nce", "ridge"), ("sfda", "ridge")]
    found = singles + [Combination(m) for m in mixes] + [Combination(m, "zscore") for m in (("ridge", "knn"), ("ridge", "leep", "knn"), ("leep", "knn"))]
    return list(dict.fromkeys(found))


def outcome(result: dict, combination: Combination, seed: str) -> tuple[float, float | None]:
    """Top-1 regret (points) and weighted tau of one combination on one dataset and seed."""
    names = list(result["candidates"])
    truth = np.array([result["candidates"][n]["seeds"][seed]["accuracy"] for n in names])
    combined = combine_scores([result["candidates"][n]["seeds"][seed]["scores"] for n in names], combination)
    values = np.array([-np.inf if v is None else v for v in combined])
    top = int(np.argmax(values))
    defined = [i for i, v in enumerate(combined) if v is not None]
    tau = float(weightedtau(values[defined], truth[defined]).statistic) if len(defined) >= 3 else None
    return 100.0 * (truth.max() - truth[top]), tau


def summary(result: dict, combination: Combination) -> tuple[float, float | None]:
    """Mean regret and mean tau over the seeds."""
    found = [outcome(result, combination, seed) for seed in result["candidates"][next(iter(result["candidates"]))]["seeds"]]
    taus = [t for _, t in found if t is not None]
    return float(np.mean([r for r, _ in found])), (float(np.mean(taus)) if taus else None)


def choose(results: dict[str, dict], allowed: list[Combination]) -> Combination:
    """The combination with the lowest mean regret over ``results`` (ties: the higher mean tau)."""
    def key(combination: Combination):
        found = [summary(result, combination) for result in results.values()]
        return (np.mean([r for r, _ in found]), -np.mean([t if t is not None else -1.0 for _, t in found]))

    return min(allowed, key=key)


def score_cost() -> dict[str, float]:
    """CPU seconds of each score on 2,000 x 1,280 MobileNetV2 features of Animal-MNIST, one thread."""
    data = builtin("builtin:animal-mnist", 100, 100)
    backbone = load_backbone("tv:mobilenet_v2.IMAGENET1K_V1")
    features = extract(backbone, data, image_size=64, store=FeatureStore(STORE), quiet=True)
    X, y = features.X[:2000], data.labels[:2000]
    logits, reason = source_logits(backbone, backbone.spec.default_layer, X)
    seconds = {}
    with one_thread():
        for name in SCORES:
            started = time.process_time()
            compute_rank_scores((name,), X, y, logits, reason, 0)
            seconds[name] = time.process_time() - started
    return seconds


def paired_gap(result: dict, seed: str) -> tuple[str, str, float, float]:
    """The two candidates with the best ridge score, their probe-accuracy gap and the gap's standard error from the ridge LOO."""
    names = list(result["candidates"])
    ridge = [result["candidates"][n]["seeds"][seed]["scores"].get("ridge") or -1.0 for n in names]
    order = np.argsort(ridge)[::-1]
    first, second = names[order[0]], names[order[1]]
    n = sum(result["n_train"].values()) / len(result["n_train"])
    gap = ridge[order[0]] - ridge[order[1]]
    p = (ridge[order[0]] + ridge[order[1]]) / 2
    return first, second, 100 * gap, 100 * float(np.sqrt(2 * p * (1 - p) / n))


def timing(n_candidates: int = 10, n_images: int = 2000) -> dict:
    """Rank ``n_candidates`` on ``n_images`` with the default settings, from an empty store, then again.

    The first run's wall time splits into loading + extracting (what extracting the features costs
    anyway) and the rest. The second run finds every feature stored, so its time is all "rest".
    """
    data = headstart.load_data("builtin:animal-mnist", per_class=n_images // 10, seed=0)
    data = data.subset(data.indices("train"))
    names = [c.name for c in image_candidates()[:n_candidates]]  # the 8 at 64 px, then 2 at 112 px
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        table = rank_backbones(names, data, sample=n_images, store=FeatureStore(folder), quiet=True)
        total = time.perf_counter() - started
        started, cpu_started = time.perf_counter(), time.process_time()
        again = rank_backbones(names, data, sample=n_images, store=FeatureStore(folder), quiet=True)
        stored_wall, stored_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert all(row.store_hit for row in again.rows)
    load = sum(row.load_seconds for row in table.rows)
    extraction = sum(row.extract_seconds for row in table.rows)
    return {
        "candidates": len(table.rows), "images": table.sample["n_samples"], "total": total, "load": load, "extract": extraction,
        "rest": total - load - extraction, "combination": table.combination.describe(), "scores_computed": ", ".join(table.scores),
        "scores": {name: sum(row.score_seconds.get(name, 0.0) for row in table.rows) for name in table.scores},
        "cost": sum(row.cost_seconds for row in table.rows), "stored_wall": stored_wall, "stored_cpu": stored_cpu,
        "load_average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
    }


def timing_lines(timed: dict) -> list[str]:
    per_score = ", ".join(f"{k} {v:.1f} s" for k, v in timed["scores"].items())
    return ["", (
        f"Timing: ranking {timed['candidates']} candidates (the first 10 image candidates above) on {timed['images']:,} Animal-MNIST "
        f"images with the default settings (scores {timed['scores_computed']}; {timed['combination']}; cost measured), from an "
        f"empty store: {timed['total']:.0f} s in all = {timed['load'] + timed['extract']:.0f} s loading and extracting features "
        f"({timed['load']:.0f} s + {timed['extract']:.0f} s) + **{timed['rest']:.1f} s for everything else** (scores: {per_score}; "
        f"cost: {timed['cost']:.1f} s). Ranking again with the features stored: {timed['stored_wall']:.1f} s wall, "
        f"{timed['stored_cpu']:.1f} s CPU. Goal: everything else <= 10 s. Load average at the end: {timed['load_average']} on "
        f"{cores()} cores."
    )]


def report(results: dict[str, dict], cost: dict[str, float], timed: dict | None = None) -> tuple[str, Combination]:
    every = combinations()
    allowed = [c for c in every if sum(cost[s] for s in c.scores) <= SCORE_BUDGET_S]
    lines = ["## Ranking", ""]
    lines.append(
        "Written by `benchmarks/rank.py --write`: does the default ranking generalise to data it was not chosen on? Truth: `LinearProbe` test accuracy on each dataset's fixed test split, "
        "fitted on the training sample; scores: `headstart rank`'s on the same sample. Training samples: 100 images or 200 "
        "texts per class; on digits and the scene crops drawn with seeds 0 and 1 from a larger pool (figures are means over the "
        "seeds), elsewhere one sample (seed 0). "
        "Candidates: images: MobileNetV2 and EfficientNet-Lite0/1/2 at their pooled layer and one intermediate stage "
        "(features.14, blocks.5), at 64 px (on digits also at 112 px), and the 4 random-init controls at 64 px (12; 20 on digits); texts: MiniLM pooled as SentenceTransformer and as the "
        "bare encoder, its hidden states 4 and 5, and its random-init control (5). Regret: the best candidate's probe accuracy "
        "minus that of the candidate ranked first, in points. "
        f"{cpu_model()}, {cores()} cores, torch {torch.__version__}; run on {time.strftime('%Y-%m-%d')}, load average at the end "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}."
    )
    lines += ["", "| dataset | test n | train n | best candidate | its probe accuracy |", "|---|---|---|---|---|"]
    for name, result in results.items():
        truth = {c: np.mean([s["accuracy"] for s in r["seeds"].values()]) for c, r in result["candidates"].items()}
        best = max(truth, key=truth.get)
        lines.append(f"| {name} | {result['n_test']} | {result['n_train']['0']} | `{best}` | {truth[best]:.3f} |")

    lines += ["", f"**Leave one dataset out.** For each dataset, the combination with the lowest mean regret on the other "
              f"{len(results) - 1} (among those whose scores cost <= {SCORE_BUDGET_S} CPU s per candidate), measured on the one left out:", "",
              "| left out | chosen on the others | regret (points) | weighted tau |", "|---|---|---|---|"]
    held = []
    for name in results:
        others = {k: v for k, v in results.items() if k != name}
        chosen = choose(others, allowed)
        regret, tau = summary(results[name], chosen)
        held.append(regret)
        lines.append(f"| {name} | {chosen.describe()} | {regret:.2f} | {'n/a' if tau is None else f'{tau:.2f}'} |")
    verdict = "meets" if np.mean(held) <= 0.5 and max(held) <= 1.5 else "does not meet"
    lines += ["", f"Mean held-out regret {np.mean(held):.2f} points, worst {max(held):.2f}: the procedure {verdict} the goal "
              "(mean <= 0.5, none over 1.5)."]

    chosen_all = choose(results, allowed)
    lines += ["", "Every combination on every dataset (regret in points / weighted tau, mean over seeds); CPU s: the scores' cost per "
              "candidate on 2,000 x 1,280 features, one thread:", "",
              "| combination | " + " | ".join(results) + " | mean regret | CPU s |", "|---|" + "---|" * (len(results) + 2)]
    for combination in every:
        found = [summary(result, combination) for result in results.values()]
        seconds = sum(cost[s] for s in combination.scores)
        marks = (" **(default)**" if combination == DEFAULT_COMBINATION else "") + (" (chosen on all)" if combination == chosen_all else "")
        lines.append(
            f"| {combination.describe()}{marks} | " + " | ".join(f"{r:.2f} / {'n/a' if t is None else f'{t:.2f}'}" for r, t in found)
            + f" | {np.mean([r for r, _ in found]):.2f} | {seconds:.2f}{'' if seconds <= SCORE_BUDGET_S else ' (over budget)'} |"
        )
    verdict = "it is the default." if chosen_all == DEFAULT_COMBINATION else f"**the default ({DEFAULT_COMBINATION.describe()}) is not it.**"
    lines += ["", f"Chosen on all {len(results)} datasets: {chosen_all.describe()}; {verdict}"]

    lines += ["", "How close the top two are (seed 0): the two candidates with the best ridge score, the gap between their "
              "leave-one-out accuracies and its standard error (sqrt(2p(1-p)/n)); a gap under two standard errors is noise:", "",
              "| dataset | first | second | gap (points) | standard error |", "|---|---|---|---|---|"]
    for name, result in results.items():
        first, second, gap, error = paired_gap(result, "0")
        lines.append(f"| {name} | `{first}` | `{second}` | {gap:.1f} | {error:.1f} |")
    lines += ["", "CPU seconds per score on 2,000 x 1,280 features (MobileNetV2 on Animal-MNIST), one thread: "
              + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cost.items()) + "."]
    if timed is not None:
        lines += timing_lines(timed)
    return "\n".join(lines) + "\n", chosen_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--reuse", action="store_true", help="Reuse truth and scores saved by an earlier run.")
    parser.add_argument("--timing", action="store_true", help="Also time ranking 10 candidates on 2,000 images.")
    parser.add_argument("--write", action="store_true", help="Write the section into benchmarks/RESULTS.md.")
    args = parser.parse_args()
    store = FeatureStore(STORE)
    results = {name: evaluate_dataset(name, store, args.reuse) for name in args.datasets.split(",")}
    timed = timing() if args.timing else None
    section, chosen = report(results, score_cost(), timed)
    print(section)
    if args.write:
        write_section(section)
    if chosen != DEFAULT_COMBINATION:
        print(f"note: {chosen.describe()} is chosen on all datasets; DEFAULT_COMBINATION is {DEFAULT_COMBINATION.describe()}", file=sys.stderr)


if __name__ == "__main__":
    main()
