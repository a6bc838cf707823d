"""``headstart auto``: rank, probe and fine-tune within a time budget; one bundle and a report that explains each decision."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from headstart.commands.common import (
    CacheDir,
    Encoding,
    ImageSize,
    Json,
    LabelColumn,
    Out,
    PerClass,
    Precision,
    Quiet,
    Runtime,
    Seed,
    TextColumn,
    print_json,
    store_from,
)


def auto_cmd(
    data: Annotated[str, typer.Argument(help="Image or .txt folder, .csv/.tsv/.jsonl manifest or text table, .npz, or builtin:NAME.")],
    budget: Annotated[str, typer.Option("--budget", help="Wall time for the whole run: 10m, 90s, 1h30m. The run ends within it plus 10%.")] = "5m",
    candidates: Annotated[
        list[str] | None,
        typer.Option("--candidates", "-c", help="A backbone to consider; repeat for several. Default: every offline backbone of the data's kind (and sk:tfidf for text)."),
    ] = None,
    head: Annotated[list[str], typer.Option("--head", help="Heads to try: linear, knn, mlp (repeat).")] = ["linear", "knn", "mlp"],  # noqa: B006
    finetune: Annotated[bool, typer.Option("--finetune/--no-finetune", help="Allow LP-FT fine-tuning when it fits the budget.")] = True,
    control: Annotated[bool, typer.Option("--control", help="Also probe a random-init copy of the chosen backbone: what pretraining is worth.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the killed run in --out; nothing done is redone, and the budget counts both runs.")] = False,
    per_class: PerClass = None,
    image_size: ImageSize = None,
    seed: Seed = 0,
    out: Out = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = "label",
    encoding: Encoding = None,
    runtime: Runtime = None,
    precision: Precision = None,
    cache_dir: CacheDir = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Choose a backbone, a head and whether to fine-tune within --budget, on validation data only; write one bundle and an explained report."""
    from headstart.console import console, err_console
    from headstart.data import load_data
    from headstart.errors import OptionError
    from headstart.features.runtime import check_runtime
    from headstart.workflows.auto import auto
    from headstart.workflows.auto_plan import parse_budget

    parse_budget(budget)
    check_runtime(runtime, precision)
    if resume and out is None:
        raise OptionError("--resume needs --out: the folder of the run to continue.")
    dataset = load_data(data, per_class=per_class, seed=seed, text_column=text_column, label_column=label_column, encoding=encoding)
    out = out or Path("runs") / f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
    result = auto(dataset, budget, candidates=candidates, heads=tuple(head), out=out, image_size=image_size, seed=seed, finetune=finetune,
                  control=control, resume=resume, store=store_from(cache_dir), runtime=runtime, precision=precision, quiet=quiet or json_out)
    for skip in result.decisions.get("skipped_items", []):
        err_console.print(f"skipped {skip['item']}: {skip['reason']}", markup=False, highlight=False, soft_wrap=True)
    for skip in result.decisions.get("skipped_candidates", []):
        err_console.print(f"skipped candidate {skip['candidate']}: {skip['reason']}", markup=False, highlight=False, soft_wrap=True)
    if json_out:
        print_json(result.to_dict())
        return
    choice = result.choice
    model = f"{choice['backbone']} + {choice['head']}" if choice["kind"] == "probe" else f"{choice['backbone']} fine-tuned (LP-FT)"
    test = f", test accuracy {result.test.accuracy:.3f}" if result.test is not None else ""
    console.print(
        f"chosen: {model} (validation accuracy {choice['validation_accuracy']:.3f}{test}) in {result.seconds:.0f} s of a "
        f"{result.budget:.0f} s budget; bundle: {result.bundle_path}; report: {out / 'report.html'}",
        markup=False, highlight=False, soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``headstart auto`` to the CLI."""
    app.command("auto")(auto_cmd)
