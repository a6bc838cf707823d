"""``headstart finetune``: fine-tune a backbone with a new head and write a bundle (flags map onto ``finetune()``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.commands.common import (
    AllowTorchScript,
    CacheDir,
    Calibrate,
    Encoding,
    ImageSize,
    Json,
    LabelColumn,
    Out,
    PerClass,
    Prior,
    Quiet,
    Seed,
    TextColumn,
    print_json,
    store_from,
)


def finetune_cmd(
    data: Annotated[str, typer.Argument(help="Image folder, .csv/.jsonl manifest, .npz, or builtin:NAME.")],
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone name, e.g. tv:mobilenet_v2.IMAGENET1K_V1.")],
    strategy: Annotated[
        Optional[str], typer.Option("--strategy", help="lp-ft (default), linear-then-full, last-stage, gradual, full or lora.")
    ] = None,
    policy: Annotated[Optional[Path], typer.Option("--policy", help="A FinetunePolicy YAML file (instead of --strategy).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Most epochs to train.")] = 10,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Head learning rate (default: 1e-4 for lp-ft, 3e-3 for lora, else 1e-3).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch size per step (split across processes).")] = 32,
    accumulation_steps: Annotated[int, typer.Option("--accumulation-steps", help="Batches per optimizer step.")] = 1,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd.")] = "adamw",
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", help="Linear warm-up before the cosine decay.")] = 1.0,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="Label smoothing of the loss.")] = 0.1,
    max_grad_norm: Annotated[Optional[float], typer.Option("--max-grad-norm", help="Clip the gradient norm (0 turns it off).")] = 1.0,
    ema_decay: Annotated[
        Optional[float], typer.Option("--ema-decay", help="Validate and keep an EMA of the weights, e.g. 0.99 (helps short runs; default off).")
    ] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", help="Early stopping: epochs without a better val accuracy (0 never stops).")] = 5,
    keep_within: Annotated[
        Optional[float],
        typer.Option("--keep-within", help="Keep the latest epoch whose val accuracy is within this many standard errors of the best (default 1; 0: the best)."),
    ] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of train held out for validation when there is no val split.")] = 0.1,
    crop_scale: Annotated[tuple[float, float], typer.Option("--crop-scale", help="Area range of the random resized crop.")] = (0.35, 1.0),
    flip: Annotated[
        bool, typer.Option("--flip/--no-flip", help="Mirror training images left-right at random (on; turn off for digits, text, anything handed).")
    ] = True,
    randaugment: Annotated[bool, typer.Option("--randaugment", help="Add RandAugment to the training augmentations.")] = False,
    mixed_precision: Annotated[str, typer.Option("--mixed-precision", help="auto, no, bf16 or fp16.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="DataLoader workers for image files (default: up to 8).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Print the policy's plan (one row per layer group) and exit.")] = False,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="--strategy lora: rank of the adapters.")] = 8,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha", help="--strategy lora: scaling numerator (updates scale by alpha / rank).")] = 16.0,
    lora_targets: Annotated[str, typer.Option("--lora-targets", help="--strategy lora: comma-separated names of the linear layers to adapt.")] = "query,value",
    calibrate: Calibrate = True,
    prior: Prior = "data",
    per_class: PerClass = None,
    image_size: ImageSize = None,
    seed: Seed = 0,
    out: Out = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = "label",
    encoding: Encoding = None,
    cache_dir: CacheDir = None,
    allow_torchscript: AllowTorchScript = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a backbone with a new head (LP-FT by default), and write a bundle that predict uses unchanged."""
    from headstart.finetune import finetune

    from headstart.workflows.calibration import check_calibration_options

    check_calibration_options(prior)  # before any work
    if explain:
        _explain(backbone, strategy, policy, epochs, lr, image_size, (lora_rank, lora_alpha, lora_targets), allow_torchscript)
        return
    if out is None:
        if resume:
            from headstart.errors import HeadstartError

            raise HeadstartError("--resume needs the run folder: pass --out DIR of the run to continue.")
        out = Path("runs") / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    if allow_torchscript:
        from headstart.backbones import check_trainable, load_backbone

        check_trainable(backbone)

        backbone = load_backbone(backbone, allow_torchscript=True)  # finetune() loads a name without the opt-in
    if text_column is not None or label_column != "label" or encoding is not None:
        from headstart.data import load_data

        data = load_data(data, per_class=per_class, seed=seed, text_column=text_column, label_column=label_column, encoding=encoding)
        per_class = None  # applied by load_data
    result = finetune(
        data,
        backbone,
        strategy=strategy,
        policy=policy,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        accumulation_steps=accumulation_steps,
        optimizer=optimizer,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        max_grad_norm=max_grad_norm or None,
        ema_decay=ema_decay,
        patience=patience or None,
        **({} if keep_within is None else {"keep_within": keep_within}),
        val_fraction=val_fraction,
        crop_scale=crop_scale,
        flip=flip,
        randaugment=randaugment,
        mixed_precision=mixed_precision,
        per_class=per_class,
        image_size=image_size,
        seed=seed,
        out=out,
        resume=resume,
        store=store_from(cache_dir),
        device=device,
        num_workers=num_workers,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
        calibrate=calibrate,
        prior=prior,
        quiet=quiet or json_out,
    )
    if json_out:
        print_json(result.to_dict())
        return
    from headstart.console import console

    test = f"test accuracy {result.test.accuracy:.3f}" if result.test else "no test split"
    probe = f" (linear probe {result.probe_test_accuracy:.3f})" if result.probe_test_accuracy is not None else ""
    console.print(f"{result.backbone} {result.strategy}: {test}{probe}, best epoch {result.best_epoch}, {result.seconds_per_epoch:.1f} s/epoch; bundle: {result.bundle_path}")
    record = result.calibration or {}
    if "test_ece_before" in record:
        console.print(f"calibration: temperature {record['temperature']:.3f}, test ECE {record['test_ece_before']:.3f} -> {record['test_ece_after']:.3f}")
    if result.out is not None and (result.out / "report.html").is_file():
        console.print(f"report: {result.out / 'report.html'}")


def _explain(backbone: str, strategy, policy, epochs: int, lr, image_size, lora: tuple[int, float, str], allow_torchscript: bool = False) -> None:
    """Print the plan without training (the data is not read); the policy is resolved as ``finetune`` resolves it, LoRA settings included."""
    from headstart.backbones import check_trainable, load_backbone
    from headstart.finetune import DEFAULT_LR, FinetuneModel, resolve_policy

    check_trainable(backbone)
    loaded = load_backbone(backbone, allow_torchscript=allow_torchscript)
    loaded.spec = loaded.spec.with_input_size(image_size)
    rank, alpha, targets = lora
    resolved = resolve_policy(loaded.spec, epochs, strategy=strategy, policy=policy, lora_rank=rank, lora_alpha=alpha,
                              lora_targets=tuple(t.strip() for t in targets.split(",") if t.strip()))
    model = FinetuneModel(loaded, 2)
    rate = DEFAULT_LR.get(resolved.strategy, 1e-3) if lr is None else lr
    for epoch in [0, *resolved.unfreeze]:
        resolved.explain(model, lr=rate, epoch=epoch)


def register(app: typer.Typer) -> None:
    """Add ``finetune`` to the ``headstart`` app."""
    app.command("finetune")(finetune_cmd)
