"""``headstart rank``: rank candidate backbones on your data before training (flags map onto ``rank_backbones()``,
:mod:`headstart.workflows.rank`, which also writes the run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headstart.commands.common import (
    AllowTorchScript,
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


def _split(values: list[str] | None) -> list[str]:
    """Flatten repeated, comma-separated option values."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _pattern_candidates(patterns: list[str]) -> list[str]:
    """Backbones whose weights are available offline and whose names match any pattern."""
    from headstart.backbones import list_backbones
    from headstart.console import err_console
    from headstart.errors import HeadstartError

    names: list[str] = []
    for pattern in patterns:
        rows = list_backbones(pattern, offline_only=False)
        offline = [row.name for row in rows if row.offline]
        if not offline:
            raise HeadstartError(
                f"--pattern {pattern!r} matches {len(rows)} backbone(s), but none has weights available offline. "
                "See them with: headstart backbones; or name candidates with --candidates."
            )
        if len(offline) < len(rows):
            err_console.print(f"--pattern {pattern!r}: {len(offline)} of {len(rows)} matching backbones have weights offline; ranking those.")
        names += offline
    return names


def rank_cmd(
    data: Annotated[str, typer.Argument(help="Image folder, .csv/.jsonl manifest, .npz, or builtin:NAME.")],
    candidates: Annotated[
        list[str] | None,
        typer.Option("--candidates", "-c", help="Comma-separated candidates NAME#LAYER@SIZE (layer and size optional), e.g. timm:tf_efficientnet_lite0#blocks.4@112; repeatable."),
    ] = None,
    pattern: Annotated[
        list[str] | None, typer.Option("--pattern", help="fnmatch pattern over backbone names, e.g. 'tv:*' (offline ones); repeatable.")
    ] = None,
    sample: Annotated[int, typer.Option("--sample", help="Training images to score (stratified, at most sample/classes per class).")] = 2000,
    layers: Annotated[
        list[str] | None,
        typer.Option("--layers", help="Rank each candidate at these layers instead: names, 'pooled', or negative indices (--layers=-1,-2)."),
    ] = None,
    scores: Annotated[str | None, typer.Option("--scores", help="Comma-separated scores to compute, or 'all' (default: knn,leep,ridge).")] = None,
    combine: Annotated[str | None, typer.Option("--combine", help="Comma-separated scores that make the combined rank (default: knn).")] = None,
    method: Annotated[str, typer.Option("--method", help="How scores combine: mean_rank or zscore.")] = "mean_rank",
    pool: Annotated[str, typer.Option("--pool", help="Pooling of intermediate layers: avg, max, avgmax, token or none.")] = "avg",
    cost: Annotated[bool, typer.Option("--cost/--no-cost", help="Measure params, MACs, images/s and peak memory.")] = True,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, or auto.")] = None,
    runtime: Runtime = None,
    precision: Precision = None,
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
    """Rank candidate backbones by transferability scores and cheap probes, with their cost."""
    from headstart.data import load_data
    from headstart.errors import HeadstartError
    from headstart.features.runtime import check_runtime
    from headstart.select.candidates import parse_candidates
    from headstart.select.combine import ALL_SCORES, check_scores
    from headstart.select.table import print_rank_table
    from headstart.workflows.rank import rank_backbones

    # Check what is cheap to check before loading data or backbones.
    score_names = None
    if scores is not None:
        score_names = list(ALL_SCORES) if scores.strip() == "all" else _split([scores])
    combine_names = _split([combine]) if combine else None
    check_scores(score_names, combine_names, method)
    check_runtime(runtime, precision)
    names = _split(candidates)
    if pattern:
        names += _pattern_candidates(_split(pattern))
    if not names:
        raise HeadstartError("Name candidates with --candidates A,B,C or --pattern 'tv:*'. List backbones with: headstart backbones.")
    parse_candidates(names)
    dataset = load_data(data, per_class=per_class, seed=seed, text_column=text_column, label_column=label_column, encoding=encoding)
    table = rank_backbones(
        names,
        dataset,
        scores=score_names,
        combine=combine_names,
        method=method,
        sample=sample,
        layers=_split(layers) or None,
        image_size=image_size,
        pool=pool,
        seed=seed,
        cost=cost,
        device=device,
        store=store_from(cache_dir),
        quiet=quiet or json_out,
        out=out,
        allow_torchscript=allow_torchscript,
        runtime=runtime,
        precision=precision,
    )
    if json_out:
        print_json(table.to_dict())
        return
    print_rank_table(table, title=f"{data}: ranking on {table.sample['n_samples']} training images")
    from headstart.console import console

    best = table.best
    console.print(f"best: {best.candidate} (combined {best.combined:.3f}: {table.combination.describe()})" if best.combined is not None else f"best: {best.candidate}")
    if out is not None:
        console.print(f"wrote {Path(out) / 'rank.json'}, rank.csv, manifest.json and report.html")


def register(app: typer.Typer) -> None:
    """Add ``headstart rank`` to the app."""
    app.command("rank")(rank_cmd)
