"""Classification over the engine: batches of images or texts, label-smoothed cross-entropy, accuracy, the probe head.

:class:`ClassificationAdapter` is what :func:`headstart.finetune.finetune` hands the engine; the
helpers below it fit LP-FT's starting head and score the kept weights on the test split.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.data.dataset import Dataset
from headstart.engine import Adapter
from headstart.engine.errors import out_of_memory_error
from headstart.engine.policy import CompiledPolicy
from headstart.evaluate import EvalResult, evaluate
from headstart.finetune.data import IGNORE, Batcher
from headstart.models.classifier import FinetuneModel


class ClassificationAdapter(Adapter):
    """Single-label classification: what :func:`finetune` trains.

    Args:
        batcher: The process's :class:`Batcher` (images) or ``TextBatcher``.
        val_rows: The validation rows.
        batch_size: Evaluation batch size.
        label_smoothing: Label smoothing of the training loss.
        accelerator: The run's Accelerator.
        spec: The backbone spec (its modality and input size, for the opening line).
        n_train: Training items (for the opening line).
        start_candidate: LP-FT: the probe's head is the first candidate for the kept weights.
    """

    name = "fine-tuning"
    score_name = "accuracy"
    loss_is_sum = True
    ties_to_later = True  # with label smoothing, validation cross-entropy rises as training goes on, so accuracy decides
    tensorboard = True
    divergence_hint = "Lower --lr (for example by 10x), turn mixed precision off (--mixed-precision no), or keep --max-grad-norm on."

    def __init__(self, batcher, val_rows: np.ndarray, batch_size: int, label_smoothing: float, accelerator, spec, n_train: int,
                 start_candidate: bool) -> None:
        self.batcher = batcher
        self.val_rows = val_rows
        self.n_val = len(val_rows)
        self.batch_size = batch_size
        self.label_smoothing = label_smoothing
        self.accelerator = accelerator
        self.spec = spec
        self.n_train = n_train
        self.start_candidate = start_candidate

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
        loss, accuracy = _validate(model, self.accelerator, self.batcher, self.val_rows, self.batch_size)
        return accuracy, {"val_loss": loss, "val_accuracy": accuracy}

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


def evaluate_test(model, accelerator, batcher, data: Dataset, rows, batch_size) -> EvalResult | None:
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
