"""``onnx:`` backbones: any ONNX model (for example a TensorFlow SavedModel converted with tf2onnx), run through onnxruntime.

The preprocessing comes from a sidecar JSON beside the file, as for ``file:`` (``model.onnx`` ->
``model.json``)::

    {"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "interpolation": "bilinear", "crop_pct": 0.875, "features": "pooled", "layout": "NCHW"}

``features`` names the graph output taken as the pooled features (default: the first output; a 4-D
output is average-pooled over its spatial positions). ``layout`` is ``NCHW`` or ``NHWC`` (default:
read from the input's shape); headstart's batches are NCHW and are permuted for an NHWC model, whose
feature maps are taken to be NHWC too. The graph's other outputs are the backbone's layers.

onnxruntime runs on the CPU (``CPUExecutionProvider``) with ``torch.get_num_threads()`` threads. An
ONNX model cannot be fine-tuned here: :data:`FINETUNE_REFUSAL` says what to do instead. The
file's sha256 is the spec's ``sha256``; a recorded one (``expected_sha256``) is checked before the
file is read. It covers the .onnx file only, so keep the weights inside it (a model over 2 GB
needs an external data file, which the hash does not cover). :func:`export_trunk` writes a backbone's pooled features (or one layer, pooled) as such a file.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.backbones.file_adapter import exported_model_file, sidecar_path, sized_overrides
from headstart.backbones.module import Backbone, pool_features
from headstart.backbones.spec import BackboneSpec
from headstart.errors import DataError, OptionError, UnknownBackboneError, WeightsUnavailableError, require

LAYOUTS = ("NCHW", "NHWC")
# Why fine-tuning refuses an onnx: backbone (checked by headstart.backbones.registry.check_trainable).
FINETUNE_REFUSAL = (
    "{name} is an ONNX model, which headstart runs with onnxruntime and cannot fine-tune; use it with extract, probe and rank, "
    "or convert it to PyTorch (onnx2torch.convert, then torch.jit.trace(...).save('model.pt')) and fine-tune file:model.pt "
    "--allow-torchscript (docs/tensorflow.md)."
)
OPSET = 18
_FLOAT_TYPES = (1, 10, 11, 16)  # onnx TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _runtime():
    return require("onnxruntime", "onnx")


class OnnxRuntimeNetwork(nn.Module):
    """An onnxruntime session that stands in for a torch network inside a :class:`Backbone`.

    ``forward(x)`` returns the features output (average-pooled when it is a feature map) and
    ``forward_layer(x, name)`` any graph output, as torch tensors on ``x``'s device. It holds no
    parameters: nothing in it trains.
    """

    def __init__(self, path: Path, features: str, layout: str, name: str, session=None) -> None:
        super().__init__()
        self.path, self.features_output, self.layout, self.display = Path(path), features, layout, name
        self.session = session if session is not None else _session(self.path, name)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = list(self.session.get_inputs()[0].shape)

    def __deepcopy__(self, memo):  # the session is immutable and thread-safe: copies share it
        clone = type(self).__new__(type(self))
        clone.__dict__.update({key: copy.copy(value) if isinstance(value, dict) else value for key, value in self.__dict__.items()})
        return clone

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("session", None)
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self.session = _session(self.path, self.display)

    def _run(self, x: torch.Tensor, output: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.device.type == "meta":
            raise TypeError(f"{self.display} runs in onnxruntime and takes real tensors, not {type(x).__name__} on {getattr(x, 'device', '?')}.")
        array = x.detach().to("cpu", torch.float32)
        if self.layout == "NHWC":
            array = array.permute(0, 2, 3, 1)
        array = array.contiguous().numpy()
        for axis, (want, got) in enumerate(zip(self.input_shape, array.shape)):
            if axis and isinstance(want, int) and want != got:
                raise DataError(
                    f"{self.display} takes inputs of shape {self.input_shape} ({self.layout}), not {list(array.shape)}: "
                    "drop --image-size to use its own size, or export it with dynamic height and width."
                )
        try:
            out = self.session.run([output], {self.input_name: array})[0]
        except Exception as exc:  # onnxruntime raises its own pybind error types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise DataError(f"onnxruntime could not run {self.display} on a batch of shape {list(array.shape)}: {first}") from None
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x, self.features_output)
        if out.dim() == 4:
            out = out.mean(dim=(1, 2) if self.layout == "NHWC" else (2, 3))
        return out

    def forward_layer(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """One graph output; a feature map comes back NCHW, as :func:`~headstart.backbones.module.pool_features` takes it."""
        out = self._run(x, layer)
        return out.permute(0, 3, 1, 2) if out.dim() == 4 and self.layout == "NHWC" else out

    def static_cost(self, batch_size: int, size: int, layer: str | None) -> tuple[int, int, int, int]:
        """FLOPs, parameters, weight bytes and peak activation bytes of the graph up to ``layer``, from ONNX shape inference.

        FLOPs count Conv, Gemm and MatMul (2 per multiply-add); parameters are the floating-point
        initializers (not shape constants); the activation peak is the largest sum of one node's
        float32 inputs and outputs. Unknown shapes count as zero.
        """
        onnx = require("onnx", "onnx")
        model = onnx.load(str(self.path), load_external_data=False)
        graph = model.graph
        shape = [batch_size, 3, size, size] if self.layout == "NCHW" else [batch_size, size, size, 3]
        for dim, value in zip(graph.input[0].type.tensor_type.shape.dim, shape):
            dim.dim_value = value
        try:
            graph = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - shape inference fails on some custom ops: count what is known
            pass
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.value_info, *graph.input, *graph.output]}
        weights = {t.name: t for t in graph.initializer}
        shapes.update({name: list(t.dims) for name, t in weights.items()})
        producer = {out: node for node in graph.node for out in node.output}
        needed, stack, seen = [], [layer or self.features_output], set()
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            needed.append(node)
            stack.extend(node.input)
        flops, peak, used = 0, 0, set()
        for node in needed:
            out = shapes.get(node.output[0], [])
            if node.op_type == "Conv" and len(node.input) > 1:
                flops += 2 * math.prod(out or [0]) * math.prod(shapes.get(node.input[1], [0])[1:])
            elif node.op_type in ("Gemm", "MatMul"):
                flops += 2 * math.prod(out or [0]) * (shapes.get(node.input[0], [0]) or [0])[-1]
            used.update(name for name in node.input if name in weights and weights[name].data_type in _FLOAT_TYPES)
            activations = [name for name in [*node.input, *node.output] if name and name not in weights]
            peak = max(peak, 4 * sum(math.prod(shapes.get(name, [0]) or [0]) for name in activations))
        params = sum(math.prod(weights[name].dims) for name in used)
        nbytes = sum(math.prod(weights[name].dims) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(weights[name].data_type)).itemsize for name in used)
        return int(flops), int(params), int(nbytes), int(peak)


def _session(path: Path, name: str):
    ort = _runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsUnavailableError(f"{name} is not a model onnxruntime can load ({first}). Check the file, or export it again.") from None


def _layout(side: dict, shape: list, name: str) -> str:
    layout = side.get("layout")
    if layout is not None:
        if layout not in LAYOUTS:
            raise DataError(f"{name}: sidecar layout={layout!r} must be NCHW or NHWC.")
        return layout
    if len(shape) == 4 and shape[1] == 3:
        return "NCHW"
    if len(shape) == 4 and shape[3] == 3:
        return "NHWC"
    return "NCHW"


def _dim(shape: list, layout: str) -> int:
    """The width of an output: D of (N, D), C of a feature map; 0 when the shape is dynamic."""
    if len(shape) == 2:
        value = shape[1]
    elif len(shape) == 4:
        value = shape[3] if layout == "NHWC" else shape[1]
    else:
        return 0
    return value if isinstance(value, int) else 0


def load(name: str, pretrained: bool = True, *, expected_sha256: str | None = None) -> Backbone:
    """Load ``onnx:PATH.onnx`` with its sidecar spec.

    Raises:
        UnknownBackboneError: ``@random`` was asked for (an ONNX file has no random initialisation).
        WeightsUnavailableError: The file or its sidecar is missing, or onnxruntime cannot load it.
        WeightsMismatchError: The file's sha256 is not ``expected_sha256`` (checked before it is read).
        DataError: The sidecar or the model's input does not fit an image backbone.
        MissingDependencyError: onnxruntime is not installed.
    """
    if not pretrained:
        raise UnknownBackboneError(f"{name} has no @random variant: an ONNX file holds its weights. Drop @random.")
    path = Path(name.removeprefix("onnx:")).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"onnx:{path} does not exist. Give the path of an .onnx file (with its sidecar {sidecar_path(path).name}).")
    path = path.resolve()
    display, sha256, side = exported_model_file(path, "onnx", expected_sha256)
    _runtime()  # the one-line install hint before anything else
    session = _session(path, display)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        described = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise DataError(f"{display} takes {described}; headstart feeds one float32 image batch (N, C, H, W or N, H, W, C).")
    shape = list(inputs[0].shape)
    layout = _layout(side, shape, display)
    names = [o.name for o in outputs]
    features = side.get("features", names[0])
    if features not in names:
        raise DataError(f"{display}: sidecar features={features!r} is not an output of the graph; its outputs: {', '.join(names)}.")
    spatial = shape[2:] if layout == "NCHW" else shape[1:3]
    overrides = sized_overrides(side, spatial, display)
    network = OnnxRuntimeNetwork(path, features, layout, display, session)
    out_shapes = {o.name: list(o.shape) for o in outputs}
    spec = BackboneSpec(
        name=display,
        source="onnx",
        arch=path.stem,
        weights_id=path.name,
        sha256=sha256,
        feature_dim=int(side.get("feature_dim", 0)) or _dim(out_shapes[features], layout),
        layers=tuple(n for n in names if n != features),
        extra={"runtime": "onnxruntime", "model_io": {"layout": layout, "features": features}},
        **overrides,
    )
    return Backbone(network, spec, None)


class _LayerTrunk(nn.Module):
    """A backbone cut at one of its layers and pooled: what ``Backbone.features(x, layer, pool)`` computes.

    The layer's output is caught by a forward hook registered once, outside ``forward`` (torch.export
    traces the whole network; the ONNX graph keeps only what the output needs).
    """

    def __init__(self, backbone: Backbone, layer: str, pool: str) -> None:
        super().__init__()
        self.model, self.pool, self.captured = backbone.model, pool, []
        self.model.get_submodule(layer).register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: object, output) -> None:
        self.captured.append(output[0] if isinstance(output, (tuple, list)) else output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.captured.clear()
        self.model(x)
        return pool_features(self.captured[-1], self.pool)


def export_trunk(
    backbone: Backbone, path: str | Path, input_size: int | None = None, *, layer: str | None = None, pool: str = "avg", opset: int = OPSET
) -> Path:
    """Export a backbone's pooled features to ONNX, with the sidecar that makes it load as ``onnx:PATH``.

    The graph maps a float32 NCHW batch at ``input_size`` (normalised as the sidecar says) to the
    pooled features, with a dynamic batch axis. It uses the ``torch.export``-based exporter
    (``dynamo=True``; the TorchScript-based one is deprecated) at opset 18.

    Args:
        backbone: An image backbone; it is copied to the CPU, the caller's stays as it is.
        path: Target path; the suffix becomes ``.onnx``, the sidecar is ``.json`` beside it.
        input_size: Side in pixels; None takes the spec's.
        layer: A layer of ``backbone.spec.layers``, pooled with ``pool``; None (or the default
            layer) takes the pooled penultimate features.
        pool: Pooling of ``layer``'s output (see :func:`~headstart.backbones.module.pool_features`).
        opset: The ONNX opset.

    Returns:
        The path of the .onnx file.
    """
    require("onnxscript", "onnx")
    spec = backbone.spec.with_input_size(input_size)
    if spec.modality != "image":
        raise OptionError(f"export_trunk exports image backbones; {spec.name} is a {spec.modality} model.")
    path = Path(path).with_suffix(".onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    layer = backbone.check_layer(layer)
    network = copy.deepcopy(backbone).cpu().eval()
    if layer != spec.default_layer:
        network = _LayerTrunk(network, layer, pool).eval()
    dummy = torch.zeros(2, 3, spec.input_size, spec.input_size)
    try:
        with warnings.catch_warnings():
            # _LayerTrunk keeps the layer's output in a list during tracing; torch.export warns about it.
            warnings.filterwarnings("ignore", message="The tensor attribute self.captured")
            torch.onnx.export(
                network, (dummy,), str(path), input_names=["images"], output_names=["features"], opset_version=opset,
                dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
            )
    except Exception as exc:  # torch.export raises many error types on untraceable code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise OptionError(f"{spec.name} could not be exported to ONNX ({type(exc).__name__}: {first}).") from None
    side = dict(spec.preprocessing(), features="features", layout="NCHW", exported_from=spec.name, exported_sha256=spec.sha256)
    if layer != spec.default_layer:
        side.update(exported_layer=layer, exported_pool=pool)
    side.pop("small_images", None)
    side.pop("model_io", None)
    sidecar_path(path).write_text(json.dumps(side, indent=2))
    return path
