"""``headstart auto`` beside what a user would do by hand, on every offline classification dataset.

For each dataset and training size (100 and 500 items per class; a dataset with fewer runs at
what it has), in one process:

1. **auto**: ``headstart.auto(data, budget)`` from an empty feature store, every offline backbone
   of the data's kind a candidate (and ``sk:tfidf`` for text). Its wall time, its choice and the
   test accuracy of the chosen model.
2. **best linear probe**: a ``LinearProbe`` on every candidate's features, fitted on all the
   training items; the best test accuracy among them (an oracle: it picks on the test split). Goal:
   auto >= this - 0.5 point.
3. **hand LP-FT**, where auto fine-tuned: ``finetune`` of the backbone auto fine-tuned, with the
   demo's schedule (LP-FT, 6 epochs, no EMA). Goal: auto within 1 point of it.

Wall time goal: auto <= budget + 10% on every dataset.

Datasets: Animal-MNIST, Fashion-MNIST, scikit-learn's digits (32 px), the object crops of
``builtin:animal-scenes`` (the loaders of ``benchmarks/rank.py``), VADER tweets and VADER movies
(the other VADER files are reserved for an independent check). The test splits are capped at 1,000
items (stratified, fixed seed). Image datasets run at 112 px (their images are 28 to 64 px).

Results accumulate in ``benchmarks/_data/auto-results.json`` as each run ends, so a run stopped
part-way keeps what it measured; ``--write`` puts the table in RESULTS.md.

``--demo`` instead times ``headstart demo`` (auto on Animal-MNIST with its control) as a new user
runs it: the console script, in a fresh process, with an empty feature store. Goal: under 5 minutes.

Usage:
    .venv/bin/python benchmarks/auto.py --write                      # everything (about 90 minutes on 2 cores)
    .venv/bin/python benchmarks/auto.py --datasets digits --sizes 100 --write
    .venv/bin/python benchmarks/auto.py --demo --write
    .venv/bin/python benchmarks/auto.py --no-run --write               # the table of the runs recorded so far
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import load, machine, write_subsection

import headstart
from headstart.data.dataset import Dataset, subsample_per_class

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "_data" / "auto-results.json"
SECTION = "## headstart auto (`benchmarks/auto.py`)"
DATASETS = ("animal-mnist", "fashion-mnist", "digits", "animal-scenes", "vader-tweets", "vader-movies")
SIZES = (100, 500)
TEST_CAP = 1000
IMAGE_SIZE = 112
HAND_EPOCHS = 6


def load_dataset(name: str, per_class: int) -> Dataset:
    """The dataset with at most ``per_class`` training items per class and at most TEST_CAP test items."""
    sys.path.insert(0, str(HERE))
    import rank as rank_benchmark

    if name == "digits":
        data = rank_benchmark.digits()
    elif name == "animal-scenes":
        data = rank_benchmark.scene_crops(per_class=max(150, per_class))
    else:
        data = headstart.load_data(f"builtin:{name}", seed=0)
    train = subsample_per_class(data.labels, np.flatnonzero(np.isin(data.split, ("train", "val"))), per_class, 0)
    test = data.indices("test")
    if len(test) > TEST_CAP:
        test = subsample_per_class(data.labels, test, max(1, TEST_CAP // len(data.classes)), 0)
    return data.subset(np.sort(np.concatenate([train, test])))


def run_one(name: str, per_class: int, budget: str) -> dict:
    from headstart.features import FeatureStore, extract
    from headstart.finetune import finetune
    from headstart.heads import LinearProbe
    from headstart.heads.tfidf import TfidfLogReg
    from headstart.workflows.auto import auto, default_candidates

    data = load_dataset(name, per_class)
    size = IMAGE_SIZE if data.modality == "image" else None
    counts = np.bincount(data.labels[np.isin(data.split, ("train", "val"))])
    with tempfile.TemporaryDirectory(prefix="auto-bench-") as scratch:
        store = FeatureStore(Path(scratch) / "store")
        started = time.perf_counter()
        result = auto(data, budget, image_size=size, out=Path(scratch) / "run", store=store, quiet=True)
        wall = time.perf_counter() - started
        train = np.flatnonzero(np.isin(data.split, ("train", "val")))
        test = data.indices("test")
        probes = {}
        for candidate in default_candidates(data.modality):
            if candidate == "sk:tfidf":
                texts = np.asarray(list(data.items), dtype=object)
                model = TfidfLogReg(random_state=0).fit(texts[train], data.labels[train])
                probes[candidate] = float(np.mean(model.predict(texts[test]) == data.labels[test]))
                continue
            features = extract(candidate, data, image_size=size, store=store, quiet=True)
            rows = train[features.valid[train]]
            model = LinearProbe(random_state=0).fit(features.X[rows], data.labels[rows])
            probes[candidate] = float(np.mean(model.predict(features.X[test]) == data.labels[test]))
        hand = None
        tuned = result.decisions.get("finetune") or {}
        if tuned.get("epochs_run"):
            hand_started = time.perf_counter()
            run = finetune(data, tuned["backbone"], strategy="lp-ft", epochs=HAND_EPOCHS, ema_decay=None, image_size=size, seed=0, store=store,
                           quiet=True)
            hand = {"backbone": tuned["backbone"], "accuracy": run.test.accuracy, "seconds": round(time.perf_counter() - hand_started, 1)}
    best_probe = max(probes, key=probes.get)
    choice = result.choice
    return {
        "dataset": name, "per_class": int(counts.min()), "n_train": int(len(train)), "n_test": int(len(test)), "budget_s": result.budget,
        "wall_s": round(wall, 1), "auto_seconds": round(result.seconds, 1),
        "chosen": f"{choice['backbone']} + {choice['head']}" if choice["kind"] == "probe" else f"{choice['backbone']} (LP-FT)",
        "accuracy": result.test.accuracy, "best_probe": best_probe, "best_probe_accuracy": probes[best_probe], "probes": probes,
        "finetuned": bool(tuned.get("epochs_run")), "hand_lpft": hand, "reasons": result.decisions.get("reasons"),
        "load": load(),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| dataset | per class | budget | chosen | auto acc. | best linear probe | hand LP-FT | auto wall | goals |",
        "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for r in results:
        goals = ["probe " + ("met" if r["accuracy"] >= r["best_probe_accuracy"] - 0.005 else "MISSED"),
                 "time " + ("met" if r["wall_s"] <= 1.1 * r["budget_s"] else "MISSED")]
        hand = "—"
        if r["hand_lpft"]:
            hand = f"{r['hand_lpft']['accuracy']:.3f}"
            goals.append("LP-FT " + ("met" if r["accuracy"] >= r["hand_lpft"]["accuracy"] - 0.01 else "MISSED"))
        lines.append(
            f"| {r['dataset']} | {r['per_class']} | {r['budget_s']:.0f} s | {r['chosen']} | {r['accuracy']:.3f} | "
            f"{r['best_probe_accuracy']:.3f} ({r['best_probe']}) | {hand} | {r['wall_s']:.0f} s | {', '.join(goals)} |"
        )
    return "\n".join(lines)


DEMO_TITLE = "headstart demo from an empty feature store"
TABLE_TITLE = "Against the best linear probe and a hand-run LP-FT"


def time_demo(write: bool) -> None:
    """``headstart demo`` in a fresh process with an empty store: its wall time and what it chose."""
    import os
    import subprocess

    with tempfile.TemporaryDirectory(prefix="demo-bench-") as scratch:
        env = {**os.environ, "HEADSTART_CACHE": str(Path(scratch) / "store")}
        before = load()
        started = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).parent / "headstart"), "demo", "--out", str(Path(scratch) / "demo"), "--json"],
                              env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    summary = json.loads(done.stdout)
    choice = summary["choice"]
    model = f"{choice['backbone']} + {choice['head']}" if choice["kind"] == "probe" else f"{choice['backbone']} (LP-FT)"
    line = (f"`headstart demo` (defaults: Animal-MNIST, 100 per class, 112 px, budget {summary['budget_s']:.0f} s): **{wall:.0f} s** wall "
            f"from an empty feature store (goal: under 300 s); auto's part {summary['auto_seconds']:.0f} s. Chose {model}: test accuracy "
            f"{summary['test_accuracy']:.3f}; the random-init control {summary['control'].get('test_accuracy', float('nan')):.3f}.")
    print(line)
    if write:
        write_subsection(SECTION, DEMO_TITLE, "\n".join([
            line, "", f"Machine: {machine()}; load average before: {before}, after: {load()}.",
            "Command: `.venv/bin/python benchmarks/auto.py --demo --write`.", "",
        ]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--write", action="store_true", help="write the table of every recorded run into RESULTS.md")
    parser.add_argument("--fresh", action="store_true", help="forget the runs recorded before")
    parser.add_argument("--demo", action="store_true", help="time headstart demo from an empty store instead")
    parser.add_argument("--no-run", action="store_true", help="run nothing: print (and with --write, write) the recorded runs")
    args = parser.parse_args()
    if args.demo:
        time_demo(args.write)
        return
    recorded = [] if args.fresh or not RESULTS_JSON.is_file() else json.loads(RESULTS_JSON.read_text())
    for name in [] if args.no_run else args.datasets.split(","):
        for per_class in map(int, args.sizes.split(",")):
            started = time.perf_counter()
            row = run_one(name, per_class, args.budget)
            recorded = [r for r in recorded if (r["dataset"], r["per_class"], r["budget_s"]) != (row["dataset"], row["per_class"], row["budget_s"])]
            recorded.append(row)
            RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
            RESULTS_JSON.write_text(json.dumps(recorded, indent=1))
            print(f"{name} {per_class}/class: auto {row['accuracy']:.3f} ({row['chosen']}, {row['wall_s']:.0f} s), best probe "
                  f"{row['best_probe_accuracy']:.3f}, hand LP-FT {row['hand_lpft']['accuracy'] if row['hand_lpft'] else '-'} "
                  f"[{time.perf_counter() - started:.0f} s in all]", flush=True)
    print(table(recorded))
    if args.write:
        order = {name: i for i, name in enumerate(DATASETS)}
        recorded.sort(key=lambda r: (order.get(r["dataset"], 99), r["per_class"]))
        body = [
            "`headstart auto` with a budget, beside the best linear probe among its candidates (chosen on the test split: an oracle) "
            "and, where auto fine-tuned, a hand-run LP-FT of the same backbone (6 epochs, the demo's schedule). auto chooses on "
            "validation data only. Each auto run starts from an empty feature store. Test splits are capped at 1,000 items; image "
            "datasets at 112 px. Goals: auto >= best probe - 0.5 point; within 1 point of the hand LP-FT; wall <= budget + 10%.",
            "",
            table(recorded), "",
            f"Machine: {machine()}. Load average when each run ended: "
            + "; ".join(f"{r['dataset']} {r['per_class']}: {r['load']}" for r in recorded) + ".",
            "Command: `.venv/bin/python benchmarks/auto.py --write` (runs accumulate in benchmarks/_data/auto-results.json).",
            "",
        ]
        write_subsection(SECTION, TABLE_TITLE, "\n".join(body))


if __name__ == "__main__":
    main()
