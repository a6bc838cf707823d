"""Calibration and class priors (issue 14, part 2): the prior correction, LP-FT's temperature, the probe heads' temperatures.

Three parts, each on the CPU, every number below written by this script:

* ``prior``: ``builtin:vader-tweets`` (about 2:1 positive) and ``builtin:vader-movies`` (about
  balanced), ``load_data(..., per_class=250)`` (a balanced sample of 500 sentences) and
  ``st:sentence-transformers/all-MiniLM-L6-v2`` features, the linear, kNN and MLP heads fitted and
  calibrated by the probe's own ``train_and_test`` (what ``headstart probe`` runs, on features of the
  whole file extracted once) with ``prior="uniform"`` (the behaviour before the option) and
  ``prior="data"`` (the default), scored on the natural 20 % test split of each seed. A third set was
  not used for any choice: Animal-MNIST given a label shift (each class keeps a share of its train and
  test images, from 1 down to 1/8 in a seeded order: 800 down to 100 training images, 200 down to 25
  test images), 100 per class, MobileNetV2 features at 64 px. For reference, the same heads on a
  stratified sample of the same size (500 sentences, 1,000 images, in the training split's
  proportions). Seeds 0, 1, 2 (each seed draws its own test split or shift, and sample). Only these
  two VADER files: the others are reserved.
* ``finetune``: ``finetune()`` with its defaults (LP-FT, label smoothing 0.1, a 10 % validation
  split), ``--epochs 3``, seed 0, on the five datasets of the ``heads`` part below (images:
  ``tv:mobilenet_v2.IMAGENET1K_V1`` at 64 px, 100 training images per class; texts: MiniLM, 250
  per class): the temperature fitted on the validation split, and the validation and test ECE
  before and after it. The calibration method was settled before sklearn-digits was run.
* ``heads``: the probe heads' temperatures. For each head (``linear``, ``knn``, ``mlp``), the test ECE
  of its probabilities before and after a temperature fitted on out-of-fold predictions of its
  training rows (5 folds for linear and kNN, 3 for the MLP, as ``headstart.workflows.calibration``
  does, each fold's copy keeping the k or C the head chose; the linear row is measured although the
  probe does not apply it), with ``prior="uniform"``
  so that only the temperature differs. Datasets: the four above (MobileNetV2 at 64 px, 100 per
  class; MiniLM, 250 per class), on which the choices were made (no temperature for the linear probe,
  the kNN temperature on vote shares, 3 folds for the MLP), and scikit-learn's 8x8 digits upscaled to
  32 px (``sklearn-digits``, 100 per class, MobileNetV2 at 64 px), which was not used to choose them.

ECE is the expected calibration error over 15 equal-width bins of top-1 confidence (as in every
headstart metric). Features go through a feature store in ``benchmarks/_data/store``.

Each part's table and machine line are kept in ``benchmarks/_data/calibration_parts.json`` (git-ignored),
so a part can be run again alone; the section printed (and written with ``--write``) holds the latest
run of every part, each with its own machine line.

Usage:
    .venv/bin/python benchmarks/calibration.py                  # all parts, prints the Markdown section
    .venv/bin/python benchmarks/calibration.py --parts prior    # one part (the others as last run)
    .venv/bin/python benchmarks/calibration.py --write          # and write "## Calibration" in RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
PARTS_LOG = HERE / "_data" / "calibration_parts.json"  # each part's latest table and machine line
TEXT = "st:sentence-transformers/all-MiniLM-L6-v2"
IMAGE = "tv:mobilenet_v2.IMAGENET1K_V1"
SECTION = "## Calibration (`benchmarks/calibration.py`)"
SHIFTED = "animal-mnist, 8:1 label shift"
PRIOR_SETS = ("builtin:vader-tweets", "builtin:vader-movies", SHIFTED)
PRIOR_HEADS = ("linear", "knn", "mlp")
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


def stratified_rows(data, size: int, seed: int) -> np.ndarray:
    """A stratified sample of ``size`` training rows (the training split's proportions) and every test row."""
    from sklearn.model_selection import train_test_split

    train = data.indices("train")
    sample, _ = train_test_split(train, train_size=size, stratify=data.labels[train], random_state=seed)
    return np.sort(np.concatenate([sample, data.indices("test")]))


def stratified(data, size: int, seed: int):
    """The dataset with :func:`stratified_rows`."""
    return data.subset(stratified_rows(data, size, seed))


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


def shifted_animals(seed: int):
    """Animal-MNIST with a label shift: class shares from 1 down to 1/8 (a seeded order), in train and test alike.

    Returns the training sample of 100 per class as ``load_data(..., per_class=100)`` makes it (with
    ``full_train_counts``), the reference (a stratified sample of 1,000 training images in the
    shifted proportions, and the same test images), and MobileNetV2 features (64 px) of each.
    """
    from headstart.data.dataset import subsample_per_class
    from headstart.features import extract

    full = load("builtin:animal-mnist", None, 0)
    features = extract(IMAGE, full, image_size=64, store=store(), quiet=True)
    rng = np.random.default_rng(100 + seed)
    classes = len(full.classes)
    share = np.exp(-np.arange(classes) * np.log(8) / (classes - 1))[np.argsort(rng.permutation(classes))]
    kept = []
    for label in range(classes):
        for split in ("train", "test"):
            members = np.flatnonzero((full.labels == label) & (full.split == split))
            kept.append(rng.permutation(members)[: int(round(share[label] * len(members)))])
    rows = np.sort(np.concatenate(kept))
    shifted = full.subset(rows)
    sample = np.sort(np.concatenate([subsample_per_class(shifted.labels, shifted.indices("train"), 100, seed), shifted.indices("test")]))
    data = shifted.subset(sample)
    data.full_train_counts = shifted.train_counts()
    kept = stratified_rows(shifted, 1000, seed)
    return ((data, features.X[rows[sample]], features.valid[rows[sample]]),
            (shifted.subset(kept), features.X[rows[kept]], features.valid[rows[kept]]))


def probe_both(data, X, valid, seed: int, head_name: str) -> dict[str, object]:
    """What ``probe(data, ..., [head_name], prior=...)`` scores on the test split, for both priors.

    The head is fitted and calibrated once by the probe's own ``train_and_test`` (with ``prior="data"``);
    the temperature does not depend on the prior, so ``prior="uniform"`` is the same calibration
    without the shift.
    """
    from headstart.evaluate import evaluate
    from headstart.heads import make_head
    from headstart.workflows.probe import train_and_test

    head = make_head(head_name, random_state=seed)
    fitted = train_and_test(head, X, data.labels, data.split, valid, data.classes, head_name=head_name, seed=seed, prior="data",
                            full_counts=data.full_train_counts)
    test = (data.split == "test") & valid
    names = np.array(data.classes, dtype=object)
    uniform = dataclasses.replace(fitted.calibration, log_prior_shift=None, prior="uniform")
    raw = fitted.head.predict_proba(X[test])
    columns = [data.classes[int(c)] for c in fitted.head.classes_]
    return {"data": fitted.test, "uniform": evaluate(names[data.labels[test]], uniform.apply(raw), columns)}


# ----- the parts -------------------------------------------------------------------------------------


def part_prior(seeds: list[int]) -> list[str]:
    rows = {}
    for source in PRIOR_SETS:
        for seed in seeds:
            if source == SHIFTED:
                (data, X, valid), (reference, X_ref, valid_ref) = shifted_animals(seed)
            else:
                data = load(source, 250, seed)
                reference = stratified(load(source, None, seed), 500, seed)
                (X, valid), (X_ref, valid_ref) = text_features(data), text_features(reference)
            for head_name in PRIOR_HEADS:
                for prior, test in probe_both(data, X, valid, seed, head_name).items():
                    rows.setdefault((source, head_name, prior), []).append(test)
                rows.setdefault((source, head_name, "stratified"), []).append(probe_both(reference, X_ref, valid_ref, seed, head_name)["data"])
                print(f"prior {source} seed {seed} {head_name}: full training counts {data.full_train_counts.tolist()}, " + ", ".join(
                    f"{p} {rows[(source, head_name, p)][-1].accuracy:.3f}" for p in ("uniform", "data", "stratified")), file=sys.stderr, flush=True)
    labels = {"uniform": "balanced, `--prior uniform`", "data": "balanced, `--prior data` (default)",
              "stratified": "stratified, same size (natural proportions), for reference"}
    lines = ["| data | head | training sample | test accuracy | balanced accuracy | test ECE | accuracy gain of `data` over `uniform`, per seed |",
             "|---|---|---|---|---|---|---|"]
    for source in PRIOR_SETS:
        for head_name in PRIOR_HEADS:
            gains = [100 * (d.accuracy - u.accuracy) for d, u in zip(rows[(source, head_name, "data")], rows[(source, head_name, "uniform")])]
            for prior in ("uniform", "data", "stratified"):
                tests = rows[(source, head_name, prior)]
                cells = [_mean_sd([t.accuracy for t in tests]), _mean_sd([t.balanced_accuracy for t in tests]), _mean_sd([t.ece for t in tests])]
                gain = " ".join(f"{g:+.1f}" for g in gains) + f" (mean {np.mean(gains):+.2f} points)" if prior == "data" else ""
                lines.append(f"| {source} | {head_name} | {labels[prior]} | " + " | ".join(cells) + f" | {gain} |")
    return lines


def part_finetune(epochs: int) -> list[str]:
    from headstart.finetune import finetune

    lines = ["| data | epochs (kept) | T | val ECE before → after | val NLL before → after | test ECE before → after | test accuracy before / after | s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (source, backbone, size, per_class) in HEAD_SETS.items():
        started = time.perf_counter()
        result = finetune(load(source, per_class, 0), backbone, image_size=size, epochs=epochs, seed=0, store=store(), quiet=True)
        r = result.calibration
        label = f"{name} (held out)" if name == HELD_OUT else name
        lines.append(
            f"| {label} | {len(result.history)} ({result.best_epoch}) | {r['temperature']:.3f} | {r['val_ece_before']:.3f} → {r['val_ece_after']:.3f} | "
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


def machine_line(seconds: float, cpu_seconds: float, load_start: float) -> str:
    return (f"{cpu_model()}, {cores()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads; load average "
            f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (a shared machine: wall times move with the other "
            f"jobs); wall time {seconds / 60:.1f} min, CPU time of the process {cpu_seconds / 60:.1f} min")


def section(parts: dict[str, dict], seeds: str, epochs: int) -> str:
    text = [SECTION, "", "Written by `.venv/bin/python benchmarks/calibration.py --write` (its docstring gives the setup: sizes, seeds, "
            "backbones). ECE: expected calibration error, 15 equal-width bins of top-1 confidence; lower is better.", ""]
    if "prior" in parts:
        part = parts["prior"]
        text += ["### Class prior after `--per-class` (probe, MiniLM)", "",
                 f"Test splits with the data's own class mix (VADER: a stratified 20 %; Animal-MNIST: its test split under the same "
                 f"shift as its training split); mean ± standard deviation over seeds {part['seeds']} (each seed: its own test split "
                 "or shift, and sample). `--prior data` adds log(prior of the whole training split) - log(prior of the balanced sample) to the "
                 "head's calibrated log-probabilities; the kNN and MLP heads carry their out-of-fold temperature in every row.", "",
                 f"Machine: {part['machine']}.", "", *part["lines"], ""]
    if "finetune" in parts:
        part = parts["finetune"]
        text += [f"### Temperature after fine-tuning (LP-FT; MobileNetV2 at 64 px, 100 per class; MiniLM, 250 per class; {part['epochs']} epochs, seed 0)", "",
                 "T is fitted on the validation split (10 % of the training examples) after training. T alone never changes the "
                 "predicted class (it divides every logit of a row alike), so test accuracy moves only where the prior correction "
                 "applies (`--prior data`): on VADER, whose 250-per-class sample is balanced while the files are not, and a little on digits. \"epochs (kept)\": epochs run and the epoch "
                 "whose weights were kept (-1: the linear probe's starting point stayed best on validation).", "",
                 f"Machine: {part['machine']}.", "", *part["lines"], ""]
    if "heads" in parts:
        part = parts["heads"]
        text += ["### Temperatures of the probe heads (out-of-fold, `--prior uniform`)", "",
                 "The probe applies the kNN and MLP temperatures and not the linear one; the linear rows show what a temperature "
                 "would have done. sklearn-digits was not used to choose these defaults. Fit seconds: the head's fit, and what "
                 "the out-of-fold fits add.", "",
                 f"Machine: {part['machine']}.", "", *part["lines"], ""]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="prior,finetune,heads", help="Comma-separated: prior, finetune, heads.")
    parser.add_argument("--seeds", default="0,1,2", help="Seeds of the prior part.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of each LP-FT run.")
    parser.add_argument("--write", action="store_true", help="Write the section into benchmarks/RESULTS.md.")
    args = parser.parse_args()
    os.environ.setdefault("HEADSTART_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    saved = json.loads(PARTS_LOG.read_text()) if PARTS_LOG.is_file() else {}
    runs = {"prior": lambda: part_prior([int(s) for s in args.seeds.split(",")]), "finetune": lambda: part_finetune(args.epochs),
            "heads": part_heads}
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        started, cpu_started, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        lines = runs[name]()
        machine = machine_line(time.perf_counter() - started, time.process_time() - cpu_started, load_start)
        saved[name] = {"lines": lines, "machine": machine, "seeds": args.seeds, "epochs": args.epochs}
        PARTS_LOG.parent.mkdir(parents=True, exist_ok=True)
        PARTS_LOG.write_text(json.dumps(saved, indent=1))
    block = section({k: saved[k] for k in ("prior", "finetune", "heads") if k in saved}, args.seeds, args.epochs)
    print(block)
    if args.write:
        write_section(block)


if __name__ == "__main__":
    main()
