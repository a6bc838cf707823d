"""Options and helpers shared by every command module (same names, same meaning everywhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

# Options shared by every command that reads data: same names, same meaning.
PerClass = Annotated[Optional[int], typer.Option("--per-class", help="Keep at most N training examples per class.")]
ImageSize = Annotated[Optional[int], typer.Option("--image-size", help="Input size in pixels (overrides the backbone's).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for splits, subsamples and training.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (messages go to stderr).")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Output directory (run directory or bundle).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Feature store folder (default: $HEADSTART_CACHE or ~/.cache/headstart).")]
TextColumn = Annotated[Optional[str], typer.Option("--text-column", help="Column holding the text in a .csv/.tsv/.jsonl table (default: text).")]
LabelColumn = Annotated[str, typer.Option("--label-column", help="Column holding the label in a .csv/.tsv/.jsonl table.")]
Encoding = Annotated[
    Optional[str], typer.Option("--encoding", help="A text table's encoding when it is not UTF-8: cp1252, latin-1, utf-16, ... (default: UTF-8).")
]
Prior = Annotated[
    str,
    typer.Option("--prior", help="data: correct the head to the class frequencies the training split had before --per-class balanced it; uniform: keep the balanced sample's."),
]
Calibrate = Annotated[
    bool,
    typer.Option("--calibrate/--no-calibrate", help="Fit a temperature on held-out predictions and save it in the bundle (it never changes the predicted class)."),
]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Let hf:/st: model folders run the code they ship (off by default; read it first).")]
AllowTorchScript = Annotated[
    bool, typer.Option("--allow-torchscript", help="Let a file: TorchScript backbone load; it runs the code it holds (off by default).")
]

Runtime = Annotated[
    Optional[str],
    typer.Option(
        "--runtime",
        help="How the CPU runs the network: torch, onnx (the trunk exported once, run by onnxruntime) or auto "
        "(times one batch on each path once per CPU and backbone, keeps the fastest that agrees with torch fp32). "
        "Default: $HEADSTART_RUNTIME, else auto; on a GPU, torch.",
    ),
]
Precision = Annotated[
    Optional[str], typer.Option("--precision", help="fp32, or bf16 (torch autocast with channels_last; CPUs with bf16 units only). Default: the runtime's.")
]


def print_json(data) -> None:
    """Print JSON on stdout (and nothing else there)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def store_from(cache_dir: Path | None):
    """The feature store at ``cache_dir`` (or the default one)."""
    from headstart.features import FeatureStore

    return FeatureStore(cache_dir)


def table(title: str, columns: list[str], rows: list[list]) -> None:
    """Print a rich table on stdout."""
    from rich.table import Table
    from rich.text import Text

    from headstart.console import console

    # Cells are Text, not markup: a class or file name such as "[red]x" or "[/x]" prints as it is.
    output = Table(title=Text(title))
    for column in columns:
        output.add_column(Text(column))
    for row in rows:
        output.add_row(*[Text("" if v is None else str(v)) for v in row])
    console.print(output)


