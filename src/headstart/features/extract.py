"""Extract features from a backbone into the feature store, or read them back when stored.

``extract`` is the single path from data to features. It runs batched under
``torch.inference_mode``, with DataLoader workers for files, and on a GPU with channels_last and
bf16 autocast. Work is committed shard by shard, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart.backbones import Backbone, load_backbone
from headstart.backbones.registry import allows_remote_code
from headstart.backbones.spec import BackboneSpec
from headstart.data.dataset import Dataset
from headstart.data.transforms import decode_file, preprocess_array_batch, preprocess_pil
from headstart.features.runtime import Choice, choose, fused_for_cpu, runner_for  # noqa: F401 - fused_for_cpu: kept importable here
from headstart.features.store import FeatureStore, default_root, make_key

DEFAULT_SHARD_SIZE = 2048
# The input sizes extraction accepts: below 16 px the networks' strides leave nothing; above 4096 px
# one image is hundreds of MB of activations, so a typo (100000) is refused before any work.
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 4096


@dataclass
class Features:
    """Features for every item of a dataset, row-aligned with it.

    Attributes:
        X: Features (N, D); rows of items that failed to decode are zeros.
        valid: Whether each row decoded (N,).
        labels: The dataset's labels (N,) or (N, L).
        split: The split of each row (N,).
        classes: Class names.
        key: The store key.
        path: The store entry folder.
        hit: True when the features were read back without running the network.
        seconds: Wall time of this call.
        skipped: ``(item, reason)`` for every item that was dropped or failed to decode.
        spec: The backbone spec (with the input size used).
        layer: The layer the features come from.
        pool: The pooling used.
    """

    X: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    classes: list[str]
    key: str
    path: Path
    hit: bool
    seconds: float
    spec: BackboneSpec
    layer: str
    pool: str
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    runtime: Choice = field(default_factory=Choice)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.X.shape)

    def get(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of one split, without the rows that failed to decode."""
        mask = (self.split == split) & self.valid
        return self.X[mask], self.labels[mask]

    def summary(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path),
            "backbone": self.spec.name,
            "layer": self.layer,
            "pool": self.pool,
            "image_size": self.spec.input_size,
            "shape": list(self.shape),
            "skipped": len(self.skipped),
            "seconds": round(self.seconds, 3),
            "hit": self.hit,
            "runtime": self.runtime.runtime,
            "precision": self.runtime.precision,
            "runtime_reason": self.runtime.reason,
        }


def pick_device(device: str | None = None) -> torch.device:
    """``cuda`` when available (or when asked), else ``cpu``: :func:`headstart.device.torch_device`."""
    from headstart.device import torch_device

    return torch_device(device)


# The store key's fields, in one place (docs/security.md describes them). A field is added only when
# a value other than its default changes the features.
def precision_for(device: str | None) -> str:
    """The arithmetic extraction uses on ``device``: bf16 autocast on a GPU, fp32 on the CPU."""
    return "bf16" if str(device or "cpu").startswith("cuda") else "fp32"


def key_parts(
    spec: BackboneSpec, layer: str, pool: str, fingerprint: str, decode: str = "pil", device: str | None = "cpu", runtime: str = "torch", precision: str | None = None,
) -> dict[str, Any]:
    """Everything that changes a feature set; its hash is the store key.

    Fields: the backbone's name and weights sha256, the layer, the pooling, the preprocessing (input
    size, mean/std, interpolation, crop), the data's fingerprint, the runtime (torch or onnx) and the
    precision (None: bf16 on a GPU, fp32 on the CPU; they never share an entry), the decode path
    when it is not PIL (with the tensor path's resize method), and, for a seeded random
    initialisation, the versions of the libraries that draw it.
    """
    parts = {
        "backbone": spec.name,
        "weights_sha256": spec.sha256,
        "layer": layer,
        "pool": pool,
        "preprocessing": spec.preprocessing(),
        "data": fingerprint,
        "runtime": runtime,
        "precision": precision or precision_for(device),
    }
    if decode != "pil":
        parts["decode"] = decode
    if decode == "tensor":
        from headstart.features.fastpath import default_resize

        parts["resize"] = default_resize(spec, str(device or "cpu"))
    if str(spec.sha256).startswith("random-init"):
        from headstart.versions import package_versions

        versions = package_versions()
        parts["init_versions"] = {name: versions.get(name) for name in ("torch", "timm", "torchvision", "transformers") if name in versions}
    return parts


def store_key(
    spec: BackboneSpec, layer: str, pool: str, fingerprint: str, decode: str = "pil", device: str | None = "cpu", runtime: str = "torch", precision: str | None = None,
) -> str:
    """The content key of a feature set."""
    return make_key(key_parts(spec, layer, pool, fingerprint, decode, device, runtime, precision))


def stored_paths(spec: BackboneSpec, layer: str, pool: str, data, store, device, runtime: str | None = None,
                 precision: str | None = None, fingerprint: str | None = None) -> list[tuple[str, str | None]]:
    """The ``(runtime, precision)`` paths allowed here whose features of all of ``data`` are already in ``store``.

    ``spec`` carries the input size to be used. An empty list means extracting would run the network.
    """
    from headstart.features.runtime import paths

    device = str(device)
    decode = "tensor" if device.startswith("cuda") and not data.in_memory and spec.modality == "image" else "pil"
    fingerprint = fingerprint or data.fingerprint()
    allowed = paths(spec, device, runtime, precision)[0]
    return [path for path in allowed if store.meta(store_key(spec, layer, pool, fingerprint, decode, device, *path)) is not None]


class _FileImages(torch.utils.data.Dataset):
    """Decodes image files in DataLoader workers; a file that fails yields zeros and its reason."""

    def __init__(self, paths: list[str], rows: np.ndarray, spec: BackboneSpec) -> None:
        self.paths = paths
        self.rows = rows
        self.spec = spec

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int):
        row = int(self.rows[position])
        try:
            tensor = preprocess_pil(decode_file(self.paths[row], self.spec), self.spec)
            return tensor, row, ""
        except Exception as exc:  # PIL raises many types for unreadable files; report, never abort
            blank = torch.zeros(3, self.spec.input_size, self.spec.input_size)
            return blank, row, f"{type(exc).__name__}: {exc}"


def _collate(batch):
    tensors, rows, reasons = zip(*batch)
    return torch.stack(tensors), np.array(rows, dtype=np.int64), list(reasons)


def default_workers() -> int:
    """DataLoader workers for file decoding: up to 8, never more than the cores."""
    return max(0, min(8, (os.cpu_count() or 1)))


def _batches(
    backbone: Backbone, dataset: Dataset, rows: np.ndarray, spec: BackboneSpec, batch_size: int, num_workers: int | None,
    decode: str = "pil", device: torch.device | None = None,
) -> Iterator[tuple[Any, np.ndarray, list[str]]]:
    """Yield ``(inputs, rows, reasons)``: model inputs for the rows, and a failure reason per row ("" if fine).

    A backbone that is not an image model supplies its own batching through ``model.make_batches``
    (text encoders tokenise, sort by length and pad per batch there).
    """
    make_batches = getattr(backbone.model, "make_batches", None)
    if make_batches is not None:
        yield from make_batches(dataset, rows, batch_size)
        return
    if decode == "tensor" and not dataset.in_memory:
        from headstart.features.fastpath import tensor_batches

        workers = default_workers() if num_workers is None else num_workers
        yield from tensor_batches(list(dataset.items), rows, spec, batch_size, workers, device)
        return
    yield from _image_batches(dataset, rows, spec, batch_size, num_workers)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or a dict of tensors, to ``device``; 4-D image batches go channels_last."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if not isinstance(batch, torch.Tensor):
        return batch
    batch = batch.to(device, non_blocking=True)
    if batch.dim() == 4 and batch.is_floating_point():
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def _image_batches(dataset: Dataset, rows: np.ndarray, spec: BackboneSpec, batch_size: int, num_workers: int | None) -> Iterator[tuple[torch.Tensor, np.ndarray, list[str]]]:
    if dataset.in_memory:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield preprocess_array_batch(dataset.items[chunk], spec), chunk, [""] * len(chunk)
        return
    workers = default_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _FileImages(list(dataset.items), rows, spec),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def _progress(total: int, description: str, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from headstart.console import err_console

    disable = quiet or not sys.stderr.isatty()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        disable=disable,
        transient=False,
    ), description


def extract(
    backbone: Backbone | str,
    data: Dataset,
    *,
    layer: str | None = None,
    pool: str = "avg",
    image_size: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    decode: str = "auto",
    compile: bool = False,
    store: FeatureStore | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    quiet: bool = False,
    trust_remote_code: bool = False,
    allow_torchscript: bool = False,
    runtime: str | None = None,
    precision: str | None = None,
) -> Features:
    """Features of every item in ``data``, through the store.

    Args:
        backbone: A :class:`Backbone` or a backbone name.
        data: A :class:`Dataset` from :func:`headstart.load_data`.
        layer: A layer from ``backbone.spec.layers``; None takes the pooled penultimate layer.
        pool: ``avg``, ``max``, ``avgmax``, ``token`` or ``none`` (for intermediate layers).
        image_size: Override the spec's input size (small images need not be upscaled to 224).
        batch_size: Items per forward pass; None picks 64 on the CPU and, on a GPU, the largest
            batch that fits the free memory (halved on out-of-memory without losing work).
        num_workers: DataLoader workers for image files; None picks one per core (up to 8).
        device: ``cpu``, ``cuda`` or None for automatic.
        decode: ``pil`` (decode and resize per image in workers), ``tensor`` (workers read bytes;
            decode with nvJPEG on a GPU and resize as batched tensor ops), or ``auto``: ``tensor``
            on a GPU, ``pil`` on the CPU. The two differ slightly, so they have separate store keys.
        compile: ``torch.compile`` the network first; worth it only for large jobs.
        store: The store; defaults to ``FeatureStore()`` (``$HEADSTART_CACHE``).
        shard_size: Rows per committed shard.
        quiet: No progress bar.
        trust_remote_code: When ``backbone`` is an ``hf:``/``st:`` name, let its folder run the
            code it ships.
        allow_torchscript: When ``backbone`` is a ``file:`` TorchScript name, let it load (it runs
            the code it holds).
        runtime: ``torch``, ``onnx`` (the trunk exported once and run by onnxruntime, CPU only) or
            ``auto``; None reads ``$HEADSTART_RUNTIME``, else ``auto``: see :mod:`headstart.features.runtime`.
        precision: ``fp32`` or ``bf16`` (torch autocast, CPUs with bf16 units); None lets the runtime choose.

    Returns:
        :class:`Features`, row-aligned with ``data``. ``hit`` says whether the network ran.

    Raises:
        DataError: The backbone's modality is not the data's (a text encoder on images...).
        OptionError: ``backbone`` is ``sk:tfidf``, which has no fixed features to store (probe
            and rank fit it on the raw texts); or a runtime or precision that cannot run here.
    """
    started = time.perf_counter()
    if isinstance(backbone, str):
        check_not_baseline(backbone, data)
        backbone = load_backbone(
            backbone, trust_remote_code=trust_remote_code and allows_remote_code(backbone), allow_torchscript=allow_torchscript
        )
    check_modality(backbone.spec, data)
    store = store or FeatureStore()
    spec = backbone.spec.with_input_size(image_size)
    layer_name = backbone.check_layer(layer)
    check_options(backbone, layer_name, pool, image_size, decode, batch_size)
    decode_mode = decode if decode != "auto" else ("tensor" if pick_device(device).type == "cuda" else "pil")
    if data.in_memory or spec.modality != "image":
        decode_mode = "pil"  # arrays and text have no file decode step
    fingerprint = data.fingerprint()
    dev = pick_device(device)
    rank, world = rank_and_world()
    first = batch_size or 64
    root = store.root if isinstance(store.root, Path) else default_root()  # ONNX trunks and runtime decisions live on local disk

    def keyed(run: str, precision_used: str | None) -> str:
        return store_key(spec, layer_name, pool, fingerprint, decode_mode, dev.type, run, precision_used)

    choice = choose(
        backbone, spec, layer_name, pool, dev.type, runtime, precision, compile=compile, quiet=quiet,
        n_items=len(data) if world == 1 else 0,  # ranks must agree on the key: only an existing decision, never a timing
        root=root,
        is_stored=lambda run, precision_used: store.meta(keyed(run, precision_used)) is not None,
        sample=lambda: next(iter(_batches(backbone, data, np.arange(min(len(data), first)), spec, first, 0, decode_mode, dev)))[0],
    )
    key = keyed(choice.runtime, choice.precision)
    skipped_listing = list(data.skipped)

    def finish(meta, features, valid, errors, hit):
        item_name = (lambda i: f"item {i}") if data.in_memory else (lambda i: str(data.items[i]))
        skipped = skipped_listing + [(item_name(i), reason) for i, reason in errors]
        return Features(
            X=features, valid=valid, labels=data.labels, split=data.split, classes=data.classes, key=key,
            path=store.entry_dir(key), hit=hit, seconds=time.perf_counter() - started, spec=spec,
            layer=layer_name, pool=pool, fingerprint=fingerprint, skipped=skipped, runtime=choice,
        )

    stored = store.load(key)
    if stored is not None:
        return finish(*stored, hit=True)

    store.check_writable()
    n = len(data)
    n_shards = max(1, -(-n // shard_size))
    done = store.done_shards(key, n, shard_size)
    pending = [i for i in range(n_shards) if i not in done and i % world == rank]
    options = _RunOptions(layer_name, pool, batch_size, num_workers, device, decode_mode, compile, quiet, choice, root)
    _run_shards(backbone, spec, data, key, store, pending, n, shard_size, options)
    if rank != 0:
        # Rank 0 commits the entry once every rank's shards exist; the others wait for it.
        stored = _wait_for(lambda: store.load(key), f"rank 0 to commit store entry {key[:12]}")
        return finish(*stored, hit=False)
    _wait_for(lambda: len(store.done_shards(key, n, shard_size)) == n_shards or None, f"all {n_shards} shards of {key[:12]}")
    dim = store.read_shard(key, 0)[1].shape[1]
    meta = {
        "parts": key_parts(spec, layer_name, pool, fingerprint, decode_mode, dev.type, choice.runtime, choice.precision),
        "runtime": choice.to_dict(),
        "spec": spec.to_dict(),
        "source": data.source,
        "shape": [n, int(dim)],
        "n_shards": n_shards,
        "shard_size": shard_size,
    }
    store.commit(key, meta)
    stored = store.load(key)
    assert stored is not None, "a just-committed entry must load"
    return finish(*stored, hit=False)


def check_not_baseline(name: str, data: Dataset) -> None:
    """Refuse an ``sk:`` name: a baseline fitted on raw inputs has no fixed features to extract.

    Raises:
        UnknownBackboneError: An unknown ``sk:`` name.
        DataError: ``sk:tfidf`` on data that is not text.
        OptionError: ``sk:tfidf`` on text: it says to use probe or rank.
    """
    from headstart.errors import OptionError
    from headstart.heads import tfidf

    if not tfidf.is_baseline(name):
        return
    name = tfidf.check_baseline(name, data.modality, data.source)
    raise OptionError(
        f"{name} has no fixed features to extract: its vocabulary and IDF weights are fitted on the training texts, so "
        f"nothing goes to the feature store. Train it with: headstart probe DATA -b {name} (or score it with: headstart rank DATA -c {name})."
    )


def check_modality(spec: BackboneSpec, data: Dataset) -> None:
    """Refuse a backbone whose modality is not the data's, before any work.

    Raises:
        DataError: A text encoder on images, or an image backbone on texts.
    """
    from headstart.errors import DataError

    if spec.modality == data.modality:
        return
    if spec.modality == "text":
        fix = "Use an image backbone, e.g. -b tv:mobilenet_v2.IMAGENET1K_V1."
    else:
        fix = "Use a text encoder, e.g. -b st:sentence-transformers/all-MiniLM-L6-v2, or the sk:tfidf baseline (probe, rank)."
    article = "an" if spec.modality[:1] in "aeiou" else "a"
    raise DataError(f"{spec.name} is {article} {spec.modality} backbone, but {data.source} holds {data.modality} data. {fix}")


def check_options(backbone: Backbone, layer: str, pool: str, image_size: int | None, decode: str, batch_size: int | None = None) -> None:
    """Refuse option values that would fail deep inside the forward pass, with the fix."""
    from headstart.backbones.module import POOLS
    from headstart.errors import OptionError

    if pool not in POOLS:
        raise OptionError(f"--pool {pool!r} is not one of {', '.join(POOLS)}.")
    if layer == backbone.spec.default_layer and pool != "avg":
        raise OptionError(
            f"--pool {pool} applies to feature maps and tokens, but the {layer!r} layer is already pooled by the model. "
            f"Name a layer to pool yourself, e.g. --layer {backbone.spec.layers[-1] if backbone.spec.layers else '<layer>'} --pool {pool}."
        )
    if image_size is not None and backbone.spec.modality == "text":
        if image_size != backbone.spec.input_size:
            raise OptionError(f"--image-size applies to image backbones; {backbone.spec.name} is a text encoder (its max length is spec.extra['max_length']).")
    elif image_size is not None and not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise OptionError(
            f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {image_size} "
            f"(one {image_size} px image is {3 * 4 * image_size**2 / 2**30:.2g} GiB as floats); backbones are pretrained at 224-512."
        )
    if batch_size is not None and batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}; leave it out to pick one automatically.")
    if decode not in ("auto", "pil", "tensor"):
        raise OptionError(f"--decode {decode!r} is not one of auto, pil, tensor.")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``torch.distributed``, or RANK/WORLD_SIZE)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _wait_for(check, what: str):
    """Poll ``check()`` until it returns something truthy; give up after a stall of HEADSTART_WAIT_S seconds."""
    from headstart.errors import CacheError

    timeout = float(os.environ.get("HEADSTART_WAIT_S", "3600"))
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise CacheError(
                f"Waited {timeout:.0f} s for {what}; another process may have died. Run the same extraction again: "
                "completed shards are kept and only the missing ones are computed."
            )
        time.sleep(0.2)


@dataclass
class _RunOptions:
    layer: str
    pool: str
    batch_size: int | None
    num_workers: int | None
    device: str | None
    decode: str
    compile: bool
    quiet: bool
    choice: Choice
    root: Path


def auto_batch_size(backbone: Backbone, spec: BackboneSpec, device: torch.device, limit: int = 1024) -> int:
    """A batch size that fits the free GPU memory, measured from one small forward pass."""
    if device.type != "cuda":
        return 64
    if spec.modality == "text":
        return 256  # batches are sorted by length and padded per batch; 256 sentences fit any GPU
    probe = 16
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = torch.zeros(probe, 3, spec.input_size, spec.input_size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        backbone(x)
    per_item = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(8, min(limit, (free * 0.6) // per_item)))


def _forward_with_backoff(backbone: Backbone, batch: Any, options: _RunOptions, device: torch.device, state: dict[str, int]) -> torch.Tensor:
    """Run the model; on CUDA out-of-memory, halve the micro-batch and retry, losing nothing."""
    micro = state["micro"]
    size = len(batch["input_ids"]) if isinstance(batch, dict) else len(batch)
    while True:
        try:
            outs = []
            for start in range(0, size, micro):
                part = {k: v[start : start + micro] for k, v in batch.items()} if isinstance(batch, dict) else batch[start : start + micro]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or options.choice.precision == "bf16"):
                    outs.append(backbone.features(part, options.layer, options.pool).float())
            state["micro"] = micro
            return torch.cat(outs)
        except torch.cuda.OutOfMemoryError:
            if micro <= 1:
                raise
            torch.cuda.empty_cache()
            micro = max(1, micro // 2)
            from headstart.console import err_console

            err_console.print(f"out of GPU memory; retrying with micro-batches of {micro}")


def _run_shards(backbone, spec, data, key, store, pending, n, shard_size, options: _RunOptions) -> int | None:
    """Compute and commit the pending shards; return the feature width (None if nothing ran)."""
    if not pending:
        return None
    dev = pick_device(options.device)
    backbone = backbone.to(dev).eval()
    backbone.to(memory_format=torch.channels_last)  # faster for convolutions on CPU and GPU alike
    batch_size = options.batch_size or auto_batch_size(backbone, spec, dev)
    runner = runner_for(backbone, spec, options.layer, options.pool, options.choice, dev, root=options.root, compile=options.compile, quiet=options.quiet)
    rows = np.concatenate([np.arange(i * shard_size, min(n, (i + 1) * shard_size)) for i in pending])
    buffers: dict[int, dict[str, Any]] = {}
    dim = None
    state = {"micro": batch_size}
    progress, description = _progress(len(rows), f"extract {spec.name}", options.quiet)
    with progress:
        task = progress.add_task(description, total=len(rows), rate="")
        tick = time.perf_counter()
        done_rows = 0
        with torch.inference_mode():
            batches = _batches(backbone, data, rows, spec, batch_size, options.num_workers, options.decode, dev)
            for batch, batch_rows, reasons in batches:
                batch = to_device(batch, dev)
                out = _forward_with_backoff(runner, batch, options, dev, state).cpu().numpy()
                dim = out.shape[1]
                for position, row in enumerate(batch_rows):
                    shard = int(row) // shard_size
                    buf = buffers.get(shard)
                    if buf is None:
                        start = shard * shard_size
                        size = min(n, start + shard_size) - start
                        buf = buffers[shard] = {"start": start, "X": np.zeros((size, dim), np.float32), "valid": np.zeros(size, bool), "errors": [], "filled": 0}
                    local = int(row) - buf["start"]
                    if reasons[position]:
                        buf["errors"].append((int(row), reasons[position]))
                    else:
                        buf["X"][local] = out[position]
                        buf["valid"][local] = True
                    buf["filled"] += 1
                    if buf["filled"] == len(buf["X"]):
                        store.write_shard(key, shard, buf["start"], buf["X"], buf["valid"], buf["errors"])
                        del buffers[shard]
                done_rows += len(batch_rows)
                rate = done_rows / max(time.perf_counter() - tick, 1e-9)
                progress.update(task, advance=len(batch_rows), rate=f"{rate:.0f} items/s")
    assert not buffers, "every shard must be committed once all rows ran"
    return dim
