"""Calibration and class priors (issue 14, part 2): the prior correction, LP-FT's temperature, the probe heads' temperatures.

Three parts, each on the CPU, every number below written by this script:

* ``prior``: ``builtin:vader-tweets`` (about 2:1 positive) and ``builtin:vader-movies`` (about
  balanced), ``load_data(..., per_class=250)`` (a balanced sample of 500 sentences) and
  ``st:sentence-transformers/all-MiniLM-L6-v2`` features, the linear probe fitted and scored by the
  probe's own ``train_and_test`` (what ``headstart probe`` runs, on features of the whole file
  extracted once) with ``prior="uniform"`` (the behaviour before the option) and ``prior="data"``
  (the default), scored on the natural 20 % test split of each seed. For reference, the same probe on a stratified sample
  of the same size (500 sentences in the training split's proportions). Seeds 0, 1, 2 (each seed
  draws its own test split and sample). Only these two VADER files: the others are reserved.
* ``finetune``: ``finetune()`` with its defaults (LP-FT, label smoothing 0.1, a 10 % validation
  split) of ``tv:mobilenet_v2.IMAGENET1K_V1`` at 64 px on ``builtin:animal-mnist`` and
  ``builtin:fashion-mnist``, 100 training images per class, ``--epochs 3``, seed 0: the temperature
  fitted on the validation split, and the validation and test ECE before and after it.
* ``heads``: the probe heads' temperatures. For each head (``linear``, ``knn``, ``mlp``), the test ECE
  of its probabilities before and after a temperature fitted on out-of-fold predictions of its
  training rows (5 folds for linear and kNN, 3 for the MLP, as ``headstart.workflows.calibration``
  does; the linear row is measured although the probe does not apply it), with ``prior="uniform"``
  so that only the temperature differs. Datasets: the four above (MobileNetV2 at 64 px, 100 per
  class; MiniLM, 250 per class), on which the choices were made (no temperature for the linear probe,
  the kNN temperature on vote shares, 3 folds for the MLP), and scikit-learn's 8x8 digits upscaled to
  32 px (``sklearn-digits``, 100 per class, MobileNetV2 at 64 px), which was not used to choose them.

ECE is the expected calibration error over 15 equal-width bins of top-1 confidence (as in every
headstart metric). Features go through a feature store in ``benchmarks/_data/store``.

Usage:
    .venv/bin/python benchmarks/calibration.py                  # all parts, prints the Markdown section
    .venv/bin/python benchmarks/calibration.py --parts prior    # one part
    .venv/bin/python benchmarks/calibration.py --write          # and write "## Calibration" in RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _results import cores, cpu_model, write_section

HERE = Path(__file__).resolve().parent
STORE = HERE / "_data" / "store"
TEXT = "st:sentence-transformers/all-MiniLM-L6-v2"
IMAGE = "tv:mobilenet_v2.IMAGENET1K_V1"
SECTION = "## Calibration (`benchmarks/calibration.py`)"
PRIOR_SETS = ("builtin:vader-tweets", "builtin:vader-movies")
FINETUNE_SETS = ("builtin:animal-mnist", "builtin:fashion-mnist")
HEAD_SETS = {  # name: (source, backbone, image size, per class); the last one was not used to choose the defaults
    "vader-tweets": ("builtin:vader-tweets", TEXT, None, 250),
    "vader-movies": ("builtin:vader-movies", TEXT, None, 250),
    "animal-mnist": ("builtin:animal-mnist", IMAGE, 64, 100),
    "fashion-mnist": ("builtin:fashion-mnist", IMAGE, 64, 100),
    "sklearn-digits": ("sklearn-digits", IMAGE, 64, 100),
}
HELD_OUT = "sklearn-digits"


def store():
    from headstart.features import FeatureStore

    return FeatureStore(STORE)


def load(source: str, per_class: int | None, seed: int):
    """A dataset; ``sklearn-digits`` is scikit-learn's 8x8 digits, upscaled to 32 px grey images."""
    from headstart.data import load_data

    if source == "sklearn-digits":
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        small = (digits.images / 16.0 * 255).astype(np.uint8)
        images = np.stack([np.asarray(Image.fromarray(i).resize((32, 32), Image.BILINEAR)) for i in small])
        return load_data((images, digits.target), per_class=per_class, seed=seed)
    return load_data(source, per_class=per_class, seed=seed)


def stratified(data, size: int, seed: int):
    """The dataset with a stratified sample of ``size`` training rows (the training split's proportions) and every test row."""
    from sklearn.model_selection import train_test_split

    train = data.indices("train")
    sample, _ = train_test_split(train, train_size=size, stratify=data.labels[train], random_state=seed)
    return data.subset(np.sort(np.concatenate([sample, data.indices("test")])))


_TEXT_FEATURES: dict[str, tuple[np.ndarray, np.ndarray, dict[str, int]]] = {}


def text_features(data):
    """MiniLM features of a VADER dataset's texts: the whole file is extracted once, and each text's row is looked up."""
    from headstart.features import extract

    source = data.source
    if source not in _TEXT_FEATURES:
        full = load(source, None, 0)
        features = extract(TEXT, full, store=store(), quiet=True)
        _TEXT_FEATURES[source] = (features.X, features.valid, {text: i for i, text in reversed(list(enumerate(full.items)))})
    X, valid, row = _TEXT_FEATURES[source]
    rows = np.array([row[text] for text in data.items])
    return X[rows], valid[rows]


def probe_linear(data, seed: int, prior: str):
    """``probe(data, [MiniLM], ["linear"], prior=prior)``'s fit and test metrics, on the stored features (the probe's own function)."""
    from headstart.heads import make_head
    from headstart.workflows.probe import train_and_test

    X, valid = text_features(data)
    head = make_head("linear", random_state=seed)
    fitted = train_and_test(head, X, data.labels, data.split, valid, data.classes, head_name="linear", seed=seed, prior=prior,
                            full_counts=data.full_train_counts)
    return fitted.test


# ----- the parts -------------------------------------------------------------------------------------


def part_prior(seeds: list[int]) -> list[str]:
    rows = {}
    for source in PRIOR_SETS:
        for seed in seeds:
            data = load(source, 250, seed)
            for prior in ("uniform", "data"):
                rows.setdefault((source, prior), []).append(probe_linear(data, seed, prior))
            reference = stratified(load(source, None, seed), 500, seed)
            rows.setdefault((source, "stratified"), []).append(probe_linear(reference, seed, "data"))
            counts = data.full_train_counts.tolist() if data.full_train_counts is not None else None
            print(f"prior {source} seed {seed}: full training counts {counts}, "
                  + ", ".join(f"{p} {rows[(source, p)][-1].accuracy:.3f}" for p in ("uniform", "data", "stratified")), file=sys.stderr, flush=True)
    labels = {"uniform": "250 per class, `--prior uniform`", "data": "250 per class, `--prior data` (default)",
              "stratified": "stratified 500 (natural proportions), for reference"}
    lines = ["| data | training sample | test accuracy | balanced accuracy | test ECE |", "|---|---|---|---|---|"]
    for source in PRIOR_SETS:
        for prior in ("uniform", "data", "stratified"):
            tests = rows[(source, prior)]
            cells = [_mean_sd([t.accuracy for t in tests]), _mean_sd([t.balanced_accuracy for t in tests]), _mean_sd([t.ece for t in tests])]
            lines.append(f"| {source} | {labels[prior]} | " + " | ".join(cells) + " |")
    return lines


def part_finetune(epochs: int) -> list[str]:
    from headstart.finetune import finetune

    lines = ["| data | epochs (kept) | T | val ECE before → after | val NLL before → after | test ECE before → after | test accuracy before / after | s |",
             "|---|---|---|---|---|---|---|---|"]
    for source in FINETUNE_SETS:
        started = time.perf_counter()
        result = finetune(source, IMAGE, per_class=100, image_size=64, epochs=epochs, seed=0, store=store(), quiet=True)
        r = result.calibration
        lines.append(
            f"| {source} | {len(result.history)} ({result.best_epoch}) | {r['temperature']:.3f} | {r['val_ece_before']:.3f} → {r['val_ece_after']:.3f} | "
            f"{r['val_nll_before']:.3f} → {r['val_nll_after']:.3f} | {r['test_ece_before']:.3f} → {r['test_ece_after']:.3f} | "
            f"{r['test_accuracy_before']:.3f} / {result.test.accuracy:.3f} | {time.perf_counter() - started:.0f} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def part_heads() -> list[str]:
    from headstart.evaluate import evaluate
    from headstart.evaluate.calibration import Calibration, fit_temperature
    from headstart.features import extract
    from headstart.heads import make_head
    from headstart.workflows.calibration import calibration_folds, out_of_fold_scores

    lines = ["| data | head | T (out-of-fold) | test ECE before → after | test NLL before → after | test accuracy | fit s (head / + calibration) |",
             "|---|---|---|---|---|---|---|"]
    for name, (source, backbone, size, per_class) in HEAD_SETS.items():
        data = load(source, per_class, 0)
        if backbone == TEXT:
            X, valid = text_features(data)
        else:
            features = extract(backbone, data, image_size=size, store=store(), quiet=True)
            X, valid = features.X, features.valid
        train = np.flatnonzero(np.isin(data.split, ("train", "val")) & valid)
        test = np.flatnonzero((data.split == "test") & valid)
        y = data.labels
        for head_name, folds, scores in (("linear", 5, "log_proba"), ("knn", 5, "proba"), ("mlp", 3, "log_proba")):
            started = time.perf_counter()
            head = make_head(head_name, random_state=0).fit(X[train], y[train])
            fit_seconds = time.perf_counter() - started
            split, _ = calibration_folds(y[train], folds, 0)
            held = out_of_fold_scores(head_name, head, X[train], y[train], split, scores)
            temperature = fit_temperature(held, np.searchsorted(head.classes_, y[train]))
            calibration_seconds = time.perf_counter() - started - fit_seconds
            raw = head.predict_proba(X[test])
            before = evaluate(y[test], raw, head.classes_)
            after = evaluate(y[test], Calibration(temperature=temperature, scores=scores).apply(raw), head.classes_)
            assert after.accuracy == before.accuracy
            held_out = " (held out)" if name == HELD_OUT else ""
            lines.append(f"| {name}{held_out} | {head_name} | {temperature:.3f} | {before.ece:.3f} → {after.ece:.3f} | "
                         f"{before.log_loss:.3f} → {after.log_loss:.3f} | {before.accuracy:.3f} | {fit_seconds:.1f} / +{calibration_seconds:.1f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _mean_sd(values: list[float]) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="prior,finetune,heads", help="Comma-separated: prior, finetune, heads.")
    parser.add_argument("--seeds", default="0,1,2", help="Seeds of the prior part.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of each LP-FT run.")
    parser.add_argument("--write", action="store_true", help="Write the section into benchmarks/RESULTS.md.")
    args = parser.parse_args()
    os.environ.setdefault("HEADSTART_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    blocks = {}
    if "prior" in parts:
        blocks["prior"] = part_prior([int(s) for s in args.seeds.split(",")])
    if "finetune" in parts:
        blocks["finetune"] = part_finetune(args.epochs)
    if "heads" in parts:
        blocks["heads"] = part_heads()
    seconds = time.perf_counter() - started
    machine = (f"Machine: {cpu_model()}, {cores()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads; load average "
               f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (a shared machine: seconds move with the other jobs). "
               f"Run time {seconds / 60:.1f} min for the parts {', '.join(parts)}.")
    text = [SECTION, "", "Written by `.venv/bin/python benchmarks/calibration.py --write` (its docstring gives the setup: sizes, seeds, "
            "backbones). ECE: expected calibration error, 15 equal-width bins of top-1 confidence; lower is better.", "", machine, ""]
    if "prior" in blocks:
        text += ["### Class prior after `--per-class` (probe, linear head, MiniLM)", "",
                 "Natural 20 % test split; mean ± standard deviation over seeds " + args.seeds + ". `--prior data` adds "
                 "log(prior of the whole training split) - log(prior of the balanced sample) to the head's log-probabilities.", "",
                 *blocks["prior"], ""]
    if "finetune" in blocks:
        text += [f"### Temperature after fine-tuning (LP-FT, MobileNetV2 at 64 px, 100 per class, {args.epochs} epochs, seed 0)", "",
                 "T is fitted on the validation split (10 % of the training images) after training. Test accuracy before and after T "
                 "is the same by construction (T divides every logit of a row alike).", "", *blocks["finetune"], ""]
    if "heads" in blocks:
        text += ["### Temperatures of the probe heads (out-of-fold, `--prior uniform`)", "",
                 "The probe applies the kNN and MLP temperatures and not the linear one; the linear rows show what a temperature "
                 "would have done. sklearn-digits was not used to choose these defaults.", "", *blocks["heads"], ""]
    block = "\n".join(text)
    print(block)
    if args.write:
        write_section(block)


if __name__ == "__main__":
    main()
