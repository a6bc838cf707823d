"""``keras:`` backbones: a Keras 3 model (``.keras`` file) run with Keras's torch backend, so it is a torch module.

Keras is imported with ``KERAS_BACKEND=torch`` (a process that imported Keras with another backend
gets a one-line error) and the model is loaded with ``safe_mode=True``, which refuses the Python
code (lambda layers) a file can carry. The preprocessing comes from a sidecar JSON beside the file,
as for ``file:`` (``model.keras`` -> ``model.json``)::

    {"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "interpolation": "bilinear", "crop_pct": 0.875, "features": "global_pool", "layout": "NHWC"}

A model that wants raw 0..255 pixels (its own ``Rescaling`` layer) says ``"mean": [0, 0, 0]`` and
``"std": [0.00392156862745098, 0.00392156862745098, 0.00392156862745098]`` (1/255).

``features`` names the Keras layer whose output is the pooled features (default: the input of the
last layer when that is a ``Dense`` classifier, else the model's output; a 4-D output is
average-pooled). ``layout`` is ``NHWC`` (Keras's channels-last default) or ``NCHW`` (default: read
from the input's shape). headstart's batches are NCHW and are permuted for an NHWC model. The
layers are the model's top-level Keras layers before the features layer, by their Keras names.

Extraction, probes and fine-tuning work as for any backbone. Keras layers always run with
``training=False``: BatchNormalization keeps its moving statistics while the other weights train
(the Keras fine-tuning recipe), and dropout is off. The moving statistics (Keras's non-trainable
variables) are state: they are in ``state_dict()`` but not in ``named_parameters()``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from headstart.backbones.file_adapter import exported_model_file, sized_overrides
from headstart.backbones.module import Backbone
from headstart.backbones.spec import BackboneSpec
from headstart.errors import DataError, HeadstartError, UnknownBackboneError, WeightsUnavailableError, require

LAYOUTS = ("NCHW", "NHWC")


class KerasBackendError(HeadstartError):
    """Keras was imported with a backend other than torch in this process."""


def import_keras():
    """Keras with the torch backend (``KERAS_BACKEND=torch`` is set before the first import).

    Raises:
        KerasBackendError: Keras was already imported here with another backend.
        MissingDependencyError: Keras is not installed.
    """
    loaded = sys.modules.get("keras")
    if loaded is None:
        os.environ["KERAS_BACKEND"] = "torch"
        loaded = require("keras", "keras")
    backend = loaded.backend.backend()
    if backend != "torch":
        raise KerasBackendError(
            f"keras was already imported in this process with the {backend} backend, and keras: backbones need the torch backend: "
            "set KERAS_BACKEND=torch before anything imports keras (or run headstart in a fresh process)."
        )
    return loaded


class KerasNetwork(nn.Module):
    """A Keras model (torch backend) fed NCHW batches: ``forward`` gives the features layer's output, pooled.

    ``forward_layer(x, name)`` gives a Keras layer's output (NCHW for a feature map), from a Keras
    model that shares the trunk's variables.
    """

    def __init__(self, trunk, layout: str) -> None:
        super().__init__()
        self.net = trunk
        self.layout = layout
        self.taps: dict[str, object] = {}  # not registered as modules: they share the trunk's variables
        self.state_names = {f"net._torch_params.{v.path}" for v in trunk.non_trainable_weights}

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The trainable parameters; Keras's non-trainable variables (moving statistics) are state, not parameters."""
        for name, parameter in super().named_parameters(prefix, recurse, remove_duplicate):
            if name.removeprefix(f"{prefix}.") not in self.state_names:
                yield name, parameter

    def _call(self, model, x: torch.Tensor) -> torch.Tensor:
        keras = import_keras()
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        with keras.device(str(x.device)):
            return model(x.contiguous(), training=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._call(self.net, x)
        if out.dim() == 4:
            out = out.mean(dim=(1, 2) if self.layout == "NHWC" else (2, 3))
        return out

    def forward_layer(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        tap = self.taps.get(layer)
        if tap is None:
            keras = import_keras()
            tap = self.taps[layer] = keras.Model(self.net.inputs, self.net.get_layer(layer).output)
        out = self._call(tap, x)
        return out.permute(0, 3, 1, 2) if out.dim() == 4 and self.layout == "NHWC" else out


def _layout(side: dict, shape: tuple, name: str) -> str:
    layout = side.get("layout")
    if layout is not None:
        if layout not in LAYOUTS:
            raise DataError(f"{name}: sidecar layout={layout!r} must be NHWC or NCHW.")
        return layout
    if len(shape) == 4 and shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    return "NHWC"


def _classifier(model, keras):
    """The model's last layer when it is a Dense classifier, else None."""
    last = model.layers[-1] if model.layers else None
    return last if isinstance(last, keras.layers.Dense) else None


def _source_head(dense) -> nn.Linear:
    """The Dense classifier as an ``nn.Linear`` giving its logits (any softmax left out)."""
    kernel, *bias = dense.get_weights()
    head = nn.Linear(kernel.shape[0], kernel.shape[1], bias=bool(bias))
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(kernel).T)
        if bias:
            head.bias.copy_(torch.as_tensor(bias[0]))
    return head.eval()


def load(name: str, pretrained: bool = True, *, expected_sha256: str | None = None) -> Backbone:
    """Load ``keras:PATH.keras`` with its sidecar spec.

    Raises:
        UnknownBackboneError: ``@random`` was asked for.
        WeightsUnavailableError: The file or its sidecar is missing, or Keras cannot load it safely.
        WeightsMismatchError: The file's sha256 is not ``expected_sha256`` (checked before it is read).
        DataError: The sidecar does not fit the model.
        KerasBackendError: Keras was imported with another backend.
        MissingDependencyError: Keras is not installed.
    """
    if not pretrained:
        raise UnknownBackboneError(f"{name} has no @random variant: a .keras file holds its weights. Drop @random.")
    path = Path(name.removeprefix("keras:")).expanduser()
    if not path.is_file() or path.suffix != ".keras":
        raise WeightsUnavailableError(f"keras:{path} is not a .keras file. Save the model with model.save('model.keras') (Keras 3).")
    path = path.resolve()
    display, sha256, side = exported_model_file(path, "keras", expected_sha256)
    keras = import_keras()
    try:
        with keras.device("cpu"):
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for unsafe or unreadable files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsUnavailableError(f"{display} could not be loaded with safe_mode=True ({type(exc).__name__}: {first}).") from None
    if not isinstance(model, keras.Model) or not model.inputs:
        raise DataError(f"{display} is not a Keras model with a defined input (build a functional model or call it once before saving).")
    shape = tuple(model.inputs[0].shape)
    layout = _layout(side, shape, display)
    classifier = _classifier(model, keras)
    features = side.get("features")
    names = [layer.name for layer in model.layers]
    if features is not None and features not in names:
        raise DataError(f"{display}: sidecar features={features!r} is not a layer of the model; its layers: {', '.join(names[:30])}.")
    with keras.device("cpu"):
        if features is not None:
            trunk = keras.Model(model.inputs, model.get_layer(features).output)
        elif classifier is not None:
            trunk = keras.Model(model.inputs, classifier.input)
        else:
            trunk = model
    end = names.index(trunk.layers[-1].name)
    layers = tuple(layer.name for layer in model.layers[:end] if not isinstance(layer, keras.layers.InputLayer))
    spatial = shape[1:3] if layout == "NHWC" else shape[2:4]
    overrides = sized_overrides(side, spatial, display)
    out_shape = tuple(trunk.outputs[0].shape)
    width = out_shape[-1] if layout == "NHWC" or len(out_shape) == 2 else out_shape[1]
    network = KerasNetwork(trunk, layout).eval()
    head = _source_head(classifier) if classifier is not None and features is None else None
    groups = tuple(
        (layer.name, tuple(f"net._torch_params.{v.path}" for v in layer.trainable_weights))
        for layer in trunk.layers
        if layer.trainable_weights
    )
    spec = BackboneSpec(
        name=display,
        source="keras",
        arch=model.name or path.stem,
        weights_id=path.name,
        sha256=sha256,
        feature_dim=int(width) if isinstance(width, int) else 0,
        layers=layers,
        param_groups=groups,
        num_source_classes=head.out_features if head is not None else 0,
        extra={"runtime": "keras-torch", "model_io": {"layout": layout, "features": features or trunk.layers[-1].name}},
        **overrides,
    )
    return Backbone(network, spec, head)
