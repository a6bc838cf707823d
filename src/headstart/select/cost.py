"""What a candidate backbone costs to run: parameters, multiply-adds, images/s and peak memory.

:func:`measure_cost` runs the backbone, up to the layer the features come from, on a batch of
random inputs at the candidate's input size:

- **params**: parameters of the modules that actually run up to that layer (a backbone cut at an
  intermediate layer does not pay for the stages after it; the source classifier never counts).
- **MACs**: multiply-adds per image, from ``torch.utils.flop_counter.FlopCounterMode``
  (MACs = FLOPs / 2). Operations the counter does not know (pooling, activations) count as 0.
- **images/s**: the best of a few timed forward passes of ``batch_size`` images on this machine,
  after the measuring pass below (which warms up), under ``torch.inference_mode`` and channels_last (as extraction runs).
- **peak memory**: on CUDA, ``torch.cuda.max_memory_allocated`` over one forward pass. On the CPU,
  the peak of live tensor bytes during one forward pass, tracked by a dispatch mode that sees every
  tensor the forward allocates, plus the weights and the input batch. This is deterministic, unlike
  the process's resident set, which the allocator's caching blurs; scratch buffers that kernels
  allocate internally are not seen, so it is a lower bound.

:func:`pareto_front` marks the candidates that no other candidate beats on both predicted quality
and cost.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from headstart.backbones import Backbone

__all__ = ["Cost", "measure_cost", "pareto_front"]


@dataclass(frozen=True)
class Cost:
    """The measured cost of one candidate (a backbone up to a layer, at an input size).

    Attributes:
        params: Parameters of the modules that run up to the candidate's layer.
        macs: Multiply-adds per image at ``image_size``.
        images_per_s: Measured forward throughput at ``batch_size`` on ``device``.
        peak_memory_bytes: Peak memory of one forward pass of ``batch_size`` images (see the
            module docstring for how it is measured on each device).
        image_size: Input side in pixels.
        batch_size: Images per timed forward pass.
        device: ``cpu`` or ``cuda``.
        threads: torch's intra-op threads during the measurement (CPU).
    """

    params: int
    macs: int
    images_per_s: float
    peak_memory_bytes: int
    image_size: int
    batch_size: int
    device: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _PeakTensorMemory(TorchDispatchMode):
    """Track the bytes of live tensors allocated by the operations run inside the mode.

    Every operation's output storage is counted once when it first appears and released when the
    last output tensor that shares it is garbage-collected; ``peak`` is the highest total seen.
    Storages are told apart by their identity, so this works on the meta device too, where
    tensors have sizes but no memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self._holders: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, pointer: int) -> None:
        self._holders[pointer] -= 1
        if self._holders[pointer] == 0:
            del self._holders[pointer]
            self.current -= self._sizes.pop(pointer)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if not isinstance(value, torch.Tensor):
                continue
            storage = value.untyped_storage()
            pointer = storage._cdata  # the StorageImpl's address: one per storage, on any device
            if pointer not in self._holders:
                self._holders[pointer] = 0
                self._sizes[pointer] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self._holders[pointer] += 1
            weakref.finalize(value, self._release, pointer)
        return out


def _modules_that_run(backbone: Backbone, run) -> list[torch.nn.Module]:
    """The modules of ``backbone.model`` whose forward is called while ``run()`` executes.

    A TorchScript model takes no hooks; then every module counts.
    """
    if isinstance(backbone.model, torch.jit.ScriptModule):
        run()
        return list(backbone.model.modules())
    called: dict[int, torch.nn.Module] = {}

    def hook(module: torch.nn.Module, _inputs: object) -> None:
        called[id(module)] = module

    handles = [module.register_forward_pre_hook(hook) for module in backbone.model.modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return list(called.values())


class _Features(torch.nn.Module):
    """``backbone.features(x, layer, pool)`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, backbone: Backbone, layer: str, pool: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x, self.layer, self.pool)


def measure_on_meta(backbone: Backbone, layer: str, pool: str, batch_size: int, size: int) -> tuple[int, int, int, int]:
    """FLOPs, parameters, weight bytes and peak activation bytes of one forward pass, on the meta device.

    The weights are swapped for meta tensors of the same shapes (``functional_call``), so nothing
    is computed or allocated: shapes flow through the network, and that is all that FLOPs and
    tensor sizes depend on.
    """
    from torch.func import functional_call

    wrapper = _Features(backbone, layer, pool)
    meta = {name: torch.empty_like(t, device="meta") for name, t in list(wrapper.named_parameters()) + list(wrapper.named_buffers())}
    batch = torch.empty(batch_size, 3, size, size, device="meta").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as flops, _PeakTensorMemory() as memory:
        used = _modules_that_run(backbone, lambda: functional_call(wrapper, meta, (batch,)))
    return flops.get_total_flops(), *_used_weights(used), memory.peak


def measure_by_running(backbone: Backbone, forward, dev: torch.device) -> tuple[int, int, int, int]:
    """The same numbers as :func:`measure_on_meta`, from a real forward pass (for TorchScript models)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        with FlopCounterMode(display=False) as flops:
            used = _modules_that_run(backbone, forward)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        with FlopCounterMode(display=False) as flops, _PeakTensorMemory() as memory:
            used = _modules_that_run(backbone, forward)
        peak = memory.peak
    return flops.get_total_flops(), *_used_weights(used), peak


def _used_weights(modules: list[torch.nn.Module]) -> tuple[int, int]:
    """Parameter count and bytes of parameters and buffers owned directly by ``modules``.

    A ParameterDict or ParameterList child never runs itself; its tensors belong to the module that
    holds it (a Keras model keeps all its variables in one).
    """
    containers = (torch.nn.ParameterDict, torch.nn.ParameterList)
    modules = [*modules, *(child for module in modules for child in module.children() if isinstance(child, containers))]
    params = sum(p.numel() for module in modules for p in module.parameters(recurse=False))
    weight_bytes = sum(
        t.numel() * t.element_size() for module in modules for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    )
    return params, weight_bytes


def measure_cost(
    backbone: Backbone,
    *,
    layer: str | None = None,
    pool: str = "avg",
    image_size: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    warm: bool = False,
    min_seconds: float = 0.3,
    max_repeats: int = 3,
) -> Cost:
    """Measure what ``backbone`` costs up to ``layer`` at ``image_size`` on this machine.

    MACs, parameters and peak memory come from one pass on the meta device (no computation; a
    real pass for TorchScript models; ONNX shape inference for ``onnx:`` models). On a CUDA
    device, peak memory is measured on the device during the first timed pass instead. Images/s is the best of up to ``max_repeats`` timed
    passes, after one warm-up pass unless ``warm``.

    Args:
        backbone: The backbone (its weights do not change the cost, only its architecture).
        layer: A layer from ``backbone.spec.layers``; None is the pooled penultimate layer.
        pool: Pooling of an intermediate layer's output.
        image_size: Input side in pixels; None takes the spec's.
        batch_size: Images per forward pass.
        device: ``cpu``, ``cuda[:N]``, or ``auto``/None for a GPU when there is one (resolved by
            :func:`headstart.device.resolve_device`).
        warm: The backbone has just run batches of ``batch_size`` images of this size on this
            device (as extraction does), so no warm-up pass is needed before timing.
        min_seconds: Stop timing once this much time was spent in timed passes.
        max_repeats: The most timed passes.

    Returns:
        A :class:`Cost`.
    """
    from headstart.device import torch_device

    layer_name = backbone.check_layer(layer)
    size = int(image_size or backbone.spec.input_size)
    dev = torch_device(device)
    model = backbone.to(dev).eval().to(memory_format=torch.channels_last)
    batch = torch.randn(batch_size, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)

    def forward() -> torch.Tensor:
        # Like extraction: bf16 autocast on a GPU, float32 on the CPU.
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            return model.features(batch, layer_name, pool)

    with torch.inference_mode():
        static_cost = getattr(model.model, "static_cost", None)  # a network run outside torch (onnx:) counts its own graph
        if static_cost is not None:
            flops, params, weight_bytes, activation_peak = static_cost(batch_size, size, None if layer_name == model.spec.default_layer else layer_name)
            if not warm:
                forward()
        elif isinstance(model.model, torch.jit.ScriptModule):
            flops, params, weight_bytes, activation_peak = measure_by_running(model, forward, dev)
            warm = True
        else:
            flops, params, weight_bytes, activation_peak = measure_on_meta(model, layer_name, pool, batch_size, size)
            if not warm:
                forward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        best = math.inf
        spent = 0.0
        for _ in range(max(1, max_repeats)):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            started = time.perf_counter()
            forward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elapsed = time.perf_counter() - started
            best = min(best, elapsed)
            spent += elapsed
            if spent >= min_seconds:
                break
        if dev.type == "cuda":
            activation_peak = torch.cuda.max_memory_allocated(dev) - before
    peak = activation_peak + weight_bytes + batch.numel() * batch.element_size()
    return Cost(
        params=int(params),
        macs=round(flops / 2 / batch_size),
        images_per_s=float(batch_size / best),
        peak_memory_bytes=int(peak),
        image_size=size,
        batch_size=batch_size,
        device=dev.type,
        threads=torch.get_num_threads(),
    )


def pareto_front(
    quality: Sequence[float | None],
    cost: Sequence[float | None],
    *,
    lower_cost_is_better: bool = True,
) -> list[bool]:
    """Mark the candidates on the quality-versus-cost Pareto front.

    A candidate is on the front when no other candidate is at least as good on both axes and
    strictly better on one: higher quality, and lower cost (or higher, for a cost axis such as
    images/s where more is better). Candidates whose quality or cost is unknown (None or NaN) are
    never on the front and never dominate another.

    Args:
        quality: Predicted quality per candidate; higher is better.
        cost: Cost per candidate, for example MACs.
        lower_cost_is_better: False for axes where a higher value is better (images/s).

    Returns:
        One bool per candidate.

    Raises:
        ValueError: If the two sequences differ in length.
    """
    if len(quality) != len(cost):
        raise ValueError(f"pareto_front: quality has {len(quality)} entries but cost has {len(cost)}; give one of each per candidate.")

    def known(value: float | None) -> bool:
        return value is not None and not math.isnan(value)

    sign = 1.0 if lower_cost_is_better else -1.0
    points = [(q, sign * c) if known(q) and known(c) else None for q, c in zip(quality, cost)]
    front = []
    for i, point in enumerate(points):
        if point is None:
            front.append(False)
            continue
        dominated = any(
            other is not None and j != i and other[0] >= point[0] and other[1] <= point[1] and (other[0] > point[0] or other[1] < point[1])
            for j, other in enumerate(points)
        )
        front.append(not dominated)
    return front
