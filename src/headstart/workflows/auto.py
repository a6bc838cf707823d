"""``headstart auto``: the whole transfer pipeline under a time budget, each decision explained.

:func:`auto` chains the other tools and chooses on validation data only, never on the test split:

1. **Measure and plan.** Each candidate backbone is loaded and a few batches of real items are timed
   through it. :func:`~headstart.workflows.auto_plan.make_plan` turns these costs into a plan that
   fits the budget; the plan is printed before the long work.
2. **Rank** every candidate on a stratified sample of the training split
   (:func:`~headstart.workflows.rank.rank_backbones`); the heads are timed on the best one's sample
   features, three training steps of the best network are timed, and the rest of the plan is made
   again with those times.
3. **Probe** the top candidates on all the data: each head (linear, kNN, MLP) is fitted on all the
   training rows and scored by the accuracy of its out-of-fold predictions
   (:data:`~headstart.workflows.auto_plan.CV_FOLDS` folds, the head's chosen C or k kept).
4. **Fine-tune** the best network with LP-FT when the plan has time for it, stopped at the budget
   (``max_seconds``); the kept epoch is the best so far.
5. **Choose**: the fine-tuned model when its validation accuracy beats the best probe's on the same
   validation rows (that probe refitted on fine-tuning's training rows), else the best probe.
   One bundle goes to ``out/bundle``; ``auto.json`` and ``report.html`` explain each decision.

The test split is evaluated once, for the chosen model, after the choice.

A run killed at any point continues with ``resume=True`` (``--resume``): the plan, the ranking and
each probe are kept in ``auto_state.json`` as they finish, the features are in the store, and
fine-tuning resumes from its checkpoint. The budget counts the whole run across resumes (the time
spent is saved every few seconds).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.dataset import Dataset
from headstart.errors import DataError, OptionError
from headstart.finetune.data import load_classification_data
from headstart.io import atomic_write_json, check_out_dir
from headstart.workflows.auto_files import (
    choose,
    eval_from_dict,
    final_probe,
    fine_tune_step,
    random_control,
    write_files,
)
from headstart.workflows.auto_plan import (
    CLOCK_FILE,
    CV_FOLDS,
    FINAL_SECONDS,
    HEADS,
    CandidateCost,
    Clock,
    PlanBar,
    format_seconds,
    head_seconds,
    make_plan,
    measure_candidate,
    parse_budget,
    probe_seconds,
    time_training,
)

STATE_FILE = "auto_state.json"
TFIDF = "sk:tfidf"
IMAGE_SOURCES = ("tv", "timm")
TEXT_SOURCES = ("hf", "st")
# Seconds per training row of one fit, before the heads are timed on the ranking's sample (generous).
DEFAULT_HEAD_RATES = {"linear": 4e-3, "knn": 5e-4, "mlp": 2e-2, TFIDF: 3e-3}


@dataclass
class AutoResult:
    """What :func:`auto` chose and why.

    Attributes:
        choice: ``backbone``, ``head`` (or ``lp-ft``), ``kind`` (``probe`` or ``finetune``) and the
            ``validation_accuracy`` it was chosen on.
        bundle: The chosen model, as :func:`headstart.load_bundle` reads it back.
        bundle_path: ``out/bundle`` (None without ``out``).
        test: The chosen model's test metrics (computed after the choice), or None.
        decisions: Everything ``auto.json`` holds: the plan, the ranking, every probe's validation
            accuracy, the fine-tuning's, the control's, what each step cost, and one sentence per decision.
        seconds: Wall time of the whole run, resumes included.
        budget: The budget in seconds.
    """

    choice: dict[str, Any]
    bundle: Any = field(repr=False)
    bundle_path: Path | None
    test: Any
    decisions: dict[str, Any]
    seconds: float
    budget: float
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "test": self.test.to_dict() if self.test is not None else None, "seconds": round(self.seconds, 1),
                "budget_s": round(self.budget, 1), "bundle": str(self.bundle_path) if self.bundle_path else None, **self.decisions}


def default_candidates(modality: str) -> list[str]:
    """Every backbone available offline for ``modality``, plus ``sk:tfidf`` for text."""
    from headstart.backbones import list_backbones

    sources = IMAGE_SOURCES if modality == "image" else TEXT_SOURCES
    names = [info.name for info in list_backbones(offline_only=True) if info.source in sources]
    return names + ([TFIDF] if modality == "text" else [])


def auto(
    data: Dataset | str,
    budget: str | float = "5m",
    *,
    candidates: list[str] | None = None,
    heads: tuple[str, ...] | list[str] = HEADS,
    out: str | Path | None = None,
    per_class: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    finetune: bool = True,
    control: bool = False,
    resume: bool = False,
    store=None,
    runtime: str | None = None,
    precision: str | None = None,
    quiet: bool = False,
) -> AutoResult:
    """Rank, probe and fine-tune within ``budget``, choose on validation data, and save one bundle.

    Args:
        data: A :class:`Dataset` or a source for :func:`headstart.load_data`.
        budget: Wall time for the whole run: ``10m``, ``90s``, ``1h`` or seconds. The run ends
            within it plus 10%; a budget too short for ranking and one probe is refused first.
        candidates: Backbones to consider; None takes every offline backbone of the data's
            modality (and ``sk:tfidf`` for text).
        heads: Heads to try on each probed candidate (``linear`` always comes first).
        out: Run directory: ``bundle/``, ``auto.json``, ``rank.json``, ``metrics.json``,
            ``report.html``, ``finetune/``; None keeps everything in memory (no resume).
        per_class: With a source string: keep at most this many training items per class.
        image_size: Input size for image candidates (None: each backbone's own).
        seed: Seed of the sample, the folds, the heads and the fine-tuning.
        finetune: Allow LP-FT fine-tuning when it fits the budget.
        control: Also probe a random-init copy of the chosen image backbone (linear head): what
            pretraining is worth on this data. Reported, never chosen.
        resume: Continue the run in ``out`` (same data and options); nothing done is redone.
        store: Feature store (default: ``$HEADSTART_CACHE``).
        runtime, precision: Extraction runtime and precision (see :func:`headstart.features.extract`).
        quiet: No progress bar or messages.

    Returns:
        An :class:`AutoResult`.

    Raises:
        OptionError: A bad budget, head or option, a budget too short, or ``resume`` without a run.
        DataError: Data that is not single-label image or text classification.
    """
    from headstart.features import FeatureStore
    from headstart.features.runtime import check_runtime
    from headstart.heads import check_head_name

    seconds_budget = parse_budget(budget)
    check_runtime(runtime, precision)
    heads = tuple(dict.fromkeys(["linear", *heads]))
    for head in heads:
        check_head_name(head)
    out = check_out_dir(out)
    if resume and (out is None or not (out / STATE_FILE).is_file()):
        raise OptionError(f"Nothing to resume: {out} holds no {STATE_FILE}. Run without --resume to start.")
    data = load_classification_data(data, per_class, seed, task="auto")
    names = list(dict.fromkeys(candidates or default_candidates(data.modality)))
    if not names:
        raise OptionError(f"No {data.modality} backbone is available offline; name some with --candidates.")
    settings = {"data": data.fingerprint(), "source": data.source, "candidates": names, "heads": list(heads), "image_size": image_size,
                "seed": seed, "finetune": finetune, "control": control, "budget_s": seconds_budget}
    state = _start_state(out, settings, resume)
    store = store or FeatureStore()
    run = _Run(data, settings, state, out, store, runtime, precision, quiet)
    clock = Clock(seconds_budget, state.get("spent", 0.0), out)
    run.clock = clock
    try:
        with PlanBar(quiet) as bar:
            run.bar = bar
            return run.go(names, heads, image_size, seed, finetune, control)
    except KeyboardInterrupt:
        if out is not None:
            from headstart.console import err_console

            err_console.print(f"interrupted: continue with the same command plus --resume (run folder {out}); "
                              f"{clock.spent():.0f} s of the budget are spent", highlight=False, soft_wrap=True)
        raise
    finally:
        clock.stop()
        if out is not None and out.is_dir():
            state["spent"] = round(clock.spent(), 2)
            atomic_write_json(out / STATE_FILE, state)


def _start_state(out: Path | None, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    import json

    if not resume:
        return {"settings": settings, "spent": 0.0}
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict):
        raise OptionError(f"{out / STATE_FILE} is not a readable auto state; start a new run in another --out folder.")
    # The budget may change (a resume can give the whole run more time); everything else must match.
    differences = [key for key, value in settings.items() if key != "budget_s" and state.get("settings", {}).get(key) != value]
    if differences:
        raise OptionError(
            f"{out} holds an auto run with other {', '.join(differences)}; resume with the same data and options, "
            "or start a new run in another --out folder."
        )
    state["settings"]["budget_s"] = settings["budget_s"]
    clock = out / CLOCK_FILE
    if clock.is_file():
        try:
            state["spent"] = max(float(state.get("spent", 0.0)), float(json.loads(clock.read_text())["spent"]))
        except (ValueError, KeyError, TypeError):
            pass
    return state


class _Run:
    """One call of :func:`auto`: the data, the state that resume reads back, and the steps."""

    def __init__(self, data: Dataset, settings, state, out, store, runtime, precision, quiet) -> None:
        self.data, self.settings, self.state, self.out, self.store = data, settings, state, out, store
        self.runtime, self.precision, self.quiet = runtime, precision, quiet
        self.loaded: dict[str, Any] = {}
        self.fitted: dict[tuple[str, str], Any] = {}
        self.features: dict[str, Any] = {}
        self.skipped_items: dict[tuple[str, str], None] = dict.fromkeys(data.skipped)  # (item, reason): the listing's and extraction's
        self.clock: Clock
        self.bar: PlanBar
        self.steps: list[dict[str, Any]] = state.setdefault("steps", [])
        train = np.isin(data.split, ("train", "val"))
        self.n_train, self.n_test = int(train.sum()), int((data.split == "test").sum())

    # ----- helpers ------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if not self.quiet:
            self.bar.print(text)

    def save(self) -> None:
        self.state["spent"] = round(self.clock.spent(), 2)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / STATE_FILE, self.state)

    @contextlib.contextmanager
    def step(self, name: str, estimate: float):
        """Show ``name`` on the bar for ``estimate`` seconds; record its planned and actual seconds when it ends without an error."""
        started = time.perf_counter()
        self.bar.start(name, estimate)
        try:
            yield
        finally:
            self.bar.finish()
        self.steps.append({"step": name, "planned_s": round(estimate, 1), "actual_s": round(time.perf_counter() - started, 1)})

    def backbone(self, name: str):
        from headstart.backbones import load_backbone

        if name not in self.loaded:
            self.loaded[name] = load_backbone(name)
        return self.loaded[name]

    # ----- the steps ------------------------------------------------------------------------------

    def go(self, names, heads, image_size, seed, finetune, control) -> AutoResult:
        costs = self.costs = self.measure(names, image_size, seed, finetune)
        order = self.state.get("rank_order") or [name for name in names if name in costs]
        rates = dict(self.state.get("head_rates") or DEFAULT_HEAD_RATES)
        plan = make_plan(costs, order, budget=self.clock.budget, spent=self.clock.spent(), n_items=len(self.data), n_train=self.n_train,
                         n_test=self.n_test, n_classes=len(self.data.classes), head_rates=rates, heads=heads,
                         rank_done="rank_order" in self.state, finetune=finetune, control=control)
        self.state.setdefault("first_plan", plan.to_dict())
        for line in plan.lines():
            self.say(line)
        self.bar.plan(plan.steps)
        if "rank_order" not in self.state:
            order = self.rank(names, costs, plan, image_size, seed)
            rates = self.time_heads(order[0], heads, plan.rank_sample, image_size, seed)
            trainable = [name for name in order if costs[name].train_item_seconds is not None]
            if finetune and trainable:  # the network LP-FT would train, if the probes agree with the ranking
                with self.step("time training steps", 5.0):
                    costs[trainable[0]] = time_training(self.backbone(trainable[0]), costs[trainable[0]], image_size)
                self.state["costs"][trainable[0]] = costs[trainable[0]].to_dict()
            plan = make_plan(costs, order, budget=self.clock.budget, spent=self.clock.spent(), n_items=len(self.data),
                             n_train=self.n_train, n_test=self.n_test, n_classes=len(self.data.classes), head_rates=rates, heads=heads,
                             rank_done=True, finetune=finetune, control=control)
            self.say("re-planned with the heads timed on the ranking's sample:")
            for line in plan.lines()[1:]:
                self.say(line)
        self.state["plan"] = plan.to_dict()
        self.bar.plan(plan.steps)
        self.save()
        self.state.setdefault("probes", {})
        for name in plan.probe:
            self.probe(name, costs[name], rates, tuple(plan.heads), image_size, seed, must=name == order[0])
        best = self.best_probe()
        # Fine-tuning gets the epochs that fit now, whatever the plan guessed before the probes ran.
        tuned = fine_tune_step(self, order, costs, image_size, seed) if finetune else None
        return self.finish(best, tuned, costs, image_size, seed, control)

    def measure(self, names, image_size, seed, finetune) -> dict[str, CandidateCost]:
        """Load each candidate and time it (kept in the state: a resumed run does not measure again)."""
        import tempfile

        from headstart.backbones.registry import allows_remote_code
        from headstart.errors import (
            WeightsMismatchError,
            WeightsUnavailableError,
        )
        from headstart.features import FeatureStore
        from headstart.features.extract import (
            check_modality,
            check_options,
            pick_device,
            stored_paths,
        )
        from headstart.heads import tfidf

        if "costs" in self.state:
            return {name: CandidateCost(**cost) for name, cost in self.state["costs"].items()}
        for name in names:  # every name's prefix first: a typo fails before any load
            if tfidf.is_baseline(name):
                tfidf.check_baseline(name, self.data.modality, self.data.source)
            else:
                allows_remote_code(name)
        costs: dict[str, CandidateCost] = {}
        skipped: list[dict[str, str]] = []
        measured: list[str] = []
        with tempfile.TemporaryDirectory(prefix="headstart-auto-timing-") as scratch, self.step("measure candidates", 2.0 * len(names)):
            scratch_store = FeatureStore(scratch)
            for position, name in enumerate(names):
                if tfidf.is_baseline(name):
                    costs[name] = CandidateCost(name, 0.0, 0.0, 0.0, None, "cannot be fine-tuned", 0)
                    continue
                if costs and self.clock.usable() <= 0:
                    # Measuring alone used the budget: the smallest plan of what is measured decides (it refuses when too short).
                    for rest in names[position:]:
                        skipped.append({"candidate": rest, "reason": "not measured: measuring the others used the budget"})
                    break
                started = time.perf_counter()
                try:
                    backbone = self.backbone(name)
                except (WeightsUnavailableError, WeightsMismatchError) as error:  # a name that does not resolve stops the run
                    skipped.append({"candidate": name, "reason": str(error)})
                    measured.append(f"skipped {name}: {error}")
                    continue
                check_modality(backbone.spec, self.data)
                check_options(backbone, backbone.check_layer(None), "avg", image_size, "auto")
                costs[name] = measure_candidate(backbone, self.data, image_size=image_size, store=scratch_store, runtime=self.runtime,
                                                precision=self.precision, seed=seed, load_seconds=time.perf_counter() - started,
                                                train=finetune)
                spec = backbone.spec.with_input_size(image_size) if backbone.spec.modality == "image" else backbone.spec
                costs[name].stored = bool(stored_paths(spec, backbone.check_layer(None), "avg", self.data, self.store, pick_device(None).type,
                                                       self.runtime, self.precision, self.settings["data"]))
                # Printed with the plan, once every candidate is measured (a refusal below is then the only line).
                measured.append(f"measured {name}: {costs[name].item_seconds * 1000:.1f} ms per item"
                                + (" (features stored already)" if costs[name].stored else "")
                                + (f", {costs[name].train_item_seconds * 1000:.1f} ms per training item" if costs[name].train_item_seconds else ""))
                make_plan(costs, list(costs), budget=self.clock.budget, spent=self.clock.spent(), n_items=len(self.data), n_train=self.n_train,
                          n_test=self.n_test, n_classes=len(self.data.classes), head_rates=DEFAULT_HEAD_RATES, heads=("linear",),
                          finetune=False)  # refuses a budget too short for what is measured so far, before measuring more
        if not costs:
            raise DataError("Every candidate was skipped: " + "; ".join(f"{s['candidate']}: {s['reason']}" for s in skipped))
        for line in measured:
            self.say(line)
        self.state["costs"] = {name: cost.to_dict() for name, cost in costs.items()}
        self.state["skipped_candidates"] = skipped
        self.save()
        return costs

    def rank(self, names, costs, plan, image_size, seed) -> list[str]:
        from headstart.workflows.rank import rank_backbones

        candidates = [name for name in names if name in costs]
        estimate = dict(plan.steps).get(next((step for step, _ in plan.steps if step.startswith("rank")), ""), 10.0)
        with self.step("rank", estimate):
            table = rank_backbones(candidates, self.data, sample=plan.rank_sample, image_size=image_size, seed=seed, store=self.store,
                                   quiet=True, cost=False, runtime=self.runtime, precision=self.precision)
        if self.out is not None:
            table.write(self.out)
        order = [row.backbone for row in table.rows]
        order += [name for name in candidates if name not in order]
        self.state["rank_order"] = order
        self.state["rank"] = [{"rank": row.rank, "candidate": row.backbone, "combined": row.combined,
                               "linear": row.scores.get("linear"), "vs_first": row.vs_first} for row in table.rows]
        self.say("ranked: " + ", ".join(f"{row.rank}. {row.backbone}" for row in table.rows))
        self.save()
        return order

    def time_heads(self, name, heads, sample, image_size, seed) -> dict[str, float]:
        """Seconds per row of one fit of each head, on the best-ranked candidate's sample features."""
        from headstart.features import extract
        from headstart.heads import make_head, tfidf
        from headstart.workflows.rank import sample_rows

        rows, _ = sample_rows(self.data, sample, seed)
        rates = dict(DEFAULT_HEAD_RATES)
        with self.step("time the heads", 5.0):
            if tfidf.is_baseline(name):
                X = np.asarray(list(self.data.items), dtype=object)[rows]
                timed = {TFIDF: tfidf.TfidfLogReg(random_state=seed)}
            else:
                features = extract(self.backbone(name), self.data.subset(rows), image_size=image_size, store=self.store, quiet=True,
                                   runtime=self.runtime, precision=self.precision)
                X = features.X
                timed = {head: make_head(head, random_state=seed) for head in heads}
            y = self.data.labels[rows]
            for head, model in timed.items():
                if head == "linear":  # a warm-up fit first: the first one in a process carries one-time costs
                    make_head(head, random_state=seed).fit(X, y)
                started = time.perf_counter()
                model.fit(X, y)
                rates[head] = (time.perf_counter() - started) / len(rows)
                if head == "mlp":  # its time follows its epochs: per batch of one epoch, and the epochs it needed here (doubled)
                    batches = math.ceil(len(rows) * (1 - model.val_fraction) / model.batch_size)
                    rates["mlp_batch"] = (time.perf_counter() - started) / max(1, model.n_epochs_ * batches)
                    rates["mlp_epochs"] = float(min(model.max_epochs, 2 * model.n_epochs_))
        self.state["head_rates"] = rates
        return rates

    def probe(self, name, cost, rates, heads, image_size, seed, must: bool) -> None:
        """Fit every head that fits the time on all the training rows; score each by its out-of-fold accuracy."""
        probes = self.state.setdefault("probes", {})
        if name in probes and probes[name].get("done"):
            return
        estimate = probe_seconds(cost, len(self.data), self.n_train, rates, heads)
        if not must and estimate > self.clock.usable() - self.reserve():
            self.say(f"skipped probing {name}: ~{format_seconds(estimate)} would not fit in the time left")
            probes[name] = {"done": True, "skipped": f"~{format_seconds(estimate)} did not fit in the {format_seconds(self.clock.left())} left"}
            return
        with self.step(f"probe {name}", estimate):
            X, y, rows = self.training_rows(name, image_size)
            record: dict[str, Any] = {"cv": {}, "fit_s": {}, "skipped_heads": {}, "n": int(len(rows))}
            for head in (heads if name != TFIDF else (TFIDF,)):
                head_cost = head_seconds(rates, len(rows), (head,))
                if head != heads[0] and head_cost > self.clock.usable() - self.reserve():
                    record["skipped_heads"][head] = f"~{format_seconds(head_cost)} did not fit in the time left"
                    continue
                started = time.perf_counter()
                model, accuracy = self.fit_and_score(head, X, y, seed, rows)
                record["cv"][head] = accuracy
                record["fit_s"][head] = round(time.perf_counter() - started, 2)
                self.fitted[(name, head)] = model
            record["done"] = True
            probes[name] = record
        scores = ", ".join(f"{head} {value:.3f}" if value is not None else f"{head} n/a" for head, value in record["cv"].items())
        self.say(f"probed {name}: out-of-fold accuracy {scores}")
        self.save()

    def reserve(self, finetune: bool = True) -> float:
        """The time the plan keeps for the steps after the probes (fine-tuning, the control) while they have not run."""
        plan = self.state.get("plan") or {}
        kept = 0.0
        for name, seconds in plan.get("steps", []):
            if (finetune and name.startswith("fine-tune") and "finetune" not in self.state) or name == "random-init control":
                kept += seconds
        return kept

    def training_rows(self, name, image_size):
        """``(X, y, rows)`` of the valid training rows (train and val splits) of ``name``'s features (texts for sk:tfidf)."""
        from headstart.features import extract

        if name == TFIDF:
            texts = np.empty(len(self.data), dtype=object)
            texts[:] = list(self.data.items)
            valid = np.array([isinstance(t, str) and bool(t.strip()) for t in texts])
            self.skipped_items.update(dict.fromkeys((f"item {i}", "empty text" if isinstance(texts[i], str) else "not a text")
                                                    for i in np.flatnonzero(~valid)))
            X = texts
        else:
            if name not in self.features:
                self.features[name] = extract(self.backbone(name), self.data, image_size=image_size, store=self.store, quiet=True,
                                              runtime=self.runtime, precision=self.precision)
                self.skipped_items.update(dict.fromkeys(self.features[name].skipped))
            X, valid = self.features[name].X, self.features[name].valid
        rows = np.flatnonzero(np.isin(self.data.split, ("train", "val")) & valid)
        return X, self.data.labels, rows

    def fit_and_score(self, head: str, X, y, seed: int, rows=None):
        from headstart.heads import make_head, tfidf
        from headstart.workflows.calibration import (
            calibration_folds,
            out_of_fold_scores,
        )

        rows = rows if rows is not None else np.flatnonzero(np.isin(self.data.split, ("train", "val")))
        model = tfidf.TfidfLogReg(random_state=seed) if head == TFIDF else make_head(head, random_state=seed)
        Xr, yr = X[rows], y[rows]
        model.fit(Xr, yr)
        folds, _ = calibration_folds(yr, CV_FOLDS, seed)
        if folds is None:
            return model, None
        scores = out_of_fold_scores(head, model, Xr, yr, folds, "proba")
        predicted = np.asarray(model.classes_)[scores.argmax(axis=1)]
        return model, float(np.mean(predicted == yr))

    def best_probe(self) -> dict[str, Any]:
        """The (candidate, head) with the best out-of-fold accuracy; ties go to the better-ranked candidate and the simpler head."""
        best = None
        for name in self.state["rank_order"]:
            record = self.state["probes"].get(name) or {}
            for head, accuracy in record.get("cv", {}).items():
                if accuracy is not None and (best is None or accuracy > best["validation_accuracy"]):
                    best = {"backbone": name, "head": head, "validation_accuracy": accuracy}
        if best is None:
            raise DataError("No head could be scored: every class needs at least 2 training items for out-of-fold predictions.")
        return best

    def finish(self, best, tuned, costs, image_size, seed, control) -> AutoResult:

        choice, compare = choose(self, best, tuned, image_size, seed)
        with self.step("choose and save", FINAL_SECONDS):
            if choice["kind"] == "finetune":
                bundle, test = self._tuned_bundle()
                predictions = None
            else:
                bundle, test, predictions = final_probe(self, choice, image_size, seed)
            control_record = random_control(self, choice, image_size, seed) if control else None
            decisions = write_files(self, choice, compare, bundle, test, predictions, control_record)
        bundle_path = self.out / "bundle" if self.out is not None else None
        return AutoResult(choice, bundle, bundle_path, test, decisions, self.clock.spent(), self.clock.budget, self.out)

    def _tuned_bundle(self):
        from headstart.bundles import load_bundle

        result = getattr(self, "tuned_result", None)
        if result is not None:
            bundle, test = result.bundle, result.test
        else:  # finished before a resume: read it back
            import json

            bundle = load_bundle(self.out / "finetune" / "bundle")
            test = eval_from_dict(json.loads((self.out / "finetune" / "metrics.json").read_text()).get("test"))
        return bundle, test
