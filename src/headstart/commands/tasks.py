"""``headstart detect`` and ``headstart segment``: train and evaluate detectors and segmenters; ``headstart scenes``.

Flags map one to one onto :func:`headstart.tasks.train_detector` / :func:`train_segmenter`. The
bundles they write work with ``headstart predict`` unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.commands.common import Json, Out, Quiet, Seed, print_json, table

detect_app = typer.Typer(help="Object detection: Faster R-CNN + FPN (or RetinaNet, FCOS) on a pretrained backbone.", no_args_is_help=True)
segment_app = typer.Typer(help="Semantic segmentation: a light FPN decoder (or DeepLabV3, FCN heads) on a pretrained backbone.", no_args_is_help=True)

Data = Annotated[str, typer.Argument(help="builtin:animal-scenes[?train=N&test=N&size=PX], a COCO .json, a VOC folder, images/ + masks/, or train/ val/ test/ of these.")]
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="Backbone name, e.g. tv:mobilenet_v2.IMAGENET1K_V1 or timm:tf_efficientnet_lite0.")]
Strategy = Annotated[Optional[str], typer.Option("--strategy", help="full, last-stage, linear-then-full or gradual (default: everything trains).")]
Policy = Annotated[Optional[Path], typer.Option("--policy", help="A FinetunePolicy YAML file; the new parts are named head.* (the 'head' shortcut selects them).")]
TrainableStages = Annotated[Optional[int], typer.Option("--trainable-stages", help="Train the head and the last K backbone stages (torchvision's trainable_backbone_layers); 0: head only.")]
Epochs = Annotated[int, typer.Option("--epochs", help="Epochs to train.")]
Lr = Annotated[float, typer.Option("--lr", help="Head learning rate (the policy scales other groups).")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="adamw or sgd.")]
Warmup = Annotated[float, typer.Option("--warmup-epochs", help="Linear warm-up before the cosine decay.")]
GradNorm = Annotated[float, typer.Option("--max-grad-norm", help="Clip the gradient norm (0 turns it off).")]
TaskImageSize = Annotated[Optional[int], typer.Option("--image-size", help="Image size the network sees (default: the training images' median shorter side, at most 800).")]
ValFraction = Annotated[float, typer.Option("--val-fraction", help="Share of training images held out for validation when there is no val split.")]
Precision = Annotated[str, typer.Option("--mixed-precision", help="auto, no, bf16 or fp16.")]
MaxCpu = Annotated[Optional[float], typer.Option("--max-cpu-seconds", help="Stop training after this much process CPU time.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]


def detect_train(
    data: Data,
    backbone: BackboneOpt,
    arch: Annotated[str, typer.Option("--arch", help="fasterrcnn (Faster R-CNN + FPN), retinanet or fcos.")] = "fasterrcnn",
    strategy: Strategy = None,
    policy: Policy = None,
    trainable_stages: TrainableStages = None,
    epochs: Epochs = 12,
    lr: Lr = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step.")] = 4,
    optimizer: Optimizer = "adamw",
    warmup_epochs: Warmup = 1.0,
    max_grad_norm: GradNorm = 10.0,
    image_size: TaskImageSize = None,
    fpn_channels: Annotated[int, typer.Option("--fpn-channels", help="Width of the feature pyramid.")] = 256,
    val_fraction: ValFraction = 0.1,
    mixed_precision: Precision = "auto",
    max_cpu_seconds: MaxCpu = None,
    resume: Resume = False,
    device: Device = "auto",
    seed: Seed = 0,
    out: Out = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train a detector; print test mAP, mAP@0.5 and AP per class; write a bundle for headstart predict."""
    from headstart.tasks import train_detector

    result = train_detector(
        data, backbone, arch=arch, strategy=strategy, policy=policy, trainable_stages=trainable_stages, epochs=epochs, lr=lr,
        batch_size=batch_size, optimizer=optimizer, warmup_epochs=warmup_epochs, max_grad_norm=max_grad_norm or None,
        image_size=image_size, fpn_channels=fpn_channels, val_fraction=val_fraction, mixed_precision=mixed_precision,
        max_cpu_seconds=max_cpu_seconds, seed=seed, out=_run_dir(out, resume, "detect"), resume=resume, device=device,
        quiet=quiet or json_out,
    )
    _print_result(result, json_out)


def segment_train(
    data: Data,
    backbone: BackboneOpt,
    head: Annotated[str, typer.Option("--head", help="fpn (light FPN decoder), deeplabv3 or fcn.")] = "fpn",
    strategy: Strategy = None,
    policy: Policy = None,
    trainable_stages: TrainableStages = None,
    epochs: Epochs = 12,
    lr: Lr = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step.")] = 8,
    optimizer: Optimizer = "adamw",
    warmup_epochs: Warmup = 1.0,
    max_grad_norm: GradNorm = 10.0,
    image_size: TaskImageSize = None,
    channels: Annotated[int, typer.Option("--channels", help="Decoder width (fpn head).")] = 128,
    val_fraction: ValFraction = 0.1,
    mixed_precision: Precision = "auto",
    max_cpu_seconds: MaxCpu = None,
    resume: Resume = False,
    device: Device = "auto",
    seed: Seed = 0,
    out: Out = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train a segmenter; print test mIoU, IoU per class and pixel accuracy; write a bundle for headstart predict."""
    from headstart.tasks import train_segmenter

    result = train_segmenter(
        data, backbone, head=head, strategy=strategy, policy=policy, trainable_stages=trainable_stages, epochs=epochs, lr=lr,
        batch_size=batch_size, optimizer=optimizer, warmup_epochs=warmup_epochs, max_grad_norm=max_grad_norm or None,
        image_size=image_size, channels=channels, val_fraction=val_fraction, mixed_precision=mixed_precision,
        max_cpu_seconds=max_cpu_seconds, seed=seed, out=_run_dir(out, resume, "segment"), resume=resume, device=device,
        quiet=quiet or json_out,
    )
    _print_result(result, json_out)


def evaluate_cmd(
    bundle: Annotated[Path, typer.Argument(help="A detection or segmentation bundle folder.")],
    data: Data,
    split: Annotated[str, typer.Option("--split", help="train, val, test or all.")] = "test",
    seed: Seed = 0,
    json_out: Json = False,
) -> None:
    """Evaluate a detection or segmentation bundle on annotated data (skipped items are listed on stderr)."""
    from headstart.errors import DataError
    from headstart.bundles import TaskBundle
    from headstart.data.scenes import load_scenes
    from headstart.tasks.adapter import SceneLoader, evaluate_scenes

    loaded = TaskBundle.load(bundle)
    scenes = load_scenes(data, seed=seed)
    if loaded.task == "segmentation":
        scenes = scenes.with_masks()
    names = scenes.classes if loaded.task == "detection" else scenes.mask_classes
    if names != loaded.classes:
        raise DataError(f"{data} has classes {names}, but the bundle {bundle} was trained on {loaded.classes}.")
    rows = list(range(len(scenes))) if split == "all" else scenes.indices(split)
    if not len(rows):
        raise DataError(f"{data} has no {split} images; choose --split train, val, test or all.")
    metrics = evaluate_scenes(loaded.task, loaded.model, scenes, rows, SceneLoader(loaded.task, scenes, int(loaded.config["image_size"]), seed, "cpu"))
    _report_problems(scenes.problems)
    if json_out:
        print_json({"task": loaded.task, "split": split, "images": len(rows), "metrics": metrics, "problems": [p.to_dict() for p in scenes.problems]})
        return
    _print_metrics(loaded.task, metrics, f"{bundle} on {data} ({split}, {len(rows)} images)")


def scenes_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write: classes.json, train/ and test/ with images/, masks/, annotations.json.")],
    train: Annotated[int, typer.Option("--train", help="Training scenes.")] = 300,
    test: Annotated[int, typer.Option("--test", help="Test scenes.")] = 100,
    size: Annotated[int, typer.Option("--size", help="Scene side in pixels.")] = 128,
    seed: Seed = 0,
) -> None:
    """Write the synthetic builtin:animal-scenes to disk as COCO JSON + PNG images + palette PNG masks."""
    from headstart.tasks import animal_scenes, write_coco

    write_coco(animal_scenes(n_train=train, n_test=test, size=size, seed=seed), out)
    typer.echo(f"wrote {train} training and {test} test scenes (synthetic) to {out}; train with: headstart detect train {out} --backbone NAME")


def _run_dir(out: Path | None, resume: bool, kind: str) -> Path:
    if out is not None:
        return out
    if resume:
        from headstart.errors import HeadstartError

        raise HeadstartError("--resume needs the run folder: pass --out DIR of the run to continue.")
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _print_result(result, json_out: bool) -> None:
    if json_out:
        print_json(result.to_dict())
        return
    _report_problems_dicts(result.problems)
    if result.test is not None:
        _print_metrics(result.task, result.test, f"{result.backbone}: test ({result.task}, best epoch {result.best_epoch})")
    from headstart.console import console

    console.print(f"bundle: {result.bundle_path} (predict with: headstart predict {result.bundle_path} IMAGES --out DIR)")
    if result.out is not None and (result.out / "report.html").is_file():
        console.print(f"report: {result.out / 'report.html'}")


def _print_metrics(task: str, metrics: dict, title: str) -> None:
    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    if task == "detection":
        table(f"{title}: mAP {fmt(metrics['map'])}, mAP@0.5 {fmt(metrics['map_50'])}, mAP@0.75 {fmt(metrics['map_75'])}",
              ["class", "AP", "AP@0.5"], [[name, fmt(v["ap"]), fmt(v["ap_50"])] for name, v in metrics["per_class"].items()])
    else:
        table(f"{title}: mIoU {fmt(metrics['miou'])}, pixel accuracy {fmt(metrics['pixel_accuracy'])}",
              ["class", "IoU"], [[name, fmt(v)] for name, v in metrics["per_class_iou"].items()])


def _report_problems(problems) -> None:
    _report_problems_dicts([p.to_dict() for p in problems])


def _report_problems_dicts(problems: list[dict]) -> None:
    if not problems:
        return
    from headstart.console import err_console

    err_console.print(f"{len(problems)} item(s) skipped:", highlight=False)
    for problem in problems:
        err_console.print(f"  {problem['file']}: {problem['field']}: {problem['message']}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``detect``, ``segment`` and ``scenes`` to the ``headstart`` app."""
    detect_app.command("train")(detect_train)
    detect_app.command("evaluate")(evaluate_cmd)
    segment_app.command("train")(segment_train)
    segment_app.command("evaluate")(evaluate_cmd)
    app.add_typer(detect_app, name="detect")
    app.add_typer(segment_app, name="segment")
    app.command("scenes")(scenes_cmd)
