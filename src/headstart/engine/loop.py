"""THE training loop: every task's epochs run here.

Read it top to bottom: :func:`train` is the whole run: :func:`start` makes the run's Accelerator
(the device is resolved once); the task's adapter sets up its data and model; :func:`fit` builds
the optimizer over the compiled policy's groups and the warm-up + cosine schedule, maybe resumes,
then for each epoch applies the policy's phase, trains (gradient accumulation, clipping, the EMA of
the weights), validates, verifies that frozen things did not move, decides the kept epoch (the rule
in :mod:`headstart.engine.keep`), logs and checkpoints; at the end the kept weights are back in the model.
The task's :class:`~headstart.engine.adapter.Adapter` supplies batches, loss and validation, then
evaluates on its test split and writes its bundle and run files; :func:`finish` closes the run.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.engine import keep
from headstart.engine.accelerator import make_accelerator, release_group_at_exit, wrap
from headstart.engine.adapter import Adapter, Setup
from headstart.engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, settings_diff
from headstart.engine.config import TrainConfig
from headstart.engine.ema import WeightEMA
from headstart.engine.errors import check_finite
from headstart.engine.guard import FrozenGuard
from headstart.engine.logs import EpochLog, say
from headstart.engine.schedule import make_optimizer, make_scheduler, train_batches
from headstart.io import atomic_write_bytes


@dataclass
class Run:
    """A started run: its config, its Accelerator, and when it started (wall and CPU time)."""

    config: TrainConfig
    accelerator: Any
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def say(self, message: str) -> None:
        """A console line from the main process, unless the run is quiet."""
        if self.main and not self.config.quiet:
            say(message)


def start(config: TrainConfig) -> Run:
    """Start a run: the Accelerator for ``config.device`` and ``config.mixed_precision``."""
    accelerator = make_accelerator(config.device, config.mixed_precision)
    release_group_at_exit(clean=False)  # until this run ends well, a crash leaves the group alone
    return Run(config, accelerator)


def finish(run: Run) -> None:
    """Wait for every process, and let the process group go at exit now that the run ended well."""
    run.accelerator.wait_for_everyone()
    release_group_at_exit(clean=True)


def train(config: TrainConfig, adapter: Adapter) -> Any:
    """Run a task end to end: start, the adapter's setup, the loop, the adapter's conclusion, finish; return the task's result."""
    run = start(config)
    setup = adapter.setup(run)
    state = fit(run, adapter, setup)
    result = adapter.conclude(run, setup, state)
    finish(run)
    line = adapter.closing_line(result, state)
    if line is not None:
        run.say(line)
    return result


def fit(run: Run, adapter: Adapter, setup: Setup) -> dict[str, Any]:
    """Train ``setup.model`` under its compiled policy and return the loop's state; the kept weights end up in the model (eval mode).

    Returns:
        The loop state: ``history`` (one row per epoch), ``best_epoch``, ``best_value``,
        ``stopped_early``, ``stopped_by_budget``, ``start`` (the start candidate's validation) and
        ``setup.extra_state``'s entries (as saved, on resume).

    Raises:
        TrainingDivergedError, OutOfMemoryError, FrozenWeightsChangedError, CheckpointError.
    """
    return _Loop(run, adapter, setup.model, setup.compiled, setup.settings, setup.train_rows).go(setup.extra_state)


def _after_epoch(epoch: int) -> None:
    """Called after each epoch's checkpoint (tests interrupt a run here)."""


class _Loop:
    """One call of :func:`fit`: the optimizer, schedule, EMA and the state they share."""

    def __init__(self, run: Run, adapter: Adapter, model: nn.Module, compiled, settings: dict[str, Any], train_rows: np.ndarray) -> None:
        config = run.config
        self.run, self.config, self.adapter, self.model, self.compiled = run, config, adapter, model, compiled
        self.policy, self.settings, self.train_rows = compiled.policy, settings, train_rows
        self.accelerator, self.out = run.accelerator, config.out
        self.ema = WeightEMA(model, config.ema_decay) if config.ema_decay else None
        self.scored = self.ema.model if self.ema is not None else model  # the weights that are validated, kept and saved
        self.inner = make_optimizer(compiled, config.optimizer, compiled.lr, config.nesterov)
        self.opt = self.accelerator.prepare_optimizer(self.inner)
        n_batches = len(train_batches(train_rows, config.batch_size, config.seed, 0))
        self.scheduler = make_scheduler(self.inner, n_batches, config.accumulation_steps, config.warmup_epochs, config.epochs)
        self.best: dict[str, torch.Tensor] | None = None
        self.state: dict[str, Any] = {}
        self.wall_started = time.perf_counter()  # for max_seconds: this call's training time, resumed or not

    def go(self, extra_state: dict[str, Any]) -> dict[str, Any]:
        config, run = self.config, self.run
        self.state = {
            "epoch": 0, **keep.keep_state(), "history": [], "done": False,
            "stopped_early": False, "stopped_by_budget": False, "cpu_used": 0.0, **extra_state,
        }
        if config.resume:
            self._resume()
        elif run.main and self.out is not None and (self.out / "checkpoints" / "last.pt").is_file():
            run.say(f"{self.out} holds an earlier {self.adapter.name} run: starting a new one there (add --resume to continue the old one instead)")
            shutil.rmtree(self.out / "tensorboard", ignore_errors=True)
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        log = EpochLog(self.out, run.main, config.quiet, self.state["epoch"] if config.resume else None, self.adapter.tensorboard)
        if not config.resume:
            run.say(self.adapter.describe(self.compiled, self.accelerator))
        if run.main and self.out is not None:
            atomic_write_bytes(self.out / "policy.yaml", self.policy.to_yaml().encode())
        if self.adapter.start_candidate and not config.resume and self.adapter.n_val:
            self._start_candidate()
        try:
            self._epochs(log)
        except KeyboardInterrupt:
            if run.main and self.out is not None:
                say(f"interrupted in epoch {self.state['epoch']}; continue with the same command plus --resume (run folder {self.out})")
            raise
        finally:
            log.close()
        self._restore_best()
        self.state["keep_rule"] = keep.summary(self.state, config.keep_within, self.adapter.score_noise, self.adapter.n_val, self.adapter.score_name)
        return self.state

    # ----- resume, start, end -----------------------------------------------------------------

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.out / "checkpoints" / "last.pt")
        differences = settings_diff(checkpoint["settings"], self.settings)
        if differences:
            raise CheckpointError(
                f"The checkpoint in {self.out} comes from a run with other settings: {'; '.join(differences)}. "
                "Resume with the same arguments, or start a new run in another --out folder."
            )
        self.adapter.weights(self.model).load_state_dict(checkpoint["model"])
        if self.ema is not None:
            self.adapter.weights(self.ema.model).load_state_dict(checkpoint["ema"])
        self.inner.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.accelerator.scaler is not None and checkpoint.get("scaler"):
            self.accelerator.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        state = checkpoint["loop"]
        if "best_accuracy" in state:  # fine-tuning checkpoints before the engine named it so
            state["best_value"] = state.pop("best_accuracy")
        self.state = {**self.state, **state}
        self.run.say(f"resuming {self.out} at epoch {self.state['epoch']} (phase {self.policy.phase_at(self.state['epoch'])})")

    def _start_candidate(self) -> None:
        """Validate the starting weights: the first candidate for the kept weights (epoch -1)."""
        score, val = self.adapter.validate(self.model)
        keep.start(self.state, score, self.adapter.score_noise, self.config.keep_within)
        self.state["start"] = val
        self.best = _copy(self.adapter.weights(self.model))
        self.run.say(self.adapter.start_line(val))
        if self.run.main and self.out is not None:
            save_checkpoint(self.out / "checkpoints" / "best.pt", self._checkpoint(0))

    def _restore_best(self) -> None:
        best = self.best
        if best is None and self.out is not None and (self.out / "checkpoints" / "best.pt").is_file():
            saved = load_checkpoint(self.out / "checkpoints" / "best.pt")
            best = saved["ema"] if self.ema is not None else saved["model"]
        if best is not None:
            self.adapter.weights(self.model).load_state_dict(best)
        self.model.eval()

    def _checkpoint(self, phase: int) -> dict[str, Any]:
        """Everything a resumed run needs, as :func:`save_checkpoint` writes it."""
        return {
            "settings": self.settings,
            "model": self.adapter.weights(self.model).state_dict(),
            "ema": self.adapter.weights(self.ema.model).state_dict() if self.ema is not None else None,
            "optimizer": self.inner.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            "rng": rng_state(),
            "policy": self.policy.to_dict(),
            "phase": phase,
            "loop": self.state,
        }

    # ----- epochs -----------------------------------------------------------------------------

    def _epochs(self, log: EpochLog) -> None:
        config, state, adapter = self.config, self.state, self.adapter
        phase, net = None, self.model
        cpu_before, cpu_mark = state["cpu_used"], time.process_time()
        self.wall_started = time.perf_counter()
        while state["epoch"] < config.epochs and not state["done"]:
            epoch = state["epoch"]
            if self.policy.phase_at(epoch) != phase:
                phase = self.policy.phase_at(epoch)
                self.compiled.apply(self.model, epoch)
                net = wrap(self.model, self.accelerator)
            guard = FrozenGuard(self.model, epoch)
            tick, cpu_tick = time.perf_counter(), time.process_time()
            train, steps = self._train_epoch(net, epoch, cpu_before, cpu_mark)
            train_seconds = time.perf_counter() - tick
            score, val = adapter.validate(self.scored)
            guard.check()
            improved = keep.update(state, epoch, score, adapter.score_noise, config.keep_within, bool(adapter.n_val), adapter.ties_to_later)
            if improved:
                self.best = _copy(adapter.weights(self.scored))
            base = {"epoch": epoch, "phase": phase, "trainable_params": self.compiled.summary(epoch)["trainable_params"], "lr": self.scheduler.get_last_lr()[-1]}
            times = {"seconds_train": train_seconds, "seconds": time.perf_counter() - tick, "cpu_seconds": time.process_time() - cpu_tick}
            state["history"].append(adapter.history_row(base, train, val, times, steps, improved))
            state["epoch"] = epoch = epoch + 1
            state["cpu_used"] = cpu_before + time.process_time() - cpu_mark
            if config.patience is not None and adapter.n_val and state["since_best"] >= config.patience and epoch < config.epochs:
                state.update(done=True, stopped_early=True)
            if epoch >= config.epochs or state["stopped_by_budget"]:
                state["done"] = True
            log.epoch(adapter.epoch_line(state["history"][-1], config.epochs, state), state["history"])
            if self.run.main and self.out is not None:
                checkpoint = self._checkpoint(phase)
                # best.pt first: last.pt marks the epoch done, so a kill between the two writes redoes
                # the epoch on resume instead of leaving best.pt one improvement behind.
                if improved:
                    save_checkpoint(self.out / "checkpoints" / "best.pt", checkpoint)
                save_checkpoint(self.out / "checkpoints" / "last.pt", checkpoint)
            if state["stopped_early"]:
                self.run.say(f"early stop: no better validation {self.adapter.score_name} for {config.patience} epochs; keeping epoch {state['best_epoch']}")
            _after_epoch(epoch)

    def _train_epoch(self, net: nn.Module, epoch: int, cpu_before: float, cpu_mark: float) -> tuple[dict[str, Any], int]:
        """Train one epoch; return the adapter's training columns and the number of batches that ran."""
        config, adapter, accelerator = self.config, self.adapter, self.accelerator
        net.train()
        batches = train_batches(self.train_rows, config.batch_size, config.seed, epoch)
        world, steps = accelerator.num_processes, config.accumulation_steps
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        tallies = []
        for index, batch in enumerate(adapter.train_epoch(batches, epoch)):
            group_start = index - index % steps
            in_group = min(steps, len(batches) - group_start)
            last_of_group = index == group_start + in_group - 1
            sync = contextlib.nullcontext() if (last_of_group or world == 1) else net.no_sync()
            try:
                with sync:
                    raw, tally = adapter.loss(net, batch, accelerator.autocast)
                    # DDP averages gradients over processes: scale so that the step sees the mean over the global batch.
                    loss = raw * world / (len(batches[index]) * in_group) if adapter.loss_is_sum else raw
                    accelerator.backward(loss)
            except torch.OutOfMemoryError:
                error = adapter.out_of_memory(net, batch, config.batch_size, world)
                if error is None:
                    raise
                raise error from None
            check_finite(raw, accelerator, epoch, index, self.scheduler.get_last_lr()[-1], self.out, adapter.divergence_hint)
            tallies.append(tally)
            if last_of_group:
                self._step(trainable)
            if config.max_cpu_seconds is not None and cpu_before + time.process_time() - cpu_mark > config.max_cpu_seconds:
                self.state["stopped_by_budget"] = True
                break
            if config.max_seconds is not None and time.perf_counter() - self.wall_started > config.max_seconds:
                self.state["stopped_by_budget"] = True
                break
        return adapter.train_metrics(tallies, accelerator), len(tallies)

    def _step(self, trainable: list[nn.Parameter]) -> None:
        if self.config.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(trainable, self.config.max_grad_norm)
        self.opt.step()
        if not self.opt.step_was_skipped:
            self.scheduler.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)


def _copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
