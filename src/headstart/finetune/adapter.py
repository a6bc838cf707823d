"""Classification over the engine: set-up, batches of images or texts, label-smoothed cross-entropy, accuracy, the bundle.

:class:`ClassificationAdapter` is what :func:`headstart.finetune.finetune` hands
:func:`headstart.engine.train`; the helpers below it fit LP-FT's starting head and score the kept
weights on the test split.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.backbones import Backbone, load_backbone
from headstart.bundles import Bundle
from headstart.data.augment import AugmentConfig
from headstart.data.dataset import Dataset
from headstart.engine import Adapter, Setup
from headstart.engine.accelerator import broadcast_from_main
from headstart.engine.errors import out_of_memory_error
from headstart.engine.keep import binomial_se
from headstart.engine.policy import DEFAULT_LR, CompiledPolicy, FinetunePolicy, resolve_policy
from headstart.evaluate import EvalResult, evaluate
from headstart.evaluate.calibration import Calibration
from headstart.finetune.calibrate import fit_calibration, gather_logits, predict_logits
from headstart.finetune.data import IGNORE, Batcher, TextBatcher, load_classification_data, split_indices
from headstart.finetune.result import FinetuneResult, save_run
from headstart.models.classifier import FinetuneModel, head_to_probe_state

SMALL_VALIDATION = 100  # fewer validation items than this get a note that the epoch choice is noisy


class ClassificationAdapter(Adapter):
    """Single-label image or text classification: what :func:`finetune` trains.

    Args:
        data: A :class:`Dataset` or a source string.
        backbone: A backbone name or a loaded :class:`Backbone` (its network trains in place; its
            spec is left alone: the run works on a copy).
        per_class: With a source string: keep at most this many training items per class.
        image_size: Input size in pixels (overrides the backbone's).
        store: Feature store for the LP-FT probe's features.
        label_smoothing: Label smoothing of the training loss.
        augment: Training augmentations.
        lora: ``lora_rank``, ``lora_alpha``, ``lora_targets`` for ``strategy="lora"``.
        calibrate: After training, fit a temperature on the validation split (:mod:`headstart.finetune.calibrate`).
        prior: ``data`` (correct to the training split's class frequencies before ``per_class``) or ``uniform``.
    """

    name = "fine-tuning"
    score_name = "accuracy"
    loss_is_sum = True
    ties_to_later = True  # with label smoothing, validation cross-entropy rises as training goes on, so accuracy decides
    tensorboard = True
    divergence_hint = "Lower --lr (for example by 10x), turn mixed precision off (--mixed-precision no), or keep --max-grad-norm on."

    def __init__(self, data: Dataset | str, backbone: Backbone | str, *, per_class: int | None, image_size: int | None, store,
                 label_smoothing: float, augment: AugmentConfig, lora: dict[str, Any], calibrate: bool = True, prior: str = "data") -> None:
        self.source, self.backbone_source = data, backbone
        self.calibrate, self.prior = calibrate, prior
        self.per_class, self.image_size, self.store = per_class, image_size, store
        self.label_smoothing, self.augment, self.lora = label_smoothing, augment, lora

    # ----- set-up ---------------------------------------------------------------------------------

    def setup(self, run) -> Setup:
        config = self.config = run.config
        self.accelerator = run.accelerator
        data = self.data = load_classification_data(self.source, self.per_class, config.seed)
        source = self.backbone_source
        backbone = self.backbone = load_backbone(source) if isinstance(source, str) else copy.copy(source)  # the caller's spec keeps its size
        backbone.spec = self.spec = backbone.spec.with_input_size(self.image_size)
        policy = resolve_policy(self.spec, config.epochs, strategy=config.strategy, policy=config.policy, **self.lora)
        self.lr = DEFAULT_LR.get(policy.strategy, 1e-3) if config.lr is None else float(config.lr)
        self.rows = split_indices(data, config.val_fraction, config.seed)
        self.val_rows, self.n_val, self.n_train = self.rows[1], len(self.rows[1]), len(self.rows[0])
        if 0 < self.n_val < SMALL_VALIDATION:
            run.say(
                f"note: the validation split has {self.n_val} items, so one item moves its accuracy by {100 / self.n_val:.1f} points "
                "and the kept epoch is a noisy choice. With little data, --val-fraction 0 trains on everything for a fixed --epochs "
                "and keeps the last epoch."
            )
        settings = self._settings(policy, run.accelerator.mixed_precision)
        model, compiled, probe = self._model(run, policy)
        self.start_candidate = policy.head_init == "probe"
        self.batcher = self._batcher(run)
        return Setup(model, compiled, settings, self.rows[0], {"probe_test_accuracy": probe[0], "probe_store_key": probe[1]})

    def _settings(self, policy: FinetunePolicy, precision: str) -> dict[str, Any]:
        """What must match for ``resume`` to continue the same run."""
        config, spec, augment = self.config, self.spec, self.augment
        return {
            "backbone": spec.name, "weights_sha256": spec.sha256, "image_size": spec.input_size, "data": self.data.fingerprint(),
            "n_train": self.n_train, "n_val": self.n_val, "policy": policy.to_dict(), "epochs": config.epochs, "lr": self.lr,
            "batch_size": config.batch_size, "accumulation_steps": config.accumulation_steps, "optimizer": config.optimizer,
            "warmup_epochs": config.warmup_epochs, "label_smoothing": self.label_smoothing, "max_grad_norm": config.max_grad_norm,
            "ema_decay": config.ema_decay, "augment": [list(augment.scale), list(augment.ratio), augment.flip, augment.randaugment],
            "mixed_precision": precision, "seed": config.seed, "keep_within": config.keep_within,
        }

    def _model(self, run, policy: FinetunePolicy):
        """The model with its head (seeded; LP-FT: the probe's), the compiled policy, and the probe's test accuracy and store key."""
        seed, resume, accelerator = self.config.seed, self.config.resume, run.accelerator
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        model = FinetuneModel(self.backbone, len(self.data.classes))
        probe = (None, None)
        if policy.head_init == "probe" and not resume:
            probe = init_head_from_probe(model, self.data, self.rows[0], self.rows[2], self.store, seed, accelerator, self.config.quiet)
        elif policy.head_init == "zeros":
            torch.nn.init.zeros_(model.head.weight)
            torch.nn.init.zeros_(model.head.bias)
        compiled = policy.compile(model, self.lr)
        model.to(accelerator.device).to(memory_format=torch.channels_last)
        if policy.head_init == "probe" and not resume:
            broadcast_from_main(model, accelerator)  # only the main process fitted the probe
        return model, compiled, probe

    def _batcher(self, run):
        accelerator, data = run.accelerator, self.data
        if data.modality == "text":
            return TextBatcher(data, self.backbone.model, accelerator.process_index, run.world, accelerator.device)
        return Batcher(data, self.spec, self.augment, self.config.seed, accelerator.process_index, run.world, accelerator.device,
                       workers(self.config.num_workers, data))

    # ----- the end --------------------------------------------------------------------------------

    def conclude(self, run, setup: Setup, state: dict[str, Any]) -> FinetuneResult:
        """Test metrics of the kept weights, the bundle (the model moves to the CPU), and the run files on the main process."""
        from headstart.heads import head_from_state

        model, compiled, data, config = setup.model, setup.compiled, self.data, self.config
        calibration, record = fit_calibration(model, run.accelerator, self.batcher, data, self.rows, config.batch_size,
                                              calibrate=self.calibrate, prior=self.prior)
        test = None
        if len(self.rows[2]):
            test, before = evaluate_test(model, run.accelerator, self.batcher, data, self.rows[2], config.batch_size, calibration)
            if test is not None and calibration.temperature != 1.0:
                record.update({"test_ece_before": before.ece, "test_accuracy_before": before.accuracy, "test_ece_after": test.ece})
        policy, spec = compiled.policy, self.spec
        arrays, meta = head_to_probe_state(model.head)
        augment = augment_summary(self.augment) if data.modality == "image" else None
        metrics = {"test": test.to_dict() if test else None, "history": state["history"], "best_epoch": state["best_epoch"],
                   "keep_rule": state.get("keep_rule"), "calibration": record}
        model.to("cpu")
        manifest = {"seed": config.seed, "data_fingerprint": setup.settings["data"], "data_source": data.source,
                    "finetune": {**setup.settings, "strategy": policy.strategy, "augmentation": augment}}
        bundle = Bundle(spec=spec, head=head_from_state(arrays, meta), classes=list(data.classes), metrics=metrics, manifest=manifest,
                        backbone=self.backbone, finetuned=not adapters_only(compiled), calibration=calibration)
        result = FinetuneResult(
            backbone=spec.name, strategy=policy.strategy, policy=policy, lr=self.lr, history=state["history"], best_epoch=state["best_epoch"],
            stopped_early=state["stopped_early"], test=test, probe_test_accuracy=state.get("probe_test_accuracy"), start=state.get("start"),
            bundle=bundle, bundle_path=None, out=config.out, seconds=time.perf_counter() - run.started, processes=run.world,
            device=str(run.accelerator.device), mixed_precision=run.accelerator.mixed_precision, model=model, calibration=record,
            augment=augment, keep_rule=state.get("keep_rule"), stopped_by_budget=bool(state.get("stopped_by_budget")),
        )
        if run.main and config.out is not None:
            save_run(result, setup.settings, data, state.get("probe_store_key"), config.resume)
        return result

    def closing_line(self, result: FinetuneResult, state: dict[str, Any]) -> str:
        probe, test = result.probe_test_accuracy, result.test
        tail = f"; probe {probe:.3f}" if probe is not None else ""
        score = f"test accuracy {test.accuracy:.3f}" if test else "no test split"
        kept = f"kept epoch {state['best_epoch']}" if state["best_epoch"] >= 0 else "kept the probe's weights (every epoch scored lower on validation)"
        record = result.calibration or {}
        if "test_ece_before" in record and record.get("temperature", 1.0) != 1.0:
            tail += f"; temperature {record['temperature']:.2f}: test ECE {record['test_ece_before']:.3f} -> {record['test_ece_after']:.3f}"
        return f"{kept}: {score}{tail}" + (f"; bundle {result.bundle_path}" if result.bundle_path else "")

    # ----- the loop's hooks -----------------------------------------------------------------------

    def train_epoch(self, batches: list[np.ndarray], epoch: int):
        return self.batcher.train_epoch(batches, epoch)

    def loss(self, net, batch, autocast):
        x, y = batch
        with autocast():
            logits = net(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=self.label_smoothing, ignore_index=IGNORE)
        with torch.no_grad():
            valid = y != IGNORE
            tally = torch.stack([loss_sum.detach().double(), (logits.argmax(1) == y)[valid].sum().double(), valid.sum().double()])
        return loss_sum, tally

    def train_metrics(self, tallies: list[torch.Tensor], accelerator) -> dict[str, Any]:
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, correct, count
        for tally in tallies:
            totals += tally
        totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
        loss_sum, correct, count = totals.tolist()
        return {"train_loss": loss_sum / max(count, 1), "train_accuracy": correct / max(count, 1)}

    def validate(self, model) -> tuple[float | None, dict[str, Any]]:
        if not self.n_val:
            return None, {"val_loss": None, "val_accuracy": None}
        loss, accuracy = _validate(model, self.accelerator, self.batcher, self.val_rows, self.config.batch_size)
        return accuracy, {"val_loss": loss, "val_accuracy": accuracy}

    def score_noise(self, score: float) -> float:
        """The binomial standard error of a validation accuracy of ``score`` on this run's validation split."""
        return binomial_se(score, self.n_val)

    def history_row(self, base, train, val, times, steps, best):
        rounded = {key: round(value, 3) for key, value in times.items()}
        return {**base, **train, **val, **rounded, "best": best}

    def epoch_line(self, row: dict[str, Any], epochs: int, state: dict[str, Any]) -> str:
        val = f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}" if row["val_loss"] is not None else "no val split"
        star = " [bold green]best[/]" if row["best"] else ""
        return (f"epoch {row['epoch']} [{row['epoch'] + 1}/{epochs}] phase {row['phase']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
                f"{val} | lr {row['lr']:.2e} | {row['seconds']:.1f} s{star}")

    def start_line(self, val: dict[str, Any]) -> str:
        return f"start (the probe's head): val loss {val['val_loss']:.4f} acc {val['val_accuracy']:.3f}"

    def describe(self, compiled: CompiledPolicy, accelerator) -> str:
        summary, spec = compiled.summary(0), self.spec
        return (f"fine-tune {spec.name} ({compiled.policy.strategy}){f' at {spec.input_size} px' if spec.modality == 'image' else ''} on "
                f"{accelerator.device} x{accelerator.num_processes}, {self.n_train} train / {self.n_val} val, {summary['trainable_params']:,} of "
                f"{summary['total_params']:,} parameters train in epoch 0, precision {accelerator.mixed_precision}, lr {compiled.lr:g}")

    def out_of_memory(self, net, batch, batch_size: int, world: int):
        x, y = batch

        def fits(size: int) -> bool:
            try:
                net.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                F.cross_entropy(net(x[:size]).float(), y[:size]).backward()
                net.zero_grad(set_to_none=True)
                return True
            except torch.OutOfMemoryError:
                return False

        return out_of_memory_error(fits, len(x), batch_size, world)


def init_head_from_probe(model: FinetuneModel, data: Dataset, train_rows, test_rows, store, seed: int, accelerator, quiet: bool) -> tuple[float | None, str | None]:
    """Fit a LinearProbe on the store's features of the training rows and copy it into the head.

    Only the main process extracts and fits: the others keep their head, which the engine's
    broadcast overwrites with the main process's weights. Returns the probe's test accuracy (None
    without a test split) and the features' store key (both None on the other processes).
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


def augment_summary(augment: AugmentConfig) -> dict[str, Any]:
    """The training augmentations as the run's files record them (``flip`` tells a reader whether images were mirrored)."""
    return {"crop_scale": list(augment.scale), "crop_ratio": [round(r, 4) for r in augment.ratio], "flip": augment.flip, "randaugment": augment.randaugment}


def adapters_only(compiled: CompiledPolicy) -> bool:
    """Whether the only backbone parameters that ever train are LoRA adapters (the pretrained weights stay as loaded)."""
    from headstart.backbones.lora import lora_settings

    if lora_settings(compiled.model.backbone.model) is None:
        return False
    trained = [name for name in compiled.ever_trainable() if name not in compiled.head_names]
    return all(".lora_" in name for name in trained)


def workers(num_workers: int | None, data: Dataset) -> int:
    """DataLoader workers for image files: none for in-memory data, else the given number or up to 8."""
    if data.in_memory:
        return 0
    return max(0, min(8, os.cpu_count() or 1)) if num_workers is None else num_workers


def _validate(model, accelerator, batcher, rows, batch_size) -> tuple[float, float]:
    """Validation loss (plain cross-entropy) and accuracy over all processes."""
    logits, _, labels = predict_logits(model, accelerator, batcher, rows, batch_size)
    valid = labels != IGNORE
    loss = F.cross_entropy(logits[valid], labels[valid], reduction="sum") if valid.any() else torch.tensor(0.0)
    totals = torch.tensor([float(loss), float((logits.argmax(1) == labels)[valid].sum()), float(valid.sum())], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def evaluate_test(model, accelerator, batcher, data: Dataset, rows, batch_size,
                  calibration: Calibration | None = None) -> tuple[EvalResult | None, EvalResult | None]:
    """Test metrics of ``model`` with its calibration applied, and without its temperature (on the main process; None elsewhere)."""
    logits, order, labels = gather_logits(model, accelerator, batcher, rows, batch_size)
    if not accelerator.is_main_process:
        return None, None
    proba = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    valid = labels != IGNORE
    names = np.array(data.classes, dtype=object)
    truth = names[data.labels[order[valid]]]
    calibration = calibration or Calibration()
    before = dataclasses.replace(calibration, temperature=1.0)  # the same prior, without the temperature
    raw = evaluate(truth, before.apply(proba[valid]), list(data.classes), split="test")
    if calibration.temperature == 1.0:
        return raw, raw
    return evaluate(truth, calibration.apply(proba[valid]), list(data.classes), split="test"), raw
