"""The ``headstart`` command line. Each command maps one to one onto a Python function.

Results go to stdout (a table, or JSON with ``--json``); progress and messages go to stderr.
A user error prints one line and exits with code 2; Ctrl-C keeps what was committed and says how
to resume.
"""

from __future__ import annotations

import sys
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
    Precision,
    Prior,
    Quiet,
    Runtime,
    Seed,
    TextColumn,
    TrustRemoteCode,
    print_json,
    store_from,
    table,
)
from headstart.errors import HeadstartError


app = typer.Typer(
    name="headstart",
    help="Transfer learning from pretrained backbones: rank, extract once, probe, fine-tune, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cache_app = typer.Typer(help="Manage the on-disk feature store.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

# Feature areas add their commands from their own module: each defines register(app).
COMMAND_MODULES = (
    "headstart.commands.rank",
    "headstart.commands.finetune",
    "headstart.commands.tasks",
    "headstart.commands.report",
    "headstart.commands.export",
    "headstart.commands.auto",
)

@app.command()
def backbones(
    pattern: Annotated[Optional[str], typer.Argument(help="fnmatch pattern, e.g. 'tv:*' or '*lite*'. Default: backbones available offline.")] = None,
    json_out: Json = False,
) -> None:
    """List backbones: name, source, offline availability, parameters and feature dimension."""
    from headstart.backbones import list_backbones

    rows = list_backbones(pattern)
    if json_out:
        print_json([row.to_dict() for row in rows])
        return
    table(
        f"backbones matching {pattern!r}" if pattern else "backbones available offline",
        ["name", "source", "offline", "params", "feature dim"],
        [[r.name, r.source, "yes" if r.offline else "no", f"{r.params / 1e6:.1f}M" if r.params else None, r.feature_dim] for r in rows],
    )
    if pattern is None:
        from headstart.console import err_console

        err_console.print("Pass a pattern to list every known backbone, e.g. headstart backbones 'tv:*'.")


@app.command("extract")
def extract_cmd(
    data: Annotated[str, typer.Argument(help="Image or .txt folder, .csv/.tsv/.jsonl manifest or text table, .npz, or builtin:NAME.")],
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone name, e.g. tv:mobilenet_v2.IMAGENET1K_V1 or st:sentence-transformers/all-MiniLM-L6-v2.")],
    layer: Annotated[Optional[str], typer.Option("--layer", help="Layer to take features from (default: pooled penultimate).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="avg, max, avgmax, token or none.")] = "avg",
    per_class: PerClass = None,
    image_size: ImageSize = None,
    seed: Seed = 0,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Items per forward pass (default: 64 on CPU, fit to free memory on GPU).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="DataLoader workers for image files.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, or auto.")] = None,
    decode: Annotated[str, typer.Option("--decode", help="auto, pil or tensor (nvJPEG + batched resize on GPU).")] = "auto",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the network (pays off on large jobs only).")] = False,
    runtime: Runtime = None,
    precision: Precision = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = "label",
    encoding: Encoding = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_torchscript: AllowTorchScript = False,
    cache_dir: CacheDir = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Extract features into the store (or read them back) and print the store key."""
    from headstart.data import load_data
    from headstart.features import extract
    from headstart.features.runtime import check_runtime

    check_runtime(runtime, precision)
    dataset = load_data(data, per_class=per_class, seed=seed, text_column=text_column, label_column=label_column, encoding=encoding)
    features = extract(
        backbone, dataset, layer=layer, pool=pool, image_size=image_size, batch_size=batch_size,
        num_workers=workers, device=device, decode=decode, compile=compile_model, store=store_from(cache_dir),
        quiet=quiet or json_out, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript,
        runtime=runtime, precision=precision,
    )
    summary = features.summary()
    summary["skipped_items"] = [{"item": item, "reason": reason} for item, reason in features.skipped]
    if json_out:
        print_json(summary)
        return
    table("features", ["field", "value"], [[k, v] for k, v in summary.items() if k != "skipped_items"])
    if features.skipped:
        from headstart.console import err_console

        for item, reason in features.skipped:
            err_console.print(f"skipped {item}: {reason}", markup=False, highlight=False, soft_wrap=True)


@app.command("probe")
def probe_cmd(
    data: Annotated[str, typer.Argument(help="Image or .txt folder, .csv/.tsv/.jsonl manifest or text table, .npz, or builtin:NAME.")],
    backbone: Annotated[list[str], typer.Option("--backbone", "-b", help="Backbone name; repeat to compare several. sk:tfidf (text): TF-IDF + logistic regression on the raw texts.")],
    head: Annotated[list[str], typer.Option("--head", help="linear, knn or mlp; repeat to compare several (sk:tfidf trains with linear only).")] = ["linear"],  # noqa: B006
    layer: Annotated[Optional[str], typer.Option("--layer", help="Layer to probe (default: pooled penultimate).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="avg, max, avgmax, token or none.")] = "avg",
    per_class: PerClass = None,
    prior: Prior = "data",
    calibrate: Calibrate = True,
    image_size: ImageSize = None,
    seed: Seed = 0,
    out: Out = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = "label",
    encoding: Encoding = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_torchscript: AllowTorchScript = False,
    runtime: Runtime = None,
    precision: Precision = None,
    cache_dir: CacheDir = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Extract (or reuse) features, fit heads, calibrate them, evaluate on the test split, and write bundles."""
    from headstart.data import load_data
    from headstart.workflows.calibration import check_calibration_options
    from headstart.features.runtime import check_runtime
    from headstart.workflows.probe import print_probe_table, probe

    check_calibration_options(prior)
    check_runtime(runtime, precision)

    dataset = load_data(data, per_class=per_class, seed=seed, text_column=text_column, label_column=label_column, encoding=encoding)
    out = out or Path("runs") / f"probe-{time.strftime('%Y%m%d-%H%M%S')}"
    report = probe(
        dataset, backbone, head, layer=layer, pool=pool, image_size=image_size, seed=seed, out=out,
        store=store_from(cache_dir), quiet=quiet or json_out, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript,
        prior=prior, calibrate=calibrate, runtime=runtime, precision=precision,
    )
    from headstart.console import err_console

    for skip in report.skipped_runs:
        err_console.print(f"skipped {skip['backbone']} + {skip['head']}: {skip['reason']}", markup=False, highlight=False, soft_wrap=True)
    if json_out:
        print_json(report.to_dict())
        return
    print_probe_table(report.runs, title=f"{data}: test accuracy")
    from headstart.console import console

    best = report.best
    console.print(f"best: {best.backbone} + {best.head} ({best.test.accuracy:.3f}); bundle: {out / 'bundle'}", markup=False, highlight=False)


@app.command("predict")
def predict_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder, the --out folder of a probe, finetune, detect or segment run (its best bundle), or a model.onnx from headstart export.")],
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Image files or folders of images; for a text bundle, the texts themselves. - reads one per line from stdin.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Read inputs from a file: one per line, or a .csv/.tsv/.jsonl column (--text-column).")] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="Column holding the text when --file is a .csv/.tsv/.jsonl table.")] = "text",
    top_k: Annotated[int, typer.Option("--top-k", help="Probabilities to show per input.")] = 3,
    trust_remote_code: TrustRemoteCode = False,
    allow_torchscript: AllowTorchScript = False,
    json_out: Json = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for predictions.json and, for detection and segmentation bundles, images with boxes drawn or masks and overlays.")] = None,
) -> None:
    """Predict with a saved bundle (classification, detection or segmentation); unreadable inputs are reported and skipped."""
    from headstart.bundles import locate_bundle
    from headstart.bundles.onnx_model import load_predictor
    from headstart.data.dataset import IMAGE_EXTENSIONS
    from headstart.data.text_sources import read_texts
    from headstart.io import check_out_dir

    check_out_dir(out)
    bundle, in_run = locate_bundle(bundle)
    if in_run:
        from headstart.console import err_console

        err_console.print(f"using bundle {bundle} (the run's best)", markup=False, highlight=False, soft_wrap=True)
    model = load_predictor(bundle, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript)
    is_text = model.spec.modality == "text"
    given: list[str] = []
    skipped_lines: list[tuple[str, str]] = []
    for item in inputs or []:
        if item == "-":
            lines, bad = read_texts("-")
            given += lines
            skipped_lines += bad
        else:
            given.append(item)
    if file is not None:
        lines, bad = read_texts(file, text_column=text_column)
        given += lines
        skipped_lines += bad
    for where, reason in skipped_lines:
        from headstart.console import err_console

        err_console.print(f"skipped {where}: {reason}", markup=False, highlight=False)
    paths: list[str] = []
    for item in given:
        path = Path(item)
        if not is_text and path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            paths.append(item)
    if not paths:
        what = "texts" if is_text else "images"
        raise HeadstartError(
            f"No {what} to predict on. Give them as arguments, with --file PATH, or on stdin with - "
            f"(e.g. echo 'some text' | headstart predict {bundle} -)."
        )
    results = model.predict_batch(paths, top_k=top_k)
    if out is not None:
        write_outputs = getattr(model, "write_outputs", None)
        if write_outputs is not None:
            write_outputs(results, out)
        else:
            from headstart.io import atomic_write_json

            atomic_write_json(out / "predictions.json", {"task": "classification", "bundle": str(bundle), "predictions": [r.to_dict() for r in results]})
    if json_out:
        print_json([r.to_dict() for r in results])
    elif csv_out:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["input", "label", "p", "top_k", "error"])
        for r in results:
            top = ";".join(f"{label}:{p:.4f}" for label, p in r.top_k)
            writer.writerow([r.input, r.label or "", f"{r.top_k[0][1]:.4f}" if r.top_k else "", top, r.error or ""])
    else:
        table(f"predictions ({bundle})", ["input", "label", "top-k", "error"], [
            [_short(r.input), r.label, ", ".join(f"{label} {p:.2f}" for label, p in r.top_k), r.error] for r in results
        ])
    failed = [r for r in results if r.error]
    if failed:
        from headstart.console import err_console

        err_console.print(f"{len(failed)} of {len(results)} input(s) could not be read; the others were predicted.")
        if len(failed) == len(results):
            raise typer.Exit(2)


def _short(text: str, width: int = 80) -> str:
    """One line of at most ``width`` characters, for tables."""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


@app.command("demo")
def demo_cmd(
    out: Out = None,
    per_class: Annotated[int, typer.Option("--per-class", help="Training images per class.")] = 100,
    image_size: Annotated[int, typer.Option("--image-size", help="Input size in pixels.")] = 112,
    budget: Annotated[str, typer.Option("--budget", help="headstart auto's budget (10m, 90s); the default keeps the demo under 5 minutes on 2 cores.")] = "3m",
    seed: Seed = 0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Offline end-to-end demo on built-in Animal-MNIST: headstart auto (rank, probe, fine-tune, choose) and a random-init control."""
    from headstart.workflows.auto_plan import parse_budget
    from headstart.workflows.demo import run_demo

    parse_budget(budget)
    result = run_demo(out=out or Path("runs/demo"), per_class=per_class, image_size=image_size, seed=seed, quiet=quiet or json_out, budget=budget)
    if json_out:
        print_json(result)


@cache_app.command("ls")
def cache_ls(cache_dir: CacheDir = None, json_out: Json = False) -> None:
    """List committed store entries."""
    entries = [e.to_dict() for e in store_from(cache_dir).ls()]
    if json_out:
        print_json(entries)
        return
    table("feature store", ["key", "backbone", "layer", "pool", "shape", "MB"], [
        [e["key"][:16], e["backbone"], e["layer"], e["pool"], "x".join(map(str, e["shape"] or [])), f"{e['bytes'] / 1e6:.1f}"] for e in entries
    ])


@cache_app.command("du")
def cache_du(cache_dir: CacheDir = None, json_out: Json = False) -> None:
    """Print the store's size on disk: features, and the ONNX trunks and runtime decisions beside them."""
    store = store_from(cache_dir)
    features = store.du()
    derived = sum(_tree_bytes(folder) for folder in _derived_dirs(store))
    if json_out:
        print_json({"path": str(store.root), "bytes": features + derived, "features_bytes": features, "onnx_and_runtime_bytes": derived})
    else:
        typer.echo(f"{(features + derived) / 1e6:.1f} MB in {store.root} (features {features / 1e6:.1f} MB, ONNX trunks and runtime decisions {derived / 1e6:.1f} MB)")


def _derived_dirs(store) -> list[Path]:
    """The store's folders of derived files (ONNX trunks, auto's runtime decisions), where the store is on local disk."""
    from headstart.features.runtime import derived_dirs

    return derived_dirs(store.root) if isinstance(store.root, Path) else []


def _tree_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


@cache_app.command("rm")
def cache_rm(
    key: Annotated[Optional[str], typer.Argument(help="Key or key prefix of the entry to remove.")] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Remove every entry.")] = False,
    cache_dir: CacheDir = None,
    json_out: Json = False,
) -> None:
    """Remove store entries by key prefix, or all of them."""
    if not key and not all_entries:
        raise HeadstartError("Name a key (or key prefix) to remove, or pass --all. See: headstart cache ls.")
    store = store_from(cache_dir)
    removed = store.rm(key, everything=all_entries)
    if all_entries:  # the ONNX trunks and runtime decisions are derived files: --all clears them too
        import shutil

        for folder in _derived_dirs(store):
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(f"{folder.name}/")
    if json_out:
        print_json({"removed": removed})
    else:
        typer.echo(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")


def _register_commands() -> None:
    import importlib
    import importlib.util

    for module_name in COMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(app)


_register_commands()


RESUME_HINT = "interrupted: committed feature shards and the last checkpoint are kept; run the same command again to resume."


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's usage-error base class, from typer's vendored click and from click itself when installed."""
    types: list[type[BaseException]] = []
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        types.append(VendoredClickException)
    except ImportError:
        pass
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


DEBUG_FLAG = "--debug"


def _take_debug_flag(argv: list[str]) -> bool:
    """Remove ``--debug`` from anywhere on the command line (before ``--``); True if it was there."""
    cut = argv.index("--") if "--" in argv else len(argv)
    found = DEBUG_FLAG in argv[1:cut]
    if found:
        argv[:] = [argv[0], *(a for a in argv[1:cut] if a != DEBUG_FLAG), *argv[cut:]]
    return found


def _error_line(prefix: str, message: str):
    """``prefix`` in bold red, then ``message`` as plain text: a class or file name like ``[red]x`` prints as it is."""
    from rich.text import Text

    return Text.assemble((prefix, "bold red"), " ", message)


def main() -> None:
    """Console-script entry point: the CLI contract.

    Bad input: one line that names the problem and the fix, exit 2. Ctrl-C: the resume hint, exit
    130. Anything unexpected: one line with the ``--debug`` hint, exit 1; ``--debug`` (anywhere on the
    command line, or ``HEADSTART_DEBUG=1``) shows the traceback instead.
    """
    import os

    from headstart.console import err_console

    debug = _take_debug_flag(sys.argv) or os.environ.get("HEADSTART_DEBUG", "0") == "1"
    usage_errors = _usage_error_types()
    try:
        result = app(standalone_mode=False)
    except HeadstartError as exc:
        if debug:
            err_console.print_exception()
        err_console.print(_error_line("error:", " ".join(str(exc).split())), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print(RESUME_HINT, soft_wrap=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except usage_errors as exc:
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a traceback by default
        if debug:
            err_console.print_exception()
            sys.exit(1)
        detail = " ".join(str(exc).split())[:300]
        err_console.print(
            _error_line("internal error:", f"{type(exc).__name__}: {detail} (a bug in headstart: rerun with {DEBUG_FLAG} for the traceback, and report it)"),
            highlight=False, soft_wrap=True,
        )
        sys.exit(1)
    if isinstance(result, int) and result != 0:
        if result == 130:
            err_console.print(RESUME_HINT, soft_wrap=True)
        sys.exit(result)


if __name__ == "__main__":  # pragma: no cover
    main()
