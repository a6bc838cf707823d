"""``finetune()``: one plain training loop on Hugging Face Accelerate.

Read it top to bottom: set up (data, model, policy, optimizer, schedule), maybe resume, then for
each epoch apply the policy's phase, train, validate, verify that frozen things did not move, log and
checkpoint; finally evaluate the best weights on the test split and save a bundle that
``headstart predict`` uses unchanged.

Accelerate picks the device, starts the process group under ``accelerate launch`` or ``torchrun``
(gloo on CPUs, NCCL on GPUs), runs autocast and the fp16 gradient scaler. The loop wraps the model
in ``DistributedDataParallel`` itself, once per unfreeze phase, because DDP must know which
parameters train.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import dataclasses
import io
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.backbones import Backbone, load_backbone
from headstart.bundles import Bundle
from headstart.data.dataset import Dataset
from headstart.errors import DataError, HeadstartError, require
from headstart.evaluate import EvalResult, evaluate
from headstart.features import FeatureStore
from headstart.io import atomic_write_bytes, atomic_write_json
from headstart.data.augment import AugmentConfig
from headstart.finetune.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, settings_diff
from headstart.finetune.data import IGNORE, Batcher, TextBatcher, split_indices, train_batches
from headstart.finetune.ema import WeightEMA
from headstart.finetune.guard import FrozenGuard
from headstart.models.classifier import FinetuneModel, head_to_probe_state
from headstart.finetune.policy import STRATEGIES, CompiledPolicy, FinetunePolicy, PolicyError, strategy_policy

# Base (head) learning rate of each strategy when --lr is not given.
DEFAULT_LR = {"lp-ft": 1e-4, "linear-then-full": 1e-3, "last-stage": 1e-3, "gradual": 1e-3, "full": 1e-3, "lora": 3e-3, "custom": 1e-3}
PRECISIONS = ("auto", "no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")


class TrainingDivergedError(HeadstartError):
    """The loss became NaN or infinite."""


class OutOfMemoryError(HeadstartError):
    """The GPU ran out of memory; the message suggests a batch size that fits."""


@dataclass
class FinetuneResult:
    """The outcome of :func:`finetune`.

    Attributes:
        backbone: The backbone's name.
        strategy: The strategy (or ``custom`` for a policy file).
        policy: The policy that ran.
        lr: The base (head) learning rate.
        history: One dict per epoch: losses, accuracies, learning rate, phase, seconds.
        best_epoch: The epoch whose weights were kept (best validation accuracy; ties go to the later
            epoch); -1 when LP-FT's starting point (the probe's head on the pretrained backbone) stayed
            strictly better than every epoch.
        stopped_early: Whether early stopping ended the run.
        test: Test metrics of the kept weights (None without a test split, and on processes other than the main one).
        probe_test_accuracy: For ``lp-ft``: the test accuracy of the initial linear probe.
        start: For ``lp-ft``: validation loss and accuracy before fine-tuning (the probe's head).
        bundle: The fine-tuned model as a :class:`Bundle`.
        bundle_path: Where the bundle was saved (None without ``out``).
        out: The run directory.
        seconds: Wall time of the call.
        processes: Number of processes that trained (``accelerate launch`` / ``torchrun``).
        device: The device each process trained on.
        mixed_precision: The precision used (``no``, ``bf16``, ``fp16``).
        model: The fine-tuned model (best weights, eval mode, on the CPU).
    """

    backbone: str
    strategy: str
    policy: FinetunePolicy
    lr: float
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    test: EvalResult | None
    probe_test_accuracy: float | None
    start: dict[str, float] | None
    bundle: Bundle = field(repr=False)
    bundle_path: Path | None
    out: Path | None
    seconds: float
    processes: int
    device: str
    mixed_precision: str
    model: FinetuneModel = field(repr=False)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of an epoch (training and validation)."""
        times = [row["seconds"] for row in self.history]
        return float(np.mean(times)) if times else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "strategy": self.strategy,
            "policy": self.policy.to_dict(),
            "lr": self.lr,
            "best_epoch": self.best_epoch,
            "start": self.start,
            "stopped_early": self.stopped_early,
            "test": self.test.to_dict() if self.test else None,
            "test_accuracy": self.test.accuracy if self.test else None,
            "probe_test_accuracy": self.probe_test_accuracy,
            "seconds": round(self.seconds, 2),
            "seconds_per_epoch": round(self.seconds_per_epoch, 2),
            "processes": self.processes,
            "device": self.device,
            "mixed_precision": self.mixed_precision,
            "history": self.history,
            "bundle": str(self.bundle_path) if self.bundle_path else None,
            "out": str(self.out) if self.out else None,
        }


def finetune(
    data: Dataset | str,
    backbone: Backbone | str,
    *,
    strategy: str | None = None,
    policy: FinetunePolicy | str | Path | None = None,
    epochs: int = 10,
    lr: float | None = None,
    batch_size: int = 32,
    accumulation_steps: int = 1,
    optimizer: str = "adamw",
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.1,
    max_grad_norm: float | None = 1.0,
    ema_decay: float | None = None,
    patience: int | None = 5,
    val_fraction: float = 0.1,
    crop_scale: tuple[float, float] = (0.35, 1.0),
    randaugment: bool = False,
    mixed_precision: str = "auto",
    per_class: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    store: FeatureStore | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_targets: tuple[str, ...] = ("query", "value"),
    quiet: bool = False,
) -> FinetuneResult:
    """Fine-tune a backbone with a new linear head, and return (and save) the best model as a bundle.

    Args:
        data: A :class:`Dataset`, or a source for :func:`headstart.load_data` (``builtin:animal-mnist``,
            a folder, a manifest).
        backbone: A backbone name (``tv:mobilenet_v2.IMAGENET1K_V1``) or a loaded :class:`Backbone`
            (trained in place).
        strategy: ``lp-ft`` (the default), ``linear-then-full``, ``last-stage``, ``gradual`` or
            ``full``; see :func:`headstart.finetune.strategy_policy`.
        policy: A :class:`FinetunePolicy` or a YAML file of one, instead of a strategy.
        epochs: Most epochs to train.
        lr: The head's learning rate (other groups scale it by the policy); None takes the
            strategy's default (1e-4 for lp-ft, 3e-3 for lora, 1e-3 otherwise).
        batch_size: Global batch size per step, split across processes.
        accumulation_steps: Batches per optimizer step (the effective batch is their product).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        warmup_epochs: Linear warm-up length before the cosine decay, in epochs.
        label_smoothing: Label smoothing of the cross-entropy loss.
        max_grad_norm: Clip the gradient norm to this; None turns clipping off.
        ema_decay: Validate, keep and save an exponential moving average of the weights, with this
            decay per optimizer step (0.99 averages over about 100 steps); None or 0 turns it off. It
            smooths AdamW's noisy first steps (a 2-epoch LP-FT on Animal-MNIST: 0.850 test accuracy
            without, 0.900 with 0.99), but lags behind in longer runs (5 epochs: 0.912 with, 0.934 without).
        patience: Stop after this many epochs without a better validation accuracy; None never stops early.
        val_fraction: Share of each class held out for validation when the data has no ``val`` split.
        crop_scale: Area range of the random resized crop.
        randaugment: Add RandAugment to the training augmentations.
        mixed_precision: ``auto`` (bf16 on GPUs that have it, else fp16; none on CPUs), ``no``, ``bf16`` or ``fp16``.
        per_class: With a source string: keep at most this many training items per class.
        image_size: Input size in pixels (overrides the backbone's).
        seed: Seed for the split, the head, the shuffles and the augmentations.
        out: Run directory for checkpoints, logs (CSV, TensorBoard), metrics and the bundle. None
            keeps everything in memory (and nothing to resume from).
        resume: Continue the run in ``out`` from its last checkpoint.
        store: Feature store for the LP-FT probe's features (default: ``$HEADSTART_CACHE``).
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader workers for image files; None picks up to 8.
        lora_rank: With ``strategy="lora"``: the adapters' rank.
        lora_alpha: With ``strategy="lora"``: the adapters' scaling numerator (updates scale by alpha / rank).
        lora_targets: With ``strategy="lora"``: module name suffixes of the linear layers to adapt.
        quiet: No per-epoch lines on the console.

    Returns:
        A :class:`FinetuneResult`; ``result.bundle`` predicts like any bundle.

    Raises:
        PolicyError: The policy does not fit the model (a pattern that matches nothing, nothing trainable).
        TrainingDivergedError: The loss became NaN or infinite (the last good checkpoint is kept).
        OutOfMemoryError: The GPU ran out of memory (the message suggests a batch size).
        FrozenWeightsChangedError: A frozen weight or BatchNorm statistic changed.
        CheckpointError: ``resume`` without a checkpoint, or with different settings.
    """
    started = time.perf_counter()
    _check_arguments(epochs, lr, batch_size, accumulation_steps, optimizer, warmup_epochs, label_smoothing, patience, val_fraction, mixed_precision, resume, out)
    accelerator = _make_accelerator(device, mixed_precision)
    release_group_at_exit(clean=False)  # until this run ends well, a crash leaves the group alone
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    out = Path(out) if out is not None else None

    # ----- data, backbone, policy -------------------------------------------------------------
    data = _load_data(data, per_class, seed)
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    backbone.spec = backbone.spec.with_input_size(image_size)
    spec = backbone.spec
    policy = _resolve_policy(strategy, policy, spec, epochs)
    if strategy == "lora":
        policy = dataclasses.replace(policy, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=tuple(lora_targets))
    lr = DEFAULT_LR.get(policy.strategy, 1e-3) if lr is None else float(lr)
    ema_decay = float(ema_decay) if ema_decay else None
    train_rows, val_rows, test_rows = split_indices(data, val_fraction, seed)
    if main and not quiet and 0 < len(val_rows) < SMALL_VALIDATION:
        _err(
            f"note: the validation split has {len(val_rows)} items, so one item moves its accuracy by {100 / len(val_rows):.1f} points "
            "and the kept epoch is a noisy choice. With little data, --val-fraction 0 trains on everything for a fixed --epochs "
            "and keeps the last epoch."
        )
    augment = AugmentConfig(scale=tuple(crop_scale), randaugment=randaugment)
    settings = {  # what must match for --resume to continue the same run
        "backbone": spec.name,
        "weights_sha256": spec.sha256,
        "image_size": spec.input_size,
        "data": data.fingerprint(),
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "policy": policy.to_dict(),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "accumulation_steps": accumulation_steps,
        "optimizer": optimizer,
        "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing,
        "max_grad_norm": max_grad_norm,
        "ema_decay": ema_decay,
        "augment": [list(augment.scale), list(augment.ratio), augment.flip, augment.randaugment],
        "mixed_precision": accelerator.mixed_precision,
        "seed": seed,
    }

    # ----- model and head ---------------------------------------------------------------------
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    model = FinetuneModel(backbone, len(data.classes))
    probe_test_accuracy = probe_store_key = None
    if policy.head_init == "probe" and not resume:
        probe_test_accuracy, probe_store_key = _init_head_from_probe(model, data, train_rows, test_rows, store, seed, accelerator, quiet)
    elif policy.head_init == "zeros":
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
    compiled = policy.compile(model, lr)
    model.to(accelerator.device).to(memory_format=torch.channels_last)
    if policy.head_init == "probe" and not resume:
        _broadcast_from_main(model, accelerator)  # only the main process fitted the probe
    ema = WeightEMA(model, ema_decay) if ema_decay else None
    scored = ema.model if ema is not None else model  # the weights that are validated, kept and saved

    # ----- optimizer and schedule -------------------------------------------------------------
    groups = compiled.optimizer_groups()
    for group in groups:
        group.pop("names")
    if optimizer == "adamw":
        inner = torch.optim.AdamW(groups, lr=lr, weight_decay=policy.weight_decay)
    else:
        inner = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=policy.weight_decay)
    opt = accelerator.prepare_optimizer(inner)
    n_batches = len(train_batches(train_rows, batch_size, seed, 0))
    steps_per_epoch = math.ceil(n_batches / accumulation_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(inner, _warmup_cosine(round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch))

    # ----- resume -----------------------------------------------------------------------------
    state = {  # the loop's own state, saved in every checkpoint
        "epoch": 0,
        "best_epoch": -1,
        "best_accuracy": None,
        "since_best": 0,
        "history": [],
        "done": False,
        "stopped_early": False,
        "probe_test_accuracy": probe_test_accuracy,
        "probe_store_key": probe_store_key,
    }
    if resume:
        checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
        differences = settings_diff(checkpoint["settings"], settings)
        if differences:
            raise CheckpointError(
                f"The checkpoint in {out} comes from a run with other settings: {'; '.join(differences)}. "
                "Resume with the same arguments, or start a new run in another --out folder."
            )
        model.load_state_dict(checkpoint["model"])
        if ema is not None:
            ema.model.load_state_dict(checkpoint["ema"])
        inner.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if accelerator.scaler is not None and checkpoint.get("scaler"):
            accelerator.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        state = checkpoint["loop"]
        probe_test_accuracy = state.get("probe_test_accuracy")
        probe_store_key = state.get("probe_store_key")
        if main and not quiet:
            _err(f"resuming {out} at epoch {state['epoch']} (phase {policy.phase_at(state['epoch'])})")

    if main and out is not None and not resume and (out / "checkpoints" / "last.pt").is_file():
        if not quiet:
            _err(f"{out} holds an earlier fine-tuning run: starting a new one there (add --resume to continue the old one instead)")
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    logger = _Logger(out, main, quiet, resumed_epoch=state["epoch"] if resume else None)
    if main and not quiet and not resume:
        summary = compiled.summary(0)
        _err(
            f"fine-tune {spec.name} ({policy.strategy}){f' at {spec.input_size} px' if spec.modality == 'image' else ''} on {accelerator.device} x{world}, "
            f"{len(train_rows)} train / {len(val_rows)} val, {summary['trainable_params']:,} of {summary['total_params']:,} "
            f"parameters train in epoch 0, precision {accelerator.mixed_precision}, lr {lr:g}"
        )
    if main and out is not None:
        atomic_write_bytes(out / "policy.yaml", policy.to_yaml().encode())

    # ----- the loop ---------------------------------------------------------------------------
    if data.modality == "text":
        batcher = TextBatcher(data, backbone.model, rank, world, accelerator.device)
    else:
        batcher = Batcher(data, spec, augment, seed, rank, world, accelerator.device, _workers(num_workers, data))
    best_state = None
    phase = policy.phase_at(state["epoch"]) if resume else 0
    if policy.head_init == "probe" and not resume and len(val_rows):
        # LP-FT starts from the probe: its weights are the first candidate for the kept weights
        # (epoch -1), so fine-tuning replaces them only once it scores at least as well on validation.
        start_loss, start_acc = _validate(model, accelerator, batcher, val_rows, batch_size)
        state.update(best_accuracy=start_acc, best_epoch=-1, start={"val_loss": start_loss, "val_accuracy": start_acc})
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if main and not quiet:
            _err(f"start (the probe's head): val loss {start_loss:.4f} acc {start_acc:.3f}")
        if main and out is not None:
            save_checkpoint(out / "checkpoints" / "best.pt", _checkpoint(settings, model, ema, inner, scheduler, accelerator, policy, phase, state))
    phase = None
    net = model
    epoch = state["epoch"]
    try:
        while epoch < epochs and not state["done"]:
            if policy.phase_at(epoch) != phase:
                phase = policy.phase_at(epoch)
                compiled.apply(model, epoch)
                net = _wrap(model, accelerator)
            guard = FrozenGuard(model, epoch)
            tick = time.perf_counter()
            cpu_tick = time.process_time()
            train_loss, train_acc = _train_epoch(
                net, model, compiled, opt, scheduler, accelerator, batcher, train_rows, epoch, batch_size,
                accumulation_steps, label_smoothing, max_grad_norm, seed, out, ema,
            )
            train_seconds = time.perf_counter() - tick
            val_loss, val_acc = _validate(scored, accelerator, batcher, val_rows, batch_size) if len(val_rows) else (None, None)
            guard.check()
            # The best epoch has the highest validation accuracy; a tie goes to the later epoch (with label
            # smoothing, validation cross-entropy rises as training goes on, so it would favour early epochs).
            improved = val_acc is None or state["best_accuracy"] is None or val_acc >= state["best_accuracy"]
            if improved:
                state.update(best_accuracy=val_acc, best_epoch=epoch, since_best=0)
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
            else:
                state["since_best"] += 1
            row = {
                "epoch": epoch,
                "phase": phase,
                "trainable_params": compiled.summary(epoch)["trainable_params"],
                "lr": scheduler.get_last_lr()[-1],
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds_train": round(train_seconds, 3),
                "seconds": round(time.perf_counter() - tick, 3),
                "cpu_seconds": round(time.process_time() - cpu_tick, 3),
                "best": improved,
            }
            state["history"].append(row)
            epoch += 1
            state["epoch"] = epoch
            if patience is not None and len(val_rows) and state["since_best"] >= patience and epoch < epochs:
                state.update(done=True, stopped_early=True)
            if epoch >= epochs:
                state["done"] = True
            logger.epoch(row, epochs)
            if main and out is not None:
                checkpoint = _checkpoint(settings, model, ema, inner, scheduler, accelerator, policy, phase, state)
                save_checkpoint(out / "checkpoints" / "last.pt", checkpoint)
                if improved:
                    save_checkpoint(out / "checkpoints" / "best.pt", checkpoint)
            if state["stopped_early"] and main and not quiet:
                _err(f"early stop: no better validation accuracy for {patience} epochs; keeping epoch {state['best_epoch']}")
    except KeyboardInterrupt:
        if main and out is not None:
            _err(f"interrupted in epoch {epoch}; continue with the same command plus --resume (run folder {out})")
        raise
    finally:
        logger.close()

    # ----- the kept weights, test metrics and bundle ------------------------------------------
    if best_state is None and out is not None and (out / "checkpoints" / "best.pt").is_file():
        best = load_checkpoint(out / "checkpoints" / "best.pt")
        best_state = best["ema"] if ema is not None else best["model"]
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    test = _test_metrics(model, accelerator, batcher, data, test_rows, batch_size) if len(test_rows) else None
    arrays, meta = head_to_probe_state(model.head)
    from headstart.heads import head_from_state

    metrics = {"test": test.to_dict() if test else None, "history": state["history"], "best_epoch": state["best_epoch"]}
    model.to("cpu")
    bundle = Bundle(
        spec=spec, head=head_from_state(arrays, meta), classes=list(data.classes), metrics=metrics,
        manifest={"seed": seed, "data_fingerprint": settings["data"], "data_source": data.source, "finetune": {**settings, "strategy": policy.strategy}},
        backbone=backbone, finetuned=not _adapters_only(compiled),
    )
    result = FinetuneResult(
        backbone=spec.name, strategy=policy.strategy, policy=policy, lr=lr, history=state["history"], best_epoch=state["best_epoch"],
        stopped_early=state["stopped_early"], test=test, probe_test_accuracy=probe_test_accuracy, start=state.get("start"), bundle=bundle, bundle_path=None,
        out=out, seconds=time.perf_counter() - started, processes=world, device=str(accelerator.device),
        mixed_precision=accelerator.mixed_precision, model=model,
    )
    if main and out is not None:
        result.bundle_path = bundle.save(out / "bundle")
        atomic_write_json(out / "metrics.json", result.to_dict())
        _write_run_files(out, result, settings, data, probe_store_key, resume)
    accelerator.wait_for_everyone()
    release_group_at_exit(clean=True)
    if main and not quiet:
        tail = f"; probe {probe_test_accuracy:.3f}" if probe_test_accuracy is not None else ""
        score = f"test accuracy {test.accuracy:.3f}" if test else "no test split"
        kept = f"kept epoch {state['best_epoch']}" if state["best_epoch"] >= 0 else "kept the probe's weights (every epoch scored lower on validation)"
        _err(f"{kept}: {score}{tail}" + (f"; bundle {result.bundle_path}" if result.bundle_path else ""))
    return result


def _write_run_files(out: Path, result: FinetuneResult, settings: dict[str, Any], data: Dataset, probe_store_key: str | None, resumed: bool) -> None:
    """``manifest.json`` and ``report.html`` of a finished run (main process only)."""
    from headstart.report import write_report_or_warn
    from headstart.runs import write_manifest

    write_manifest(
        out,
        seed=settings["seed"],
        device=result.device,
        processes=result.processes,
        mixed_precision=result.mixed_precision,
        backbone=result.backbone,
        weights_sha256=settings["weights_sha256"],
        image_size=settings["image_size"],
        data_source=data.source,
        data_fingerprint=settings["data"],
        strategy=result.strategy,
        epochs=settings["epochs"],
        lr=result.lr,
        batch_size=settings["batch_size"],
        probe_store_key=probe_store_key,
        resumed=resumed,
        wall_seconds=round(result.seconds, 2),
        seconds_per_epoch=round(result.seconds_per_epoch, 2),
    )
    write_report_or_warn(out)


# ----- set-up helpers -----------------------------------------------------------------------------

def _checkpoint(settings, model, ema, optimizer, scheduler, accelerator, policy, phase, state) -> dict[str, Any]:
    """Everything a resumed run needs, as :func:`save_checkpoint` writes it."""
    return {
        "settings": settings,
        "model": model.state_dict(),
        "ema": ema.model.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "rng": rng_state(),
        "policy": policy.to_dict(),
        "phase": phase,
        "loop": state,
    }


def _check_arguments(epochs, lr, batch_size, accumulation_steps, optimizer, warmup_epochs, label_smoothing, patience, val_fraction, mixed_precision, resume, out) -> None:
    def positive_int(value, name):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")

    positive_int(epochs, "epochs")
    positive_int(batch_size, "batch_size")
    positive_int(accumulation_steps, "accumulation_steps")
    if patience is not None:
        positive_int(patience, "patience")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}; 1e-3 for a head, 1e-4 for a whole network are common.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}.")
    if not 0 <= warmup_epochs:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}.")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {mixed_precision!r}.")
    if resume and out is None:
        raise CheckpointError("resume needs the run folder: pass out (--out DIR) of the run to continue.")


_GROUP_AT_EXIT = {"registered": False, "clean": False}
SMALL_VALIDATION = 100  # fewer validation items than this get a note that the epoch choice is noisy


def release_group_at_exit(clean: bool) -> None:
    """Destroy the torch.distributed process group when the interpreter exits, if the last run ended well.

    A process that exits with a gloo group still alive can abort in interpreter finalization
    (SIGABRT, "terminate called without an active exception": gloo's threads outlive Python; see
    pytorch/pytorch#190489), which turns a finished ``torchrun`` job into a failed one. After a run
    that failed, the group is left alone: destroying it while other ranks wait in a collective can
    hang. No-op without an initialized group.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    _GROUP_AT_EXIT["clean"] = clean
    if not _GROUP_AT_EXIT["registered"]:
        atexit.register(_destroy_group_if_clean)
        _GROUP_AT_EXIT["registered"] = True


def _destroy_group_if_clean() -> None:
    import torch.distributed as dist

    if _GROUP_AT_EXIT["clean"] and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _make_accelerator(device: str, mixed_precision: str):
    """An Accelerator for this run; ``auto`` precision is bf16 (or fp16) on GPUs and none on CPUs."""
    require("accelerate", "finetune")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but torch sees no CUDA device. Use device='auto' or 'cpu'.")
    if mixed_precision == "auto":
        mixed_precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    try:
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    except ValueError:
        # Accelerate keeps one state per process; a second run in the same (single) process may
        # ask for another precision or device, so start that state afresh.
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def _load_data(data: Dataset | str, per_class: int | None, seed: int) -> Dataset:
    if isinstance(data, (str, Path)):
        from headstart.data import load_data

        data = load_data(str(data), per_class=per_class, seed=seed)
    elif per_class is not None:
        raise ValueError("per_class applies when data is a source string; subsample a Dataset with load_data(..., per_class=N).")
    if data.modality not in ("image", "text"):
        raise DataError(f"{data.source} is {data.modality} data; fine-tuning supports image and text classification.")
    if data.multilabel:
        raise DataError(f"{data.source} is multi-label; fine-tuning supports single-label classification. Probe it with headstart probe.")
    return data


def _resolve_policy(strategy: str | None, policy: FinetunePolicy | str | Path | None, spec, epochs: int) -> FinetunePolicy:
    if policy is not None and strategy is not None:
        raise PolicyError(f"Give a strategy ({strategy!r}) or a policy, not both: a policy file states the whole plan.")
    if policy is None:
        return strategy_policy(strategy or "lp-ft", spec, epochs)
    if isinstance(policy, (str, Path)):
        return FinetunePolicy.load(policy)
    if not isinstance(policy, FinetunePolicy):
        raise TypeError(f"policy must be a FinetunePolicy or a YAML path, got {type(policy).__name__}.")
    return policy


def _init_head_from_probe(model, data, train_rows, test_rows, store, seed, accelerator, quiet) -> tuple[float | None, str | None]:
    """Fit a LinearProbe on the store's features of the training rows and copy it into the head.

    Only the main process extracts and fits: the others keep their head, which DistributedDataParallel
    overwrites with the main process's weights when it wraps the model. Returns the probe's test
    accuracy (None without a test split) and the features' store key (both None on the other processes).
    """
    from headstart.features import extract
    from headstart.heads import LinearProbe

    if not accelerator.is_main_process:
        return None, None
    backbone = model.backbone
    features = extract(backbone, data, image_size=backbone.spec.input_size, store=store, quiet=quiet)
    rows = train_rows[features.valid[train_rows]]
    probe = LinearProbe(random_state=seed, device="cpu").fit(features.X[rows], data.labels[rows])
    model.init_head_from_probe(probe)
    backbone.eval()
    if not len(test_rows):
        return None, features.key
    rows = test_rows[features.valid[test_rows]]
    return float(np.mean(probe.predict(features.X[rows]) == data.labels[rows])), features.key


def _adapters_only(compiled: CompiledPolicy) -> bool:
    """Whether the only backbone parameters that ever train are LoRA adapters (the pretrained weights stay as loaded)."""
    from headstart.backbones.lora import lora_settings

    if lora_settings(compiled.model.backbone.model) is None:
        return False
    trained = [name for name in compiled.ever_trainable() if name not in compiled.head_names]
    return all(".lora_" in name for name in trained)


def _warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _workers(num_workers: int | None, data: Dataset) -> int:
    if data.in_memory:
        return 0
    return max(0, min(8, os.cpu_count() or 1)) if num_workers is None else num_workers


def _broadcast_from_main(model: FinetuneModel, accelerator) -> None:
    """Copy the main process's parameters and buffers to the other processes (no-op on one)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def _wrap(model: FinetuneModel, accelerator):
    """The model, in DistributedDataParallel when there are several processes (once per phase)."""
    if accelerator.num_processes == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [accelerator.local_process_index] if accelerator.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ----- one epoch -----------------------------------------------------------------------------------

def _train_epoch(net, model, compiled: CompiledPolicy, opt, scheduler, accelerator, batcher: Batcher, train_rows, epoch, batch_size,
                 accumulation_steps, label_smoothing, max_grad_norm, seed, out, ema: WeightEMA | None) -> tuple[float, float]:
    """Train one epoch; return the mean training loss and accuracy over all processes."""
    net.train()
    batches = train_batches(train_rows, batch_size, seed, epoch)
    world = accelerator.num_processes
    trainable = [p for p in model.parameters() if p.requires_grad]
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, correct, count
    for index, (x, y) in enumerate(batcher.train_epoch(batches, epoch)):
        group_start = index - index % accumulation_steps
        in_group = min(accumulation_steps, len(batches) - group_start)
        last_of_group = index == group_start + in_group - 1
        sync = contextlib.nullcontext() if (last_of_group or world == 1) else net.no_sync()
        try:
            with sync:
                with accelerator.autocast():
                    logits = net(x)
                loss_sum = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing, ignore_index=IGNORE)
                # DDP averages gradients over processes: scale so that the step sees the mean over the global batch.
                loss = loss_sum * world / (len(batches[index]) * in_group)
                accelerator.backward(loss)
        except torch.OutOfMemoryError:
            raise _out_of_memory(net, x, y, batch_size, world) from None
        _check_finite(loss_sum, accelerator, epoch, index, scheduler, out)
        with torch.no_grad():
            valid = y != IGNORE
            totals += torch.stack([loss_sum.detach().double(), (logits.argmax(1) == y)[valid].sum().double(), valid.sum().double()])
        if last_of_group:
            if max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, max_grad_norm)
            opt.step()
            if not opt.step_was_skipped:
                scheduler.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
    totals = accelerator.reduce(totals, reduction="sum") if world > 1 else totals
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def _check_finite(loss_sum: torch.Tensor, accelerator, epoch: int, index: int, scheduler, out) -> None:
    finite = torch.isfinite(loss_sum.detach()).to(torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    if bool(finite.item() == 1.0):
        return
    kept = out / "checkpoints" / "last.pt" if out is not None else None
    where = f"the last good checkpoint is kept: {kept}" if kept is not None and kept.is_file() else "no checkpoint was written yet"
    raise TrainingDivergedError(
        f"The training loss became {loss_sum.item()} in epoch {epoch}, batch {index}, at learning rate "
        f"{scheduler.get_last_lr()[-1]:.3g}; {where}. Lower --lr (for example by 10x), turn mixed precision off "
        "(--mixed-precision no), or keep --max-grad-norm on."
    )


def _out_of_memory(net, x, y, batch_size: int, world: int) -> OutOfMemoryError:
    """Find the largest halving of the batch that fits on this GPU, and say so."""

    def fits(size: int) -> bool:
        try:
            net.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            F.cross_entropy(net(x[:size]).float(), y[:size]).backward()
            net.zero_grad(set_to_none=True)
            return True
        except torch.OutOfMemoryError:
            return False

    local = len(x)
    suggestion = suggest_batch_size(local, fits)
    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    memory = f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free now)" if total else ""
    if suggestion is None:
        return OutOfMemoryError(f"The GPU ran out of memory even with one image per process{memory}. Use a smaller --image-size or a smaller backbone.")
    global_size = suggestion * world
    steps = max(1, batch_size // global_size)
    return OutOfMemoryError(
        f"The GPU ran out of memory at --batch-size {batch_size}{memory}; {global_size} fits. Rerun with --batch-size {global_size}"
        + (f" --accumulation-steps {steps} to keep the effective batch of {global_size * steps}." if steps > 1 else ".")
    )


def suggest_batch_size(batch_size: int, fits) -> int | None:
    """The largest of ``batch_size / 2, / 4, ...`` for which ``fits(size)`` is True, or None."""
    size = batch_size // 2
    while size >= 1:
        if fits(size):
            return size
        size //= 2
    return None


@torch.no_grad()
def _predict(model: FinetuneModel, accelerator, batcher: Batcher, rows: np.ndarray, batch_size: int):
    """This process's logits (float32, CPU) and rows, in eval mode."""
    was_training = model.training
    model.eval()
    logits, order, labels = [], [], []
    for x, y, chunk in batcher.eval_batches(rows, batch_size):
        with accelerator.autocast():
            logits.append(model(x).float().cpu())
        order.append(chunk)
        labels.append(y.cpu())
    model.train(was_training)
    if not logits:
        return torch.zeros(0, model.head.out_features), np.zeros(0, np.int64), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), np.concatenate(order), torch.cat(labels)


def _validate(model, accelerator, batcher, rows, batch_size) -> tuple[float, float]:
    """Validation loss (plain cross-entropy) and accuracy over all processes."""
    logits, _, labels = _predict(model, accelerator, batcher, rows, batch_size)
    valid = labels != IGNORE
    loss = F.cross_entropy(logits[valid], labels[valid], reduction="sum") if valid.any() else torch.tensor(0.0)
    totals = torch.tensor([float(loss), float((logits.argmax(1) == labels)[valid].sum()), float(valid.sum())], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def _test_metrics(model, accelerator, batcher, data: Dataset, rows, batch_size) -> EvalResult | None:
    """Test metrics of ``model`` (on the main process; None elsewhere)."""
    logits, order, labels = _predict(model, accelerator, batcher, rows, batch_size)
    proba = torch.softmax(logits.double(), dim=1).numpy()
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(proba, order, labels.numpy())])
        proba = np.concatenate([p for p, _, _ in parts])
        order = np.concatenate([o for _, o, _ in parts])
        labels = torch.as_tensor(np.concatenate([l for _, _, l in parts]))
    if not accelerator.is_main_process:
        return None
    valid = (labels != IGNORE).numpy()
    names = np.array(data.classes, dtype=object)
    return evaluate(names[data.labels[order[valid]]], proba[valid], list(data.classes), split="test")


# ----- logs ----------------------------------------------------------------------------------------

def _err(message: str) -> None:
    from headstart.console import err_console

    err_console.print(message, highlight=False, soft_wrap=True)


class _Logger:
    """Per-epoch logs: a console line (rich), ``metrics.csv`` and TensorBoard events in the run directory."""

    COLUMNS = (
        "epoch", "phase", "trainable_params", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
        "seconds_train", "seconds", "cpu_seconds", "best",
    )

    def __init__(self, out: Path | None, main: bool, quiet: bool, resumed_epoch: int | None) -> None:
        self.out = out if main else None
        self.quiet = quiet or not main
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        if self.out is None:
            return
        if resumed_epoch is not None and (self.out / "metrics.csv").is_file():
            with open(self.out / "metrics.csv", newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) < resumed_epoch]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=resumed_epoch)
        except ImportError:
            _err("tensorboard is not installed, so no TensorBoard logs: pip install 'headstart[finetune]'")

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        if not self.quiet:
            val = f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}" if row["val_loss"] is not None else "no val split"
            star = " [bold green]best[/]" if row["best"] else ""
            from headstart.console import err_console

            err_console.print(
                f"epoch {row['epoch']} [{row['epoch'] + 1}/{epochs}] phase {row['phase']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
                f"{val} | lr {row['lr']:.2e} | {row['seconds']:.1f} s{star}",
                highlight=False,
            )
        if self.out is None:
            return
        self.rows.append(row)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.out / "metrics.csv", buffer.getvalue().encode())
        if self.writer is not None:
            step = row["epoch"]
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "trainable_params", "seconds"):
                if row[key] is not None:
                    group = key.split("_", 1)[0] if key.startswith(("train", "val")) else "run"
                    self.writer.add_scalar(f"{group}/{key.split('_', 1)[-1] if group != 'run' else key}", row[key], step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = ["DEFAULT_LR", "STRATEGIES", "FinetuneResult", "OutOfMemoryError", "TrainingDivergedError", "finetune", "suggest_batch_size"]
