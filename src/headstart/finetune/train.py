"""``finetune()``: classification fine-tuning, the engine's classification adapter put to work.

:func:`headstart.engine.train` runs it: the :class:`~headstart.finetune.adapter.ClassificationAdapter`
sets up data, backbone, policy, model and head; the engine's loop trains; the adapter evaluates the
kept weights on the test split and saves a bundle that ``headstart predict`` uses unchanged, with the
run's files (metrics, manifest, report).
"""

from __future__ import annotations

from pathlib import Path

from headstart import engine
from headstart.backbones import Backbone, check_trainable
from headstart.data.augment import AugmentConfig
from headstart.data.dataset import Dataset
from headstart.engine.keep import KEEP_WITHIN
from headstart.engine.policy import DEFAULT_LR, FinetunePolicy
from headstart.errors import OptionError
from headstart.evaluate.calibration import PRIORS
from headstart.features import FeatureStore
from headstart.finetune.adapter import ClassificationAdapter
from headstart.finetune.result import FinetuneResult


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
    max_seconds: float | None = None,
    keep_within: float = KEEP_WITHIN,
    val_fraction: float = 0.1,
    crop_scale: tuple[float, float] = (0.35, 1.0),
    flip: bool = True,
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
    calibrate: bool = True,
    prior: str = "data",
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
            smooths AdamW's noisy first steps but lags behind in longer runs (measured in section
            "Fine-tuning: BatchNorm and EMA" of benchmarks/RESULTS.md).
        patience: Stop after this many epochs without a better validation accuracy; None never stops early.
        max_seconds: Stop training after this many wall-clock seconds in this call (the epoch in
            progress is cut short and validated; the kept-epoch rule then picks among the epochs
            so far); None: no limit. ``headstart auto`` sets it from its budget.
        keep_within: The kept-epoch rule: keep the latest epoch whose validation accuracy is within
            this many binomial standard errors of the best one (1.0 by default; measured in
            ``benchmarks/finetune_curves.py``); 0 keeps the epoch with the best validation accuracy.
        val_fraction: Share of each class held out for validation when the data has no ``val`` split.
        crop_scale: Area range of the random resized crop.
        flip: Mirror training images left-right at random (half of them). On by default: for most
            photographs a mirrored image is as likely as the original and the flip is free extra
            data. Turn it off where left and right differ: digits, text in images, road signs,
            anything with a handedness.
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
        calibrate: After training, fit a temperature ``T`` on the kept model's validation logits
            (minimum NLL) and save it in the bundle, which then predicts ``softmax(logits / T)``; it
            never changes the predicted class. False keeps ``T = 1``. Needs a validation split.
        prior: ``"data"``: when ``per_class`` (or ``load_data(..., per_class=N)``) balanced the
            training split, the bundle corrects its probabilities to the class frequencies the
            training split had before (zero without subsampling). ``"uniform"``: keep the balanced
            sample's prior.
        quiet: No per-epoch lines on the console.

    Returns:
        A :class:`FinetuneResult`; ``result.bundle`` predicts like any bundle.

    Raises:
        NotTrainableError: The backbone's source cannot be fine-tuned (``onnx:``).
        PolicyError: The policy does not fit the model (a pattern that matches nothing, nothing trainable).
        TrainingDivergedError: The loss became NaN or infinite (the last good checkpoint is kept).
        OutOfMemoryError: The GPU ran out of memory (the message suggests a batch size).
        FrozenWeightsChangedError: A frozen weight or BatchNorm statistic changed.
        CheckpointError: ``resume`` without a checkpoint, or with different settings.
    """
    config = engine.TrainConfig.from_options(dict(locals()), nesterov=True)
    check_trainable(backbone)  # an onnx: backbone says so here, before any data or weights are read
    if not 0 <= label_smoothing < 1:
        raise OptionError(f"--label-smoothing must be in [0, 1), got {label_smoothing!r}.")
    if prior not in PRIORS:
        raise OptionError(f"prior must be 'data' (correct to the training split's class frequencies) or 'uniform', got {prior!r}.")
    adapter = ClassificationAdapter(
        data, backbone, per_class=per_class, image_size=image_size, store=store, label_smoothing=label_smoothing,
        augment=AugmentConfig(scale=tuple(crop_scale), flip=bool(flip), randaugment=randaugment),
        lora={"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_targets": tuple(lora_targets)}, calibrate=calibrate, prior=prior,
    )
    return engine.train(config, adapter)


__all__ = ["DEFAULT_LR", "FinetuneResult", "finetune"]
