"""The plan of ``headstart auto``: the budget, the measured costs, and what fits in it.

Nothing here trains anything. :func:`measure_candidate` times a few batches of real items through
each candidate (extraction, decoding included), and :func:`time_training` a few training steps of
the network that would be fine-tuned;
:func:`make_plan` turns those costs and the time left into a :class:`Plan`: how many items the
ranking scores, how many candidates are probed and with which heads, and whether LP-FT fine-tuning
fits and for how many epochs. :class:`PlanBar` is the one progress bar of a run, whose ETA covers
the whole plan.

The planning rules, in order of priority:

1. The ranking and a probe of the best-ranked candidate always run (the smallest plan). A budget
   below their estimate is refused before any long work.
2. LP-FT of the best candidate comes next, with as many epochs as fit, from
   :data:`MIN_EPOCHS` to :data:`MAX_EPOCHS` (the schedule measured in benchmarks/finetune_curves.py).
3. More candidates (up to :data:`TOP_K`) are probed when they fit beside that fine-tuning.

Every estimate is planned into :data:`PLAN_SHARE` of the time left; the rest is a margin for
misestimates. The run re-plans after each step from what the steps really took.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Self

from headstart.errors import OptionError
from headstart.io import atomic_write_json

CLOCK_FILE = ".auto_clock"  # the run's spent seconds, saved every few seconds (a killed run's time counts on resume)

HEADS = ("linear", "knn", "mlp")
TOP_K = 3  # at most this many candidates are probed on all the data
RANK_PER_CLASS = 25  # the ranking scores this many training items per class ...
RANK_MAX = 1000  # ... and at most this many in all
CV_FOLDS = 3  # out-of-fold predictions that choose among the heads
REFIT_SHARE = {"linear": 0.3, "knn": 0.3}  # a refit with the chosen C or k, as a share of the first fit (which searches them)
MIN_EPOCHS = 2  # fewer LP-FT epochs than this is not planned
MAX_EPOCHS = 6  # the demo's measured LP-FT schedule (benchmarks/finetune_curves.py --part demo)
VAL_FRACTION = 0.1  # fine-tuning's validation share (its default)
PLAN_SHARE = 0.85  # plan into this share of the time left; the rest is margin
FINAL_SECONDS = 4.0  # writing the bundle, the report and the run files
TRAIN_FACTOR = 5.0  # a training step per item, in extractions per item, until timed (MobileNetV2 on 2 cores: about 5)

_BUDGET = re.compile(r"^(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m(?:in)?)?(?:(\d+(?:\.\d*)?)s?)?$")


def parse_budget(budget: str | float) -> float:
    """Seconds from ``10m``, ``90s``, ``1h30m``, ``2.5m`` or a number of seconds.

    Raises:
        OptionError: Not a duration, or not above zero.
    """
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        seconds = float(budget)
    else:
        text = str(budget).strip().lower().replace(" ", "")
        match = _BUDGET.match(text) if text else None
        if match is None or not any(match.groups()):
            raise OptionError(f"--budget must be a duration such as 10m, 90s or 1h30m, got {budget!r}.")
        hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not (math.isfinite(seconds) and seconds > 0):
        raise OptionError(f"--budget must be above zero, got {budget!r}; 5m suits a few thousand images on a laptop.")
    return seconds


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 5 s`` or ``1 h 2 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@dataclass
class CandidateCost:
    """What one candidate costs here, measured on a real batch.

    Attributes:
        name: The backbone name (``sk:tfidf`` for the TF-IDF baseline).
        load_seconds: Loading the network (0 once loaded).
        item_seconds: Extraction per item in steady state, decoding and resizing included.
        first_seconds: The first batch's extra time (warm-up, the runtime's one-time choice).
        train_item_seconds: One LP-FT training step per item (forward, backward, decoding); None
            when the candidate cannot be fine-tuned.
        train_measured: How ``train_item_seconds`` was obtained.
        feature_dim: The width of its features.
        call_seconds: The fixed cost of one extraction call (the store's writes, the loader).
        train_warmup_seconds: What the first training steps take beyond the steady ones.
        stored: The store holds this candidate's features of all the data (a rerun, or a resume).
    """

    name: str
    load_seconds: float
    item_seconds: float
    first_seconds: float
    train_item_seconds: float | None
    train_measured: str
    feature_dim: int
    call_seconds: float = 0.0
    train_warmup_seconds: float = 0.0
    stored: bool = False

    def extraction(self, n: int) -> float:
        """Extracting ``n`` items (nothing when the store holds all the data's features already)."""
        return 0.0 if self.stored else self.call_seconds + n * self.item_seconds

    def to_dict(self) -> dict[str, Any]:
        return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in asdict(self).items()}


@dataclass
class Plan:
    """What the run will do, and the seconds each step should take.

    Attributes:
        budget: The whole budget, seconds.
        spent: Seconds already spent when this plan was made (measuring, earlier steps, earlier runs).
        rank_sample: Training items the ranking scores.
        probe: Candidates to probe on all the data, best-ranked first (after the ranking: the top
            ones; before it, how many).
        heads: The heads tried on each probed candidate.
        epochs: LP-FT epochs (0: no fine-tuning).
        steps: ``(step, seconds)`` in order: the estimate of every step still to run.
        reasons: One sentence per decision the plan took.
    """

    budget: float
    spent: float
    rank_sample: int
    probe: list[str]
    heads: tuple[str, ...]
    epochs: int
    epoch_seconds: float
    steps: list[tuple[str, float]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def eta(self) -> float:
        """Seconds from now to the end of the plan."""
        return float(sum(seconds for _, seconds in self.steps))

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_s": round(self.budget, 1), "spent_s": round(self.spent, 1), "eta_s": round(self.eta, 1),
            "rank_sample": self.rank_sample, "probe": list(self.probe), "heads": list(self.heads), "epochs": self.epochs,
            "epoch_s": round(self.epoch_seconds, 1), "steps": [[name, round(seconds, 1)] for name, seconds in self.steps],
            "reasons": list(self.reasons),
        }

    def lines(self) -> list[str]:
        """The plan as printed before the work starts."""
        out = [(f"plan: {format_seconds(self.eta)} of work in the {format_seconds(self.budget - self.spent)} left "
               f"(budget {format_seconds(self.budget)})")]
        out += [f"  {name:<34} ~{format_seconds(seconds)}" for name, seconds in self.steps]
        out += [f"  - {reason}" for reason in self.reasons]
        return out


def head_seconds(rates: dict[str, float], n: int, heads: tuple[str, ...]) -> float:
    """Fitting ``heads`` on ``n`` rows and their out-of-fold predictions (:data:`CV_FOLDS` refits on part of the rows).

    ``rates`` holds seconds per training row of one fit for each head, except the MLP: its time
    follows its epochs, not its rows, so ``mlp_batch`` (seconds per batch of 256 rows in one epoch)
    and ``mlp_epochs`` (the epochs it ran on the ranking's sample, doubled; at most its 200) give it.
    The refits keep the C or k the first fit chose (:data:`REFIT_SHARE` of a fit); the MLP's redo all of it.
    """
    refits = CV_FOLDS * (CV_FOLDS - 1) / CV_FOLDS
    total = 0.0
    for head in heads:
        share = 1 + REFIT_SHARE.get(head, 1.0) * refits
        if head == "mlp" and "mlp_batch" in rates:
            total += rates["mlp_epochs"] * math.ceil(0.8 * n / 256) * rates["mlp_batch"] * share
        else:
            total += rates.get(head, 0.0) * n * share
    return float(total)


def probe_seconds(cost: CandidateCost, n_items: int, n_train: int, head_rates: dict[str, float], heads: tuple[str, ...]) -> float:
    """Extracting every item with ``cost``'s candidate, then its heads."""
    if cost.name == "sk:tfidf":
        return head_seconds(head_rates, n_train, ("sk:tfidf",))
    return cost.load_seconds + cost.extraction(n_items) + head_seconds(head_rates, n_train, heads)


def epoch_seconds(cost: CandidateCost, n_fit: int, n_val: int) -> float:
    """One LP-FT epoch: training steps on ``n_fit`` items, then validation."""
    return n_fit * (cost.train_item_seconds or 0.0) + n_val * cost.item_seconds


def finetune_seconds(cost: CandidateCost, epochs: int, n_fit: int, n_val: int, n_test: int) -> float:
    """LP-FT for ``epochs``: setup and the start's validation, the epochs, then calibration and the test split."""
    setup = cost.load_seconds + 2.0 + cost.train_warmup_seconds + 2 * cost.call_seconds + n_val * cost.item_seconds
    return setup + epochs * epoch_seconds(cost, n_fit, n_val) + (n_val + n_test) * cost.item_seconds


def make_plan(
    costs: dict[str, CandidateCost], order: list[str], *, budget: float, spent: float, n_items: int, n_train: int, n_test: int,
    n_classes: int, head_rates: dict[str, float], heads: tuple[str, ...] = HEADS, rank_done: bool = False, finetune: bool = True,
    max_epochs: int = MAX_EPOCHS, top_k: int = TOP_K, control: bool = False,
) -> Plan:
    """The plan for the time left, from the measured costs.

    Args:
        costs: Per candidate, its measured cost.
        order: The candidates, best first (the ranking's order once it ran, else as given).
        budget: The whole budget in seconds.
        spent: Seconds spent so far.
        n_items: All items (every split is extracted).
        n_train: Training items (train and val splits).
        n_test: Test items.
        n_classes: Classes.
        head_rates: Seconds per training row of one fit of each head (:func:`head_seconds`).
        heads: Heads to try.
        rank_done: The ranking ran already (its step is not planned again).
        finetune: Whether fine-tuning may be planned.
        max_epochs: Most LP-FT epochs.
        top_k: Most candidates to probe.
        control: Keep time for the random-init control (the best candidate's cost, linear head).

    Raises:
        OptionError: The smallest plan (rank, then probe the best candidate) does not fit the budget.
    """
    left = budget - spent
    usable = PLAN_SHARE * left - FINAL_SECONDS
    reasons: list[str] = []
    rank_sample = min(n_train, max(RANK_PER_CLASS * n_classes, 2 * n_classes), RANK_MAX)
    steps: list[tuple[str, float]] = []
    if not rank_done:
        rank = sum(c.load_seconds + c.first_seconds + c.extraction(rank_sample) + 0.5 for c in costs.values()) + 1.0
        steps.append((f"rank {len(costs)} candidates on {rank_sample} items", rank))
    first = order[0]
    heads = tuple(heads)
    if control and costs[first].name != "sk:tfidf":
        steps.append(("random-init control", probe_seconds(costs[first], n_items, n_train, head_rates, ("linear",))))
    before = sum(seconds for _, seconds in steps)
    # The best-ranked candidate is always probed: with every head when that fits, else without the costliest ones.
    while len(heads) > 1 and before + probe_seconds(costs[first], n_items, n_train, head_rates, heads) > usable:
        reasons.append(f"no {heads[-1]} head: ~{format_seconds(head_seconds(head_rates, n_train, heads[-1:]))} to fit and score does not fit")
        heads = heads[:-1]
    probes = {name: probe_seconds(costs[name], n_items, n_train, head_rates, heads) for name in order}
    used = before + probes[first]
    if used > usable and not rank_done:
        need = (used + FINAL_SECONDS) / PLAN_SHARE + spent
        raise OptionError(
            f"A budget of {format_seconds(budget)} is too short for this data: ranking {len(costs)} candidates and probing the best "
            f"on {n_items} items needs about {format_seconds(need)} here. Give --budget {math.ceil(need / 60)}m or more, "
            "fewer --candidates, or fewer items (--per-class)."
        )
    chosen = [first]
    # LP-FT of the best candidate, with the epochs that fit after its probe.
    trainable = [name for name in order if costs[name].train_item_seconds is not None]
    epochs, per_epoch, tune_cost = 0, 0.0, 0.0
    n_val = max(n_classes, round(n_train * VAL_FRACTION))
    if not finetune:
        reasons.append("no fine-tuning: turned off (--no-finetune)")
    elif not trainable:
        reasons.append("no fine-tuning: no candidate can be fine-tuned")
    else:
        target = trainable[0]
        per_epoch = epoch_seconds(costs[target], n_train - n_val, n_val)
        fixed = finetune_seconds(costs[target], 0, n_train - n_val, n_val, n_test)
        room = usable - used - fixed
        epochs = int(min(max_epochs, max(0, room // per_epoch))) if per_epoch > 0 else max_epochs
        if epochs < MIN_EPOCHS:
            reasons.append(
                f"no fine-tuning: {MIN_EPOCHS} LP-FT epochs of {target} need ~{format_seconds(fixed + MIN_EPOCHS * per_epoch)}, "
                f"{format_seconds(max(0.0, room + fixed))} would be left after the probe"
            )
            epochs = 0
        else:
            tune_cost = fixed + epochs * per_epoch
            reasons.append(f"LP-FT fine-tuning of the best candidate for {epochs} epochs (~{format_seconds(per_epoch)} each)"
                           + ("" if epochs == max_epochs else f"; {max_epochs} would not fit"))
    used += tune_cost
    for name in order[1:]:
        if len(chosen) >= top_k:
            break
        if used + probes[name] <= usable:
            chosen.append(name)
            used += probes[name]
    dropped = [name for name in order[len(chosen):] if name not in chosen]
    if dropped and len(chosen) < top_k:
        reasons.append(f"probe the top {len(chosen)}: the next ({dropped[0]}, ~{format_seconds(probes[dropped[0]])}) does not fit")
    elif dropped:
        reasons.append(f"probe the top {len(chosen)} of {len(order)} candidates")
    control_step = [step for step in steps if step[0] == "random-init control"]
    steps = [step for step in steps if step[0] != "random-init control"]
    for name in chosen:
        steps.append((f"probe {name}", probes[name]))
    if epochs:
        steps.append((f"fine-tune (LP-FT, {epochs} epochs)", tune_cost))
    steps += control_step
    steps.append(("choose and save", FINAL_SECONDS))
    return Plan(budget, spent, rank_sample, chosen, tuple(heads), epochs, per_epoch, steps, reasons)


def measure_candidate(backbone, data, *, image_size: int | None, store, runtime: str | None, precision: str | None, seed: int,
                      load_seconds: float, train: bool = True) -> CandidateCost:
    """Time real items of the training split through ``backbone``: the steady cost per item, and the fixed costs.

    Three extractions into ``store`` (a throwaway one: the timing must not leave entries that look
    like the data's), all in batches of 8: a warm-up of 8 items (the first call also makes the
    runtime's one-time choice), then 16 and 48 other items; the per-item cost is the difference of
    the last two over 32 items, so each call's fixed cost (the store's writes, the loader) is not
    counted per item. A
    training step is taken as :data:`TRAIN_FACTOR` extractions until :func:`time_training` times it.
    """
    from headstart.backbones import NotTrainableError, check_trainable
    from headstart.features import extract

    rows = np.random.default_rng(seed).permutation(data.indices("train"))
    sizes = [n for n in (8, 16, 48) if n <= len(rows)] or [len(rows)]
    spec = backbone.spec.with_input_size(image_size) if backbone.spec.modality == "image" else backbone.spec
    timings, start = [], 0
    for n in sizes:
        part = rows[start: start + n] if start + n <= len(rows) else rows[:n]
        start += n
        began = time.perf_counter()
        # One batch size throughout: a new batch shape would add its own one-time kernel set-up to the timing.
        extract(backbone, data.subset(part), image_size=image_size, batch_size=sizes[0], store=store, quiet=True, runtime=runtime,
                precision=precision)
        timings.append(time.perf_counter() - began)
    if len(sizes) == 3:
        item = max((timings[2] - timings[1]) / (sizes[2] - sizes[1]), 0.2 * timings[2] / sizes[2])
        call = max(0.0, timings[1] - sizes[1] * item)
    else:
        item, call = timings[-1] / sizes[-1], 0.0
    first = max(0.0, timings[0] - sizes[0] * item - call)
    try:
        check_trainable(backbone)
        trainable = train
    except NotTrainableError:
        trainable = False
    train_item = TRAIN_FACTOR * item if trainable else None
    how = f"{TRAIN_FACTOR:g}x extraction, until timed" if trainable else "cannot be fine-tuned"
    return CandidateCost(spec.name, load_seconds, item, first, train_item, how, int(spec.feature_dim or 0), call)


def time_training(backbone, cost: CandidateCost, image_size: int | None) -> CandidateCost:
    """``cost`` with its training step timed: three forward and backward passes of a copy of an image network.

    The last step gives the steady cost (plus decoding, about an extraction per item); what the first
    two took beyond it is the one-time warm-up. Text encoders keep the estimate (their batches' cost
    depends on the texts' lengths).
    """
    import copy
    import dataclasses

    import torch

    if cost.train_item_seconds is None or backbone.spec.modality != "image":
        return cost
    size = image_size or backbone.spec.input_size
    net = copy.deepcopy(backbone).train()
    batch = torch.randn(16, 3, size, size)
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        net(batch).float().pow(2).mean().backward()
        seconds.append(time.perf_counter() - started)
    del net
    step = seconds[-1]
    return dataclasses.replace(cost, train_item_seconds=step / len(batch) + cost.item_seconds, train_warmup_seconds=max(0.0, sum(seconds[:2]) - 2 * step),
                               train_measured=f"3 timed training steps of {len(batch)} images (the last one), plus decoding")


class Clock:
    """The budget's clock: seconds spent by earlier runs plus this one's, saved every few seconds."""

    def __init__(self, budget: float, spent: float, out: Path | None) -> None:
        self.budget, self.before, self.out = budget, spent, out
        self.started = time.perf_counter()
        self._stop = threading.Event()
        if out is not None:
            self._thread = threading.Thread(target=self._save_loop, daemon=True)
            self._thread.start()

    def spent(self) -> float:
        return self.before + time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.spent()

    def usable(self) -> float:
        """What the plan may still use: its share of the time left, less the final step."""
        return PLAN_SHARE * self.left() - FINAL_SECONDS

    def save(self) -> None:
        if self.out is not None and self.out.is_dir():
            atomic_write_json(self.out / CLOCK_FILE, {"spent": round(self.spent(), 2)})

    def _save_loop(self) -> None:
        while not self._stop.wait(2.0):
            try:
                self.save()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self.save()


class PlanBar:
    """One progress bar for the whole run; its ETA is the plan's time left.

    The bar moves with the clock through each step's estimate (never past 95% of it until the step
    ends), then jumps to the step's end; a re-plan replaces the steps still to come.
    """

    def __init__(self, quiet: bool, console=None) -> None:
        self.quiet = quiet
        self.done = 0.0
        self.current: tuple[str, float, float] | None = None  # name, estimate, started
        self.remaining = 0.0  # estimates of the steps after the current one
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress = None
        self._task = None
        if quiet:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from headstart.console import err_console

        self._progress = Progress(
            TextColumn("[bold]auto[/] {task.description}"), BarColumn(), TextColumn("{task.fields[eta]}"), TimeElapsedColumn(),
            console=console or err_console, transient=True,
        )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("planning", total=1.0, eta="")
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._progress is not None:
            self._tick_once(final=exc[0] is None)
            self._progress.stop()

    def plan(self, steps: list[tuple[str, float]]) -> None:
        """The estimates of the steps still to run (the first is the next to start)."""
        with self._lock:
            self.remaining = float(sum(seconds for _, seconds in steps))

    def start(self, name: str, estimate: float) -> None:
        with self._lock:
            self.current = (name, max(estimate, 0.1), time.perf_counter())
            self.remaining = max(0.0, self.remaining - estimate)

    def finish(self) -> None:
        with self._lock:
            if self.current is not None:
                self.done += time.perf_counter() - self.current[2]
            self.current = None

    def print(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._tick_once()

    def _tick_once(self, final: bool = False) -> None:
        with self._lock:
            done, left, name = self.done, self.remaining, "done"
            if self.current is not None:
                name, estimate, started = self.current
                ran = time.perf_counter() - started
                done += ran
                left += max(estimate - ran, 0.05 * estimate)
            if final:
                left = 0.0
        total = done + left
        self._progress.update(self._task, description=name, total=max(total, 1e-6), completed=done,
                              eta=f"ETA {format_seconds(left)}" if left > 0 else "")


__all__ = ["HEADS", "CandidateCost", "Clock", "Plan", "PlanBar", "make_plan", "measure_candidate", "parse_budget", "time_training"]
