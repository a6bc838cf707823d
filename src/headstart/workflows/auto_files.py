"""The steps of ``headstart auto`` after the probes: fine-tuning, the choice, the final model, the control, and the files.

Kept apart from :mod:`headstart.workflows.auto` (measuring, ranking, probing) so that each stays
readable. Nothing here reads the test split before the choice is made.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from headstart.evaluate import EvalResult, evaluate
from headstart.workflows.auto_plan import (
    CV_FOLDS,
    FINAL_SECONDS,
    MAX_EPOCHS,
    MIN_EPOCHS,
    PLAN_SHARE,
    VAL_FRACTION,
    epoch_seconds,
    finetune_seconds,
    format_seconds,
    probe_seconds,
)

TFIDF = "sk:tfidf"
CV_WORDS = f"out-of-fold accuracy ({CV_FOLDS}-fold, on the training rows)"


def fine_tune_step(run, order, costs, image_size, seed) -> dict[str, Any] | None:
    """LP-FT of the best network candidate, with the epochs that still fit; resumed from its checkpoint after a kill."""
    from headstart.finetune import finetune
    from headstart.finetune.data import split_indices

    networks = [name for name in order if costs[name].train_item_seconds is not None and (run.state["probes"].get(name) or {}).get("cv")]
    if not networks:
        return None
    name = max(networks, key=lambda n: max(acc for acc in run.state["probes"][n]["cv"].values() if acc is not None))
    record = run.state.get("finetune") or {}
    if record.get("done"):
        return record
    train_rows, val_rows, test_rows = split_indices(run.data, VAL_FRACTION, seed)
    cost = costs[name]
    epochs = record.get("epochs")
    if epochs is None:  # the epochs that fit now, with the probes' real times behind
        per_epoch = epoch_seconds(cost, len(train_rows), len(val_rows))
        fixed = finetune_seconds(cost, 0, len(train_rows), len(val_rows), len(test_rows))
        epochs = int(min(MAX_EPOCHS, max(0, (run.clock.usable() - run.reserve(finetune=False) - fixed) // max(per_epoch, 1e-6))))
        if epochs < MIN_EPOCHS:
            run.state["finetune"] = {"done": True, "backbone": name, "skipped": f"{MIN_EPOCHS} LP-FT epochs of ~{format_seconds(per_epoch)} "
                                      f"(and ~{format_seconds(fixed)} to set up and evaluate) do not fit in the {format_seconds(run.clock.left())} left"}
            run.say(f"no fine-tuning: {run.state['finetune']['skipped']}")
            run.save()
            return None
        record = {"backbone": name, "epochs": epochs, "started": True}
        run.state["finetune"] = record
        run.save()
    run_dir = run.out / "finetune" if run.out is not None else None
    resume = run_dir is not None and (run_dir / "checkpoints" / "last.pt").is_file()
    limit = max(1.0, run.clock.left() * PLAN_SHARE - FINAL_SECONDS - finetune_seconds(cost, 0, 0, len(val_rows), len(test_rows)))
    estimate = finetune_seconds(cost, epochs, len(train_rows), len(val_rows), len(test_rows))
    run.say(f"fine-tuning {name} with LP-FT for {epochs} epochs, stopped after {format_seconds(limit)} of training at the latest")
    with run.step(f"fine-tune {name}", estimate):
        result = finetune(run.data, run.backbone(name), strategy="lp-ft", epochs=epochs, ema_decay=None, image_size=image_size, seed=seed,
                          out=run_dir, resume=resume, store=run.store, quiet=True, max_seconds=limit, val_fraction=VAL_FRACTION)
    history = result.history
    kept = history[result.best_epoch]["val_accuracy"] if result.best_epoch >= 0 else (result.start or {}).get("val_accuracy")
    record.update({
        "done": True, "validation_accuracy": kept, "start_validation_accuracy": (result.start or {}).get("val_accuracy"),
        "best_epoch": result.best_epoch, "epochs_run": len(history), "stopped_by_budget": result.stopped_by_budget,
        "seconds": round(result.seconds, 1), "test_accuracy": result.test.accuracy if result.test else None,
        "bundle": str(result.bundle_path) if result.bundle_path else None,
    })
    run.tuned_result = result
    run.save()
    return record


def choose(run, best: dict[str, Any], tuned: dict[str, Any] | None, image_size, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The final model: LP-FT when its validation accuracy beats the best probe's on the same validation rows, else that probe.

    The probe is refitted on fine-tuning's training rows and scored on its validation rows, so the
    two numbers compare the same items. Ties keep the probe (cheaper, and the start of LP-FT).
    """
    from headstart.finetune.data import split_indices

    probe_choice = {"kind": "probe", **best}
    if not tuned or tuned.get("validation_accuracy") is None:
        return probe_choice, {"finetune": (tuned or {}).get("skipped") or run.state.get("finetune", {}).get("skipped")}
    compare = run.state.get("comparison")
    if compare is None:
        train_rows, val_rows, _ = split_indices(run.data, VAL_FRACTION, seed)
        X, y, rows = run.training_rows(best["backbone"], image_size)
        valid = set(rows.tolist())
        fit_rows = np.array([r for r in train_rows if r in valid], dtype=int)
        val_rows = np.array([r for r in val_rows if r in valid], dtype=int)
        model = _new_head(best["head"], seed).fit(X[fit_rows], y[fit_rows])
        probe_val = float(np.mean(np.asarray(model.predict(X[val_rows])) == y[val_rows]))
        compare = {
            "validation_rows": len(val_rows), "probe": f"{best['backbone']} + {best['head']}", "probe_validation_accuracy": probe_val,
            "finetune": f"{tuned['backbone']} (LP-FT)", "finetune_validation_accuracy": tuned["validation_accuracy"],
            "gain": tuned["validation_accuracy"] - probe_val,
        }
        run.state["comparison"] = compare
        run.save()
    if compare["gain"] > 0:
        return {"kind": "finetune", "backbone": tuned["backbone"], "head": "lp-ft", "validation_accuracy": tuned["validation_accuracy"]}, compare
    return probe_choice, compare


def _new_head(head: str, seed: int):
    from headstart.heads import make_head, tfidf

    return tfidf.TfidfLogReg(random_state=seed) if head == TFIDF else make_head(head, random_state=seed)


def final_probe(run, choice: dict[str, Any], image_size, seed: int):
    """The chosen head on all the training rows, calibrated, as a bundle; its test metrics and test predictions."""
    from headstart.bundles import Bundle
    from headstart.bundles.tfidf import TfidfBundle
    from headstart.workflows.calibration import head_calibration
    from headstart.workflows.probe import test_row_predictions

    name, head_name = choice["backbone"], choice["head"]
    data = run.data
    X, y, rows = run.training_rows(name, image_size)
    model = run.fitted.get((name, head_name)) or _new_head(head_name, seed).fit(X[rows], y[rows])
    calibration = head_calibration(head_name, model, X[rows], y[rows], seed=seed, calibrate=True, prior="data", full_counts=data.full_train_counts)
    valid = np.zeros(len(data), dtype=bool)
    valid[rows] = True
    if name == TFIDF:
        valid |= np.array([isinstance(t, str) and bool(t.strip()) for t in data.items])
    else:
        valid |= run.features[name].valid
    test_rows = np.flatnonzero((data.split == "test") & valid)
    test = None
    if len(test_rows):
        names = np.array(data.classes, dtype=object)
        columns = [data.classes[int(c)] for c in model.classes_]
        test = evaluate(names[y[test_rows]], calibration.apply(model.predict_proba(X[test_rows])), columns, split="test")
    manifest = {"seed": seed, "data_fingerprint": run.settings["data"], "data_source": data.source, "auto": True}
    metrics = test.to_dict() if test is not None else {}
    if name == TFIDF:
        bundle = TfidfBundle(model, data.classes, metrics=metrics, manifest={**manifest, "store_key": None}, calibration=calibration)
    else:
        features = run.features[name]
        bundle = Bundle(spec=features.spec, head=model, classes=features.classes, layer=features.layer, pool=features.pool, metrics=metrics,
                        manifest={**manifest, "store_key": features.key, "runtime": features.runtime.label}, backbone=run.backbone(name),
                        calibration=calibration)
    predictions = test_row_predictions(X, y, data.split, valid, data.classes, model, calibration) if len(test_rows) else None
    return bundle, test, predictions


def random_control(run, choice: dict[str, Any], image_size, seed: int) -> dict[str, Any] | None:
    """A random-init copy of the chosen image backbone with the linear head: what pretraining is worth here."""
    name = choice["backbone"]
    if run.data.modality != "image" or name.split(":", 1)[0] not in ("tv", "timm") or "@random" in name:
        return {"skipped": f"no random-init control for {name}"}
    control = f"{name.split('@')[0]}@random"
    cost = run.costs[name]
    estimate = probe_seconds(cost, len(run.data), run.n_train, run.state.get("head_rates") or {}, ("linear",))
    if estimate > run.clock.left() - 2.0:
        return {"backbone": control, "skipped": f"~{format_seconds(estimate)} did not fit in the {format_seconds(run.clock.left())} left"}
    with run.step("random-init control", estimate):
        X, y, rows = run.training_rows(control, image_size)
        model, accuracy = run.fit_and_score("linear", X, y, seed, rows)
        test_rows = np.flatnonzero((run.data.split == "test") & run.features[control].valid)
        test_accuracy = float(np.mean(np.asarray(model.predict(X[test_rows])) == y[test_rows])) if len(test_rows) else None
    record = {"backbone": control, "head": "linear", "validation_accuracy": accuracy, "test_accuracy": test_accuracy}
    run.say(f"random-init control {control} + linear: out-of-fold accuracy " + (f"{accuracy:.3f}" if accuracy is not None else "n/a")
            + (f", test accuracy {test_accuracy:.3f}" if test_accuracy is not None else ""))
    return record


def eval_from_dict(document: dict[str, Any] | None) -> EvalResult | None:
    """An :class:`EvalResult` back from its ``to_dict()``."""
    if not isinstance(document, dict):
        return None
    names = {f.name for f in dataclasses.fields(EvalResult)}
    return EvalResult(**{key: value for key, value in document.items() if key in names})


def explain(run, choice: dict[str, Any], compare: dict[str, Any], control: dict[str, Any] | None) -> list[str]:
    """One sentence per decision, in the order they were taken."""
    state = run.state
    lines = []
    rank = state.get("rank") or []
    if rank:
        first = rank[0]
        tail = ""
        if len(rank) > 1 and isinstance(rank[1].get("vs_first"), dict):
            tail = f"; the next, {rank[1]['candidate']}, {_vs_first(rank[1]['vs_first'])}"
        lines.append(f"Ranked {len(rank)} candidates on {state['plan']['rank_sample']} training items: {first['candidate']} first{tail}.")
    probed = {name: record for name, record in (state.get("probes") or {}).items() if record.get("cv")}
    skipped = {name: record["skipped"] for name, record in (state.get("probes") or {}).items() if record.get("skipped")}
    lines.append(f"Probed {len(probed)} candidate(s) on all {run.n_train} training items ({', '.join(probed)})"
                 + (f"; not probed for time: {', '.join(skipped)}" if skipped else "") + ".")
    order = {name: i for i, name in enumerate(state.get("rank_order") or [])}
    heads = ("linear", "knn", "mlp", TFIDF)
    scored = sorted(((acc, name, head) for name, record in probed.items() for head, acc in record["cv"].items() if acc is not None),
                    key=lambda item: (-item[0], order.get(item[1], 0), heads.index(item[2]) if item[2] in heads else 9))
    if scored:
        top = scored[0]
        runner = f"; next best {scored[1][1]} + {scored[1][2]} at {scored[1][0]:.3f}" if len(scored) > 1 else ""
        error = (top[0] * (1 - top[0]) / max(1, run.n_train)) ** 0.5
        lines.append(f"Best probe by {CV_WORDS} ({len(scored)} scored; ties go to the better-ranked candidate and the simpler head): "
                     f"{top[1]} + {top[2]} at {top[0]:.3f} ± {error:.3f}{runner}.")
    tune = state.get("finetune") or {}
    if compare.get("gain") is not None:
        verdict = "paid: the fine-tuned model is chosen" if compare["gain"] > 0 else "did not pay: the probe is kept"
        lines.append(
            f"LP-FT of {tune.get('backbone')} for {tune.get('epochs_run')} of {tune.get('epochs')} planned epochs"
            + (" (stopped at the budget)" if tune.get("stopped_by_budget") else "")
            + f": validation accuracy {compare['finetune_validation_accuracy']:.3f} vs the probe's {compare['probe_validation_accuracy']:.3f} "
            f"on the same {compare['validation_rows']} rows ({compare['gain']:+.3f}); fine-tuning {verdict}."
        )
    elif tune.get("skipped") or compare.get("finetune"):
        lines.append(f"No fine-tuning: {tune.get('skipped') or compare.get('finetune')}.")
    else:
        why = [r.removeprefix("no fine-tuning: ") for r in state.get("plan", {}).get("reasons", []) if r.startswith("no fine")]
        lines.append("No fine-tuning: " + ("; ".join(why) or "not planned") + ".")
    if control and control.get("validation_accuracy") is not None and choice.get("validation_accuracy") is not None:
        gap = choice["validation_accuracy"] - control["validation_accuracy"]
        lines.append(f"Random-init control {control['backbone']} + linear: out-of-fold accuracy {control['validation_accuracy']:.3f}, "
                     f"{gap:+.3f} below the chosen model: what pretraining is worth here.")
    return lines


def _vs_first(vs: dict[str, Any]) -> str:
    """The ranking's paired gap to the first candidate, in words."""
    points, error = vs.get("points"), vs.get("error")
    if not isinstance(points, (int, float)):
        return "behind"
    return (f"{points:+.1f} +- {error:.1f} points behind on leave-one-out ridge accuracy"
            + (" (close: within the noise)" if vs.get("close") else ""))


def write_files(run, choice, compare, bundle, test, predictions, control) -> dict[str, Any]:
    """``bundle/``, ``auto.json``, ``metrics.json``, ``manifest.json``, ``test_predictions.csv`` and ``report.html``; returns auto.json's content."""
    from headstart.io import atomic_write_json
    from headstart.runs import write_manifest, write_test_predictions
    from headstart.runs.schema import AUTO_FILE

    state = run.state
    reasons = explain(run, choice, compare, control)
    decisions = {
        "choice": choice, "reasons": reasons, "budget_s": round(run.clock.budget, 1), "spent_s": round(run.clock.spent(), 1),
        "first_plan": state.get("first_plan"), "plan": state.get("plan"), "costs": state.get("costs"), "rank": state.get("rank"),
        "skipped_candidates": state.get("skipped_candidates", []), "probes": state.get("probes"), "finetune": state.get("finetune"),
        "comparison": compare, "control": control, "steps": state.get("steps"),
        "test_accuracy": test.accuracy if test is not None else None,
        "skipped_items": [{"item": item, "reason": reason} for item, reason in run.skipped_items],
    }
    for line in reasons:
        run.say(line)
    out = run.out
    if out is None:
        return decisions
    bundle.save(out / "bundle")
    atomic_write_json(out / AUTO_FILE, decisions)
    atomic_write_json(out / "metrics.json", {
        "backbone": choice["backbone"], "strategy": "lp-ft" if choice["kind"] == "finetune" else f"probe ({choice['head']} head)",
        "validation_accuracy": choice["validation_accuracy"], "test": test.to_dict() if test is not None else None,
        "dataset": run.data.summary(), "budget_s": decisions["budget_s"], "spent_s": decisions["spent_s"],
    })
    write_manifest(out, seed=run.settings["seed"], data_source=run.data.source, data_fingerprint=run.settings["data"],
                   wall_seconds=decisions["spent_s"], budget_s=decisions["budget_s"], choice=choice)
    if predictions is not None:
        data = run.data
        write_test_predictions(out, predictions["index"], predictions["true"], predictions["predicted"], predictions["confidence"],
                               items=data.items, modality=data.modality)
    elif (out / "finetune" / "test_predictions.csv").is_file():
        import shutil

        shutil.copy2(out / "finetune" / "test_predictions.csv", out / "test_predictions.csv")
    from headstart.report import write_report_or_warn

    write_report_or_warn(out)
    return decisions
