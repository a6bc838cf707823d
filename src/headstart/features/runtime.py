"""How extraction runs on the CPU: torch fp32, torch bf16 autocast, or ONNX Runtime; ``auto`` picks one.

``runtime`` (``--runtime``) and ``precision`` (``--precision``) of :func:`headstart.features.extract`:

* ``torch``: the torch network, fp32 (BatchNorm folded, channels_last); ``--precision bf16`` runs it
  under ``torch.autocast("cpu", torch.bfloat16)``, on CPUs with bf16 units only (avx512_bf16 or
  amx_bf16 in /proc/cpuinfo).
* ``onnx``: the trunk at the requested layer, pooling and input size is exported once with
  :func:`~headstart.backbones.onnx_adapter.export_trunk` and cached as
  ``$HEADSTART_CACHE/onnx/<digest>-<layer>-<pool>-<size>.onnx`` (the digest covers the backbone
  name and weights sha256), with a record beside it holding the file's sha256, checked before every
  load. onnxruntime then runs it on the same DataLoader batches as torch.
* ``auto`` (the default on the CPU; on a GPU it means torch with bf16 autocast): features already in
  the store under one of the paths are read back; else an earlier decision for this CPU model,
  thread count, backbone, layer, pooling and input size is reused; else, for jobs of at least
  :data:`AUTO_MIN_ITEMS` items, one warm-up and one timed batch on each available path (torch fp32,
  torch bf16 where the CPU has bf16 units, onnx where onnxruntime is installed) pick the fastest
  whose features agree with torch fp32 (min cosine >= :data:`AGREEMENT`), and the decision is saved
  in ``$HEADSTART_CACHE/runtime/``. Smaller jobs run torch fp32 untimed: an export costs seconds.

``$HEADSTART_RUNTIME`` sets the default of ``runtime``. The store key holds the runtime and
precision used (torch fp32 keys are those of earlier versions). ``onnx:`` backbones already run
in onnxruntime and ignore both options; text encoders run in torch (fp32 under ``auto``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headstart.backbones import Backbone
from headstart.backbones.packaged import sha256_file
from headstart.backbones.spec import BackboneSpec
from headstart.errors import CacheError, HeadstartError, OptionError, require
from headstart.io import atomic_write_json, fsync_dir

RUNTIMES = ("auto", "torch", "onnx")
PRECISIONS = ("fp32", "bf16")
RUNTIME_ENV = "HEADSTART_RUNTIME"
# auto keeps a path only when its features agree with torch fp32's on the timed batch.
AGREEMENT = 0.9999
# Below this many items auto runs torch fp32 without timing (unless a decision exists): an ONNX
# export alone takes seconds (MobileNetV2: about 10 s), more than a small job can win back.
AUTO_MIN_ITEMS = 1000
TRUNKS_DIR = "onnx"  # under the store's local root: the exported ONNX trunks
DECISIONS_DIR = "runtime"  # under the store's local root: auto's recorded decisions


@dataclass(frozen=True)
class Choice:
    """The path an extraction runs: ``runtime`` (torch or onnx), ``precision`` (fp32 or bf16), and why."""

    runtime: str = "torch"
    precision: str = "fp32"
    reason: str = "default"
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "precision": self.precision, "reason": self.reason, "timings": self.timings}


def default_runtime() -> str:
    """``$HEADSTART_RUNTIME``, else ``auto``."""
    return os.environ.get(RUNTIME_ENV) or "auto"


def check_runtime(runtime: str | None, precision: str | None) -> None:
    """Refuse an unknown runtime or precision name, before any work."""
    value = runtime if runtime is not None else default_runtime()
    if value not in RUNTIMES:
        where = f"${RUNTIME_ENV}" if runtime is None else "--runtime"
        raise OptionError(f"{where} {value!r} is not one of {', '.join(RUNTIMES)}.")
    if precision is not None and precision not in PRECISIONS:
        raise OptionError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")


def cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and flags, from /proc/cpuinfo (platform.processor() and no flags elsewhere)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown CPU", flags


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic units (avx512_bf16 or amx_bf16)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()[1])


def onnx_available() -> bool:
    """Whether onnxruntime and the exporter's onnxscript are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript"))


def paths(spec: BackboneSpec, device: str, runtime: str | None, precision: str | None, compile: bool = False) -> tuple[list[tuple[str, str]], str]:
    """The ``(runtime, precision)`` paths an extraction may take, in order, and why.

    One path means the choice is made; several mean ``auto`` times them (torch fp32 first).

    Raises:
        OptionError: A path that cannot run here was asked for.
        MissingDependencyError: ``runtime="onnx"`` without onnxruntime installed.
    """
    check_runtime(runtime, precision)
    runtime = runtime or default_runtime()
    if str(device).startswith("cuda"):
        if runtime == "onnx":
            raise OptionError("--runtime onnx runs on the CPU; drop --device cuda, or use --runtime torch on the GPU.")
        if precision == "fp32":
            raise OptionError("--precision fp32 applies to the CPU; on a GPU extraction runs bf16 autocast. Drop --precision, or add --device cpu.")
        return [("torch", "bf16")], "GPU: torch with bf16 autocast"
    if spec.source == "onnx":
        return [("torch", "fp32")], "onnx: backbone, already run by onnxruntime"
    if runtime == "onnx":
        if precision == "bf16":
            raise OptionError("--precision bf16 runs through torch autocast; ONNX Runtime runs fp32 here. Use --runtime torch --precision bf16, or drop --precision.")
        if spec.modality != "image":
            raise OptionError(f"--runtime onnx exports image trunks; {spec.name} is a {spec.modality} model. Use --runtime torch.")
        if compile:
            raise OptionError("--compile applies to the torch runtime; drop --compile or --runtime onnx.")
        require("onnxruntime", "onnx")
        require("onnxscript", "onnx")
        return [("onnx", "fp32")], "asked for"
    if runtime == "torch" or precision == "bf16":
        precision = precision or "fp32"
        if precision == "bf16" and not cpu_has_bf16():
            raise OptionError(f"--precision bf16 needs a CPU with bf16 units (avx512_bf16 or amx_bf16); {cpu_flags()[0]} has none. Use --precision fp32.")
        return [("torch", precision)], "asked for"
    if spec.modality != "image" or compile:
        return [("torch", "fp32")], "auto: torch fp32 for " + ("--compile" if compile else f"{spec.modality} models")
    options = [("torch", "fp32")]
    if precision is None and cpu_has_bf16():
        options.append(("torch", "bf16"))
    if onnx_available():
        options.append(("onnx", "fp32"))
    return options, "auto"


def choose(
    backbone: Backbone, spec: BackboneSpec, layer: str, pool: str, device: str, runtime: str | None, precision: str | None, *,
    n_items: int, is_stored: Callable[[str, str], bool], sample: Callable[[], Any], root: Path, compile: bool = False, quiet: bool = False,
) -> Choice:
    """The path to run (see the module docstring); ``is_stored(runtime, precision)`` says whether the store has those features.

    ``sample()`` returns one batch of the job's inputs; it is called only when ``auto`` times the paths.
    """
    options, reason = paths(spec, device, runtime, precision, compile)
    if len(options) == 1:
        return Choice(*options[0], reason=reason)
    ident = {
        "cpu": cpu_flags()[0], "threads": torch.get_num_threads(), "backbone": spec.name, "weights_sha256": spec.sha256,
        "layer": layer, "pool": pool, "input_size": spec.input_size,
    }
    record = root / DECISIONS_DIR / f"{_digest(ident)}.json"
    decided = _read_json(record)
    earlier = (decided.get("runtime"), decided.get("precision")) if decided.get("ident") == ident else None
    for path in ([earlier] if earlier in options else []) + options:
        if is_stored(*path):
            return Choice(*path, reason="auto: these features are already stored")
    if earlier in options:
        return Choice(*earlier, reason="auto: decided earlier on this CPU", timings=decided.get("timings", {}))
    if n_items < AUTO_MIN_ITEMS:
        return Choice("torch", "fp32", reason=f"auto: under {AUTO_MIN_ITEMS} items, not timed")
    choice = time_paths(backbone, spec, layer, pool, options, sample(), root, quiet)
    try:
        atomic_write_json(record, {"ident": ident, "runtime": choice.runtime, "precision": choice.precision, "timings": choice.timings})
    except OSError:  # an unwritable cache: the choice holds for this run, the next one times again
        pass
    if not quiet:
        from headstart.console import err_console

        rates = ", ".join(_describe(label, t) for label, t in choice.timings.items())
        err_console.print(f"runtime auto: images/s on one batch: {rates}; using {choice.label}.", markup=False, highlight=False)
    return choice


def time_paths(backbone: Backbone, spec: BackboneSpec, layer: str, pool: str, options: list[tuple[str, str]], batch: Any, root: Path, quiet: bool) -> Choice:
    """One warm-up and one timed pass of ``batch`` on each path; the fastest that agrees with torch fp32 (the first path)."""
    cpu = torch.device("cpu")
    backbone = backbone.to(cpu).eval()
    backbone.to(memory_format=torch.channels_last)
    batch = batch.to(cpu).contiguous(memory_format=torch.channels_last)
    timings: dict[str, Any] = {}
    kept: list[tuple[float, str, str]] = []
    reference = None
    for runtime, precision in options:
        label = f"{runtime} {precision}"
        try:
            runner = runner_for(backbone, spec, layer, pool, Choice(runtime, precision), cpu, root=root, quiet=quiet)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                runner.features(batch, layer, pool)
                start = time.perf_counter()
                out = runner.features(batch, layer, pool).float()
                seconds = max(time.perf_counter() - start, 1e-9)
        except HeadstartError as exc:  # an export or a session that fails: auto skips that path
            timings[label] = {"skipped": str(exc)[:200]}
            continue
        reference = out if reference is None else reference
        cosine = min_cosine(out, reference)
        timings[label] = {"images_per_s": round(len(batch) / seconds, 1), "min_cosine": round(cosine, 7)}
        if cosine >= AGREEMENT:
            kept.append((seconds, runtime, precision))
    if not kept:  # every path failed or disagreed (NaN features, say): the reference path, untimed
        return Choice("torch", "fp32", reason="auto: no timed path agreed with torch fp32", timings=timings)
    _, runtime, precision = min(kept)
    return Choice(runtime, precision, reason="auto: fastest on one timed batch", timings=timings)


def _describe(label: str, timing: dict[str, Any]) -> str:
    if "images_per_s" not in timing:
        return f"{label} skipped"
    agrees = "" if timing["min_cosine"] >= AGREEMENT else f" (min cosine {timing['min_cosine']:.6f} < {AGREEMENT}: not kept)"
    return f"{label} {timing['images_per_s']:.0f}{agrees}"


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest row-wise cosine similarity of two feature batches (rows that are zero in both count as equal)."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    both_zero = (na == 0) & (nb == 0)
    cosine = (a * b).sum(dim=1) / (na * nb).clamp_min(1e-300)
    cosine[both_zero] = 1.0
    return float(cosine.min()) if len(cosine) else 1.0


def runner_for(
    backbone: Backbone, spec: BackboneSpec, layer: str, pool: str, choice: Choice, device: torch.device, *, root: Path, compile: bool = False, quiet: bool = False,
):
    """What runs the batches: an object with ``features(x, layer, pool)``, as :meth:`Backbone.features`.

    onnx: the cached trunk in onnxruntime. torch: the network compiled, or on the CPU with its
    BatchNorm folded (pooled image features), or as it is. bf16 autocast is the caller's.
    """
    if choice.runtime == "onnx":
        return OnnxTrunk(onnx_trunk(backbone, spec, layer, pool, root, quiet), spec.name)
    if compile:
        return compiled(backbone, quiet)
    if device.type == "cpu" and layer == spec.default_layer and spec.modality == "image":
        return fused_for_cpu(backbone)
    return backbone


class OnnxTrunk:
    """A cached ONNX trunk in onnxruntime, used like a :class:`Backbone` at the layer and pooling it was exported with."""

    def __init__(self, path: Path, name: str) -> None:
        from headstart.backbones.onnx_adapter import OnnxRuntimeNetwork

        self.path = path
        self.network = OnnxRuntimeNetwork(path, "features", "NCHW", f"the ONNX trunk of {name} ({path.name})")

    def features(self, x: torch.Tensor, layer: str | None = None, pool: str = "avg") -> torch.Tensor:
        return self.network(x)


def trunk_path(spec: BackboneSpec, layer: str, pool: str, root: Path) -> Path:
    """Where the ONNX trunk of ``spec`` at ``layer``, ``pool`` and ``spec.input_size`` is cached."""
    ident: dict[str, Any] = {"backbone": spec.name, "weights_sha256": spec.sha256}
    if str(spec.sha256).startswith("random-init"):
        from headstart.versions import package_versions

        versions = package_versions()
        ident["init_versions"] = {name: versions.get(name) for name in ("torch", "timm", "torchvision") if name in versions}
    safe_layer = re.sub(r"[^A-Za-z0-9._-]", "_", layer)
    return root / TRUNKS_DIR / f"{_digest(ident)}-{safe_layer}-{pool}-{spec.input_size}.onnx"


def onnx_trunk(backbone: Backbone, spec: BackboneSpec, layer: str, pool: str, root: Path, quiet: bool = False) -> Path:
    """The cached ONNX trunk, exported now when it is missing or does not hash to its recorded sha256.

    The export goes to a temporary folder beside the cache and is renamed into place; the record
    (``.json`` beside it: the sidecar spec plus the file's sha256) is written last.

    Raises:
        OptionError: The network cannot be exported (torch.export fails on it).
        CacheError: The cache folder cannot be written.
    """
    path = trunk_path(spec, layer, pool, root)
    record_path = path.with_suffix(".json")
    record = _read_json(record_path)
    if path.is_file() and record.get("sha256"):
        if sha256_file(path) == record["sha256"]:
            return path
        _say(f"the cached ONNX trunk {path} does not match its recorded sha256; exporting it again.", quiet)
    from headstart.backbones.onnx_adapter import OPSET, export_trunk

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=".export-"))
    except OSError as exc:
        raise CacheError(
            f"Cannot write the ONNX trunk cache {path.parent} ({getattr(exc, 'strerror', None) or exc}). "
            "Set HEADSTART_CACHE to a writable folder, or pass --cache-dir."
        ) from None
    try:
        _say(f"exporting {spec.name} ({layer}, {spec.input_size} px) to ONNX once: {path}", quiet)
        exported = export_trunk(backbone, scratch / "trunk.onnx", spec.input_size, layer=layer, pool=pool)
        with open(exported, "rb+") as handle:
            os.fsync(handle.fileno())
        side = _read_json(exported.with_suffix(".json"))
        digest = sha256_file(exported)
        os.replace(exported, path)
        fsync_dir(path.parent)
        atomic_write_json(record_path, {**side, "sha256": digest, "layer": layer, "pool": pool, "opset": OPSET, "torch": torch.__version__})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def fused_for_cpu(backbone: Backbone) -> Backbone:
    """A copy of the backbone with BatchNorm folded into the convolutions, for CPU inference.

    Folding removes a pass over every activation map (MobileNetV2: about 1.5x faster on 2 cores) and
    changes features by about 1e-5. Models that torch.fx cannot trace (timm's TF-padded
    EfficientNets) run unfused.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(copy.deepcopy(backbone.model).eval())
    except Exception:  # noqa: BLE001 - fx raises several error types on untraceable code; run unfused then
        return backbone
    return Backbone(fused.to(memory_format=torch.channels_last), backbone.spec, None).eval()


def compiled(backbone: Backbone, quiet: bool) -> Backbone:
    """``torch.compile`` the backbone's network; the compile itself happens on the first batch.

    A network that an earlier call compiled is used as it is (compiling it again would wrap it twice).
    """
    if hasattr(backbone.model, "_orig_mod"):  # torch.compile's wrapper holds the original there
        return backbone
    backbone.model = torch.compile(backbone.model)
    _say("torch.compile: the first batch includes compilation; it pays off only on large jobs.", quiet)
    return backbone


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        from headstart.console import err_console

        err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def derived_dirs(root: Path) -> list[Path]:
    """The folders of derived files under a store's local root (ONNX trunks, auto's decisions): rebuilt on demand."""
    return [root / TRUNKS_DIR, root / DECISIONS_DIR]


__all__ = ["AGREEMENT", "AUTO_MIN_ITEMS", "DECISIONS_DIR", "TRUNKS_DIR", "derived_dirs", "PRECISIONS", "RUNTIMES", "Choice", "check_runtime", "choose", "cpu_has_bf16", "min_cosine", "paths"]
