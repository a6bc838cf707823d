"""``headstart demo``: ``headstart auto`` on built-in Animal-MNIST, offline, in minutes, with a random-init control.

Each step is a few lines in :func:`run_demo`; :func:`headstart.workflows.auto.auto` does the work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

# Under 5 minutes on 2 cores from an empty feature store, with the ranking, the probes, LP-FT and the
# control; the budget bounds auto's part to 3 min + 10% (measured: benchmarks/RESULTS.md, "headstart auto").
DEMO_BUDGET = "3m"
DEMO_IMAGE_SIZE = 112


def run_demo(out: str | Path = "runs/demo", per_class: int = 100, image_size: int = DEMO_IMAGE_SIZE, seed: int = 0, quiet: bool = False,
             budget: str | float = DEMO_BUDGET) -> dict[str, Any]:
    """Run the demo and return its results as a dict (also written under ``out``).

    Steps:
        1. Load built-in Animal-MNIST: ``per_class`` training images per class, 2,000 test images.
        2. ``headstart auto`` within ``budget``: time every offline image backbone, plan, rank
           them on a sample, probe the best with the linear, kNN and MLP heads, fine-tune the best
           with LP-FT when it fits, and choose on validation data only; one bundle in ``out/bundle``.
        3. The random-init control: the chosen network with random weights and a linear head, to
           show what pretraining is worth.
        4. Reload the bundle from disk and predict a few test images with it.
    """
    from headstart.io import check_out_dir

    check_out_dir(out)
    from headstart.bundles import load_bundle
    from headstart.console import console, err_console
    from headstart.data import load_data
    from headstart.workflows.auto import auto

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

    # 2-3. auto, with the random-init control.
    err_console.print(f"[bold]2. auto[/] rank, probe and fine-tune within {budget} at {image_size} px; choose on validation data")
    result = auto(data, budget, image_size=image_size, seed=seed, out=out, control=True, quiet=quiet)
    choice, control = result.choice, result.decisions.get("control") or {}
    model = f"{choice['backbone']} + {choice['head']} head" if choice["kind"] == "probe" else f"{choice['backbone']} fine-tuned with LP-FT"
    test = result.test.accuracy if result.test is not None else None
    show.print(f"chosen: {model}; validation accuracy {choice['validation_accuracy']:.3f}, test accuracy {test:.3f}", highlight=False)
    if control.get("test_accuracy") is not None:
        show.print(f"random-init control ({control['backbone']} + linear): test accuracy {control['test_accuracy']:.3f}; "
                   f"pretraining is worth {100 * (test - control['test_accuracy']):+.1f} points here", highlight=False)

    # 4. Reload the bundle and predict a few held-out images.
    bundle = load_bundle(out / "bundle")
    test_rows = data.indices("test")[:: max(1, len(data.indices("test")) // 5)][:5]
    predicted = bundle.predict([data.items[i] for i in test_rows])
    truth = [data.classes[data.labels[i]] for i in test_rows]
    show.print(f"bundle saved to {out / 'bundle'}; reloaded, it predicts:")
    for want, got in zip(truth, predicted):
        show.print(f"  predict: true {want:<9} -> predicted {got}")

    seconds = time.perf_counter() - started
    show.print(f"demo finished in {seconds:.0f} s (auto: {result.seconds:.0f} s of a {result.budget:.0f} s budget)")
    err_console.print(f"report: {out / 'report.html'}  (open it in a browser; `headstart report {out}` renders it again)", highlight=False)
    return {
        "seconds": seconds,
        "auto_seconds": result.seconds,
        "budget_s": result.budget,
        "choice": choice,
        "test_accuracy": test,
        "control": control,
        "rank": result.decisions.get("rank"),
        "probes": result.decisions.get("probes"),
        "finetune": result.decisions.get("finetune"),
        "comparison": result.decisions.get("comparison"),
        "reasons": result.decisions.get("reasons"),
        "predictions": [{"true": t, "predicted": p} for t, p in zip(truth, predicted)],
        "agreement": float(np.mean([t == p for t, p in zip(truth, predicted)])),
    }
