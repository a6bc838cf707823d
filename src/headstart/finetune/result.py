"""What a fine-tuning run returns (:class:`FinetuneResult`) and the files it leaves in its run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.bundles import Bundle
from headstart.data.dataset import Dataset
from headstart.engine.policy import FinetunePolicy
from headstart.evaluate import EvalResult
from headstart.io import atomic_write_json
from headstart.models.classifier import FinetuneModel


@dataclass
class FinetuneResult:
    """The outcome of :func:`finetune`.

    Attributes:
        backbone: The backbone's name.
        strategy: The strategy (or ``custom`` for a policy file).
        policy: The policy that ran.
        lr: The base (head) learning rate.
        history: One dict per epoch: losses, accuracies, learning rate, phase, seconds.
        best_epoch: The epoch whose weights were kept: the latest epoch whose validation accuracy is
            within ``keep_within`` standard errors of the best (see ``keep_rule``); -1 when that is
            LP-FT's starting point (the probe's head on the pretrained backbone).
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
        calibration: The bundle's calibration: ``temperature`` (fitted on the validation split),
            ``log_prior_shift``, ``prior``, ``note``, and where fitted ``val_ece_before`` /
            ``val_ece_after``, ``val_nll_before`` / ``val_nll_after``, ``test_ece_before`` /
            ``test_ece_after`` (``test`` holds the calibrated metrics; the accuracy is the same).
        augment: The training augmentations (crop scale and ratio, ``flip``, ``randaugment``); None for text.
        keep_rule: The kept-epoch rule and its inputs (see :mod:`headstart.engine.keep`).
        stopped_by_budget: Whether ``max_seconds`` cut training short.
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
    calibration: dict[str, Any] | None = None
    augment: dict[str, Any] | None = None
    keep_rule: dict[str, Any] | None = None
    stopped_by_budget: bool = False

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
            "keep_rule": self.keep_rule,
            "augment": self.augment,
            "start": self.start,
            "stopped_early": self.stopped_early,
            "stopped_by_budget": self.stopped_by_budget,
            "test": self.test.to_dict() if self.test else None,
            "test_accuracy": self.test.accuracy if self.test else None,
            "probe_test_accuracy": self.probe_test_accuracy,
            "calibration": self.calibration,
            "seconds": round(self.seconds, 2),
            "seconds_per_epoch": round(self.seconds_per_epoch, 2),
            "processes": self.processes,
            "device": self.device,
            "mixed_precision": self.mixed_precision,
            "history": self.history,
            "bundle": str(self.bundle_path) if self.bundle_path else None,
            "out": str(self.out) if self.out else None,
        }


def save_run(result: FinetuneResult, settings: dict[str, Any], data: Dataset, probe_store_key: str | None, resumed: bool) -> None:
    """The bundle, ``metrics.json``, ``manifest.json`` and ``report.html`` of a finished run (main process only)."""
    out = result.out
    result.bundle_path = result.bundle.save(out / "bundle")
    atomic_write_json(out / "metrics.json", result.to_dict())
    write_run_files(out, result, settings, data, probe_store_key, resumed)


def write_run_files(out: Path, result: FinetuneResult, settings: dict[str, Any], data: Dataset, probe_store_key: str | None, resumed: bool) -> None:
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
        augment=result.augment,
        keep_within=settings.get("keep_within"),
        probe_store_key=probe_store_key,
        resumed=resumed,
        wall_seconds=round(result.seconds, 2),
        seconds_per_epoch=round(result.seconds_per_epoch, 2),
    )
    write_report_or_warn(out)
