"""``headstart export``: a classification bundle as one ONNX or torch.export (``.pt2``) graph, checked against the bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.commands.common import AllowTorchScript, Json, TrustRemoteCode, print_json


def export_cmd(
    bundle: Annotated[Path, typer.Argument(help="A classification bundle folder, or the --out folder of a probe or finetune run (its best bundle).")],
    format: Annotated[str, typer.Option("--format", help="onnx (for onnxruntime and other runtimes) or pt2 (torch.export).")] = "onnx",
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="File to write (a folder for a text model's ONNX export). Default: model.onnx / model.pt2 / model-onnx beside the bundle folder."),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    trust_remote_code: TrustRemoteCode = False,
    allow_torchscript: AllowTorchScript = False,
    json_out: Json = False,
) -> None:
    """Export a bundle (images: uint8 pixels in, probabilities out; texts: token ids in) with its calibration, and check it against the bundle."""
    from headstart.bundles.export import export_bundle
    from headstart.console import console

    result = export_bundle(bundle, out, format, opset=opset, trust_remote_code=trust_remote_code, allow_torchscript=allow_torchscript, quiet=False)
    if json_out:
        print_json(result.to_dict())
        return
    meta = result.metadata
    what = "uint8 images (N, 3, {0}, {0})".format(meta["input_size"]) if meta["modality"] == "image" else "token ids " + ", ".join(meta.get("input_names", []))
    console.print(
        f"wrote {result.path}: {what} -> probabilities over {len(meta['classes'])} classes; "
        f"largest difference from the bundle's probabilities on a check batch: {result.max_difference:.1e}",
        markup=False, highlight=False, soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``headstart export`` to the CLI."""
    app.command("export")(export_cmd)
