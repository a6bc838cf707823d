"""``onnx:`` and ``keras:`` backbones: tiny models built in the test, read back through their sidecar specs."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from headstart.backbones import Backbone, BackboneSpec, NotTrainableError, load_backbone
from headstart.backbones.onnx_adapter import export_trunk
from headstart.backbones.packaged import sha256_file
from headstart.data import load_data
from headstart.errors import DataError, MissingDependencyError, WeightsMismatchError, WeightsUnavailableError
from conftest import run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 32
SIDECAR = {"input_size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "crop_pct": 1.0}


class TwoOutputs(nn.Module):
    """A tiny conv net that returns pooled features and its first feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stage = self.stem(x)
        return self.body(stage).mean(dim=(2, 3)), stage


def _net() -> TwoOutputs:
    torch.manual_seed(0)
    net = TwoOutputs()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them would show
        net.stem[1].running_mean.uniform_(-0.5, 0.5)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _export(module: nn.Module, path: Path, example: torch.Tensor, outputs: list[str]) -> Path:
    torch.onnx.export(
        module, (example,), str(path), input_names=["images"], output_names=outputs, dynamo=True, opset_version=18,
        dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
    )
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> tuple[Path, TwoOutputs]:
    """A two-output NCHW ONNX model and the torch net it came from; its sidecar names the features output."""
    net = _net()
    path = _export(net, tmp_path_factory.mktemp("onnx") / "tiny.onnx", torch.zeros(2, 3, SIZE, SIZE), ["features", "stage1"])
    path.with_suffix(".json").write_text(json.dumps({**SIDECAR, "features": "features"}))
    return path, net


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _squares(n_per_class: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """3 classes of 16x16 images told apart by where a bright bar sits."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), n_per_class)
    images = rng.integers(0, 60, size=(len(labels), 16, 16)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 4 * label : 7 + 4 * label, 3:13] = 220
    return images, labels


# ----- onnx: ----------------------------------------------------------------------------------------


def test_onnx_backbone_loads_with_its_spec_and_matches_the_torch_net(onnx_model):
    path, net = onnx_model
    backbone = load_backbone(f"onnx:{path}")
    spec = backbone.spec
    assert spec.source == "onnx" and spec.name == f"onnx:{path.resolve()}"
    assert spec.sha256 == sha256_file(path) and spec.input_size == SIZE and spec.mean == (0.5, 0.5, 0.5) and spec.crop_pct == 1.0
    assert spec.layers == ("stage1",) and spec.feature_dim == 16
    assert spec.preprocessing()["model_io"] == {"layout": "NCHW", "features": "features"}
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled, stage = net(x)
    assert torch.allclose(backbone.features(x), pooled, atol=1e-4)
    assert torch.allclose(backbone.features(x, "stage1", "max"), stage.amax(dim=(2, 3)), atol=1e-4)
    assert torch.allclose(backbone.features(x.contiguous(memory_format=torch.channels_last)), pooled, atol=1e-4)
    assert list(backbone.model.parameters()) == []  # nothing in it trains


class Pooled(nn.Module):
    """The tiny net's first output (its pooled features): what an exported trunk computes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


def test_onnx_cost_counts_the_same_flops_as_the_torch_net(onnx_model):
    from headstart.select.cost import measure_cost

    path, net = onnx_model

    reference = Backbone(Pooled(net), BackboneSpec(name="tiny", source="tiny", arch="tiny", weights_id="x", sha256="x", input_size=SIZE))
    onnx_cost = measure_cost(load_backbone(f"onnx:{path}"), batch_size=4, device="cpu", max_repeats=1, min_seconds=0)
    torch_cost = measure_cost(reference, batch_size=4, device="cpu", max_repeats=1, min_seconds=0)
    assert onnx_cost.macs == torch_cost.macs > 0
    assert onnx_cost.images_per_s > 0 and onnx_cost.peak_memory_bytes > 0
    # The exporter folds BatchNorm into the convolution before it: the convolutions' weights remain.
    assert onnx_cost.params == sum(p.numel() for m in net.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())


def test_onnx_nhwc_model_gets_permuted_batches(tmp_path):
    net = _net()

    class ChannelsLast(nn.Module):  # what a TensorFlow graph looks like: NHWC in, NHWC feature maps
        def forward(self, x):
            pooled, stage = net(x.permute(0, 3, 1, 2))
            return pooled, stage.permute(0, 2, 3, 1)

    path = _export(ChannelsLast().eval(), tmp_path / "nhwc.onnx", torch.zeros(2, SIZE, SIZE, 3), ["pooled", "stage"])
    path.with_suffix(".json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    backbone = load_backbone(f"onnx:{path}")
    assert backbone.spec.extra["model_io"]["layout"] == "NHWC" and backbone.spec.input_size == SIZE  # both read from the graph
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled, stage = net(x)
    assert torch.allclose(backbone.features(x), pooled, atol=1e-4)
    assert torch.allclose(backbone.features(x, "stage", "avg"), stage.mean(dim=(2, 3)), atol=1e-4)
    with pytest.raises(DataError, match="drop --image-size"):
        backbone.features(torch.randn(1, 3, 48, 48))


def test_onnx_hash_mismatch_is_refused_before_the_file_is_read(onnx_model, monkeypatch):
    import onnxruntime

    path, _ = onnx_model

    def never(*args, **kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    with pytest.raises(WeightsMismatchError, match="was recorded"):
        load_backbone(f"onnx:{path}", expected_sha256="0" * 64)


def test_onnx_sidecar_problems_are_one_line(onnx_model, tmp_path):
    path, _ = onnx_model
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(path.read_bytes())
    with pytest.raises(WeightsUnavailableError, match="no sidecar spec"):
        load_backbone(f"onnx:{bare}")
    bare.with_suffix(".json").write_text(json.dumps({**SIDECAR, "features": "logits"}))
    with pytest.raises(DataError, match="features='logits' is not an output"):
        load_backbone(f"onnx:{bare}")
    bare.with_suffix(".json").write_text(json.dumps({**SIDECAR, "std": [0, 1, 1]}))
    with pytest.raises(DataError, match="std"):
        load_backbone(f"onnx:{bare}")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_backbone(f"onnx:{tmp_path / 'nothing.onnx'}")


def test_missing_onnxruntime_gives_the_install_hint(onnx_model, monkeypatch):
    path, _ = onnx_model
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'headstart\[onnx\]'"):
        load_backbone(f"onnx:{path}")


def test_finetune_refuses_an_onnx_backbone_in_one_line(onnx_model, tmp_path, monkeypatch, capsys):
    path, _ = onnx_model
    np.savez(tmp_path / "d.npz", x=_squares()[0], y=_squares()[1])
    code, _, err = run_cli(["finetune", str(tmp_path / "d.npz"), "-b", f"onnx:{path}", "--epochs", "1", "--out", str(tmp_path / "ft")], monkeypatch, capsys)
    line = _one_error_line(code, err)
    assert "cannot fine-tune" in line and "onnx2torch" in line and "file:" in line
    assert not (tmp_path / "ft").exists()  # refused before any work
    from headstart.finetune import finetune

    with pytest.raises(NotTrainableError):
        finetune(load_data(_squares(), seed=0), load_backbone(f"onnx:{path}"), epochs=1, quiet=True)


def test_probe_and_extract_cli_on_an_onnx_backbone(onnx_model, tmp_path, monkeypatch, capsys):
    path, net = onnx_model
    args = ["probe", "builtin:animal-mnist", "-b", f"onnx:{path}", "--per-class", "5", "--out", str(tmp_path / "p"), "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["runs"][0]["backbone"] == f"onnx:{path.resolve()}" and 0 <= report["runs"][0]["test/accuracy"] <= 1
    from headstart.bundles import load_bundle

    bundle = load_bundle(report["runs"][0]["bundle"])  # reloads onnx:PATH against the recorded sha256
    items = load_data("builtin:animal-mnist", per_class=5, seed=0).items[:4]
    assert bundle.predict_proba(list(items)).shape == (4, 10)
    np.savez(tmp_path / "d.npz", x=_squares()[0], y=_squares()[1])
    code, out, err = run_cli(["extract", str(tmp_path / "d.npz"), "-b", f"onnx:{path}", "--layer", "stage1", "--json", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["shape"][1] == 8


def test_missing_sidecar_is_one_cli_line(onnx_model, tmp_path, monkeypatch, capsys):
    path, _ = onnx_model
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(path.read_bytes())
    line = _one_error_line(*run_cli(["extract", "builtin:animal-mnist", "-b", f"onnx:{bare}"], monkeypatch, capsys)[::2])
    assert "sidecar" in line and "bare.json" in line


def test_export_trunk_writes_a_file_that_loads_back_equal(tmp_path):
    net = _net()

    spec = BackboneSpec(name="tiny", source="tiny", arch="tiny", weights_id="x", sha256="abc", input_size=SIZE, interpolation="bicubic")
    path = export_trunk(Backbone(Pooled(net), spec), tmp_path / "trunk", input_size=24)
    side = json.loads(path.with_suffix(".json").read_text())
    assert path.suffix == ".onnx" and side["input_size"] == 24 and side["interpolation"] == "bicubic" and side["exported_sha256"] == "abc"
    backbone = load_backbone(f"onnx:{path}")
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(backbone.features(x), net(x)[0], atol=1e-4)


# ----- keras: ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    """A tiny Keras conv net with BatchNorm and a Dense classifier, saved as .keras with a sidecar."""
    if importlib.util.find_spec("keras") is None:  # importorskip would import it with the default backend
        pytest.skip("keras is not installed (pip install 'headstart[keras]')")
    from headstart.backbones.keras_adapter import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(5, name="logits")(x)
    model = keras.Model(inputs, outputs, name="tinynet")
    bn = model.get_layer("bn1")
    bn.moving_mean.assign(np.linspace(-0.3, 0.3, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 1.5, 8).astype("float32"))
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps(SIDECAR))
    return path, model


def test_keras_backbone_is_a_torch_module_with_keras_layer_names(keras_model):
    from headstart.backbones.keras_adapter import import_keras

    keras = import_keras()
    path, model = keras_model
    backbone = load_backbone(f"keras:{path}")
    spec = backbone.spec
    assert spec.source == "keras" and spec.sha256 == sha256_file(path) and spec.feature_dim == 16 and spec.num_source_classes == 5
    assert spec.layers == ("conv1", "bn1", "conv2") and spec.extra["model_io"] == {"layout": "NHWC", "features": "gap"}
    assert [group for group, _ in spec.param_groups] == ["conv1", "bn1", "conv2"]
    x = torch.randn(3, 3, SIZE, SIZE)
    nhwc = x.permute(0, 2, 3, 1)
    pooled = keras.Model(model.inputs, model.get_layer("gap").output)(nhwc, training=False)
    assert torch.allclose(backbone.features(x), pooled, atol=1e-5)
    conv1 = keras.Model(model.inputs, model.get_layer("conv1").output)(nhwc, training=False)
    assert torch.allclose(backbone.features(x, "conv1", "max"), conv1.amax(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(backbone.source_logits(backbone.features(x)), model(nhwc, training=False), atol=1e-5)
    names = [name for name, _ in backbone.model.named_parameters()]
    assert len(names) == 6 and not any("moving" in name for name in names)  # moving statistics are state
    assert any("moving_mean" in key for key in backbone.model.state_dict())


def test_keras_cost_counts_its_variables_and_convolutions(keras_model):
    from headstart.select.cost import measure_cost

    path, _ = keras_model
    cost = measure_cost(load_backbone(f"keras:{path}"), batch_size=2, device="cpu", max_repeats=1, min_seconds=0)
    conv1, bn1, conv2 = 3 * 9 * 8 + 8, 4 * 8, 8 * 9 * 16 + 16  # the Dense classifier is set aside
    assert cost.params == conv1 + bn1 + conv2
    assert cost.macs == SIZE * SIZE * 8 * 27 + (SIZE // 2) ** 2 * 16 * 72


def test_keras_backbone_fine_tunes_and_its_bundle_predicts_like_the_model(keras_model, tmp_path):
    from headstart.bundles import load_bundle
    from headstart.finetune import finetune

    path, _ = keras_model
    data = load_data(_squares(), seed=0)
    before = {k: v.clone() for k, v in load_backbone(f"keras:{path}").model.state_dict().items()}
    result = finetune(data, f"keras:{path}", strategy="full", epochs=1, image_size=SIZE, out=tmp_path / "ft", quiet=True)
    after = result.bundle.backbone.model.state_dict()
    assert (after["net._torch_params.conv1/kernel"] - before["net._torch_params.conv1/kernel"]).abs().max() > 0
    assert torch.equal(after["net._torch_params.bn1/moving_mean"], before["net._torch_params.bn1/moving_mean"])
    reloaded = load_bundle(result.bundle_path)
    items = [data.items[i] for i in range(6)]
    assert np.allclose(reloaded.predict_proba(items), result.bundle.predict_proba(items), atol=1e-5)


def test_keras_probe_cli_runs(keras_model, tmp_path, monkeypatch, capsys):
    path, _ = keras_model
    args = ["probe", "builtin:animal-mnist", "-b", f"keras:{path}", "--per-class", "5", "--out", str(tmp_path / "p"), "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["runs"][0]["backbone"] == f"keras:{path.resolve()}"


def test_keras_problems_are_one_line(keras_model, tmp_path, monkeypatch, capsys):
    path, _ = keras_model
    bare = tmp_path / "bare.keras"
    bare.write_bytes(path.read_bytes())
    line = _one_error_line(*run_cli(["extract", "builtin:animal-mnist", "-b", f"keras:{bare}"], monkeypatch, capsys)[::2])
    assert "sidecar" in line and "bare.json" in line
    from headstart.backbones.keras_adapter import import_keras

    def never(*args, **kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(import_keras().saving, "load_model", never)
    with pytest.raises(WeightsMismatchError, match="was recorded"):
        load_backbone(f"keras:{path}", expected_sha256="0" * 64)
    fake = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(Exception, match="KERAS_BACKEND=torch") as info:
        load_backbone(f"keras:{path}")
    assert getattr(info.value, "exit_code", None) == 2
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'headstart\[keras\]'"):
        load_backbone(f"keras:{path}")
    assert os.environ.get("KERAS_BACKEND") == "torch"


# ----- the real check ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_packaged_mobilenet_v2_exported_to_onnx_probes_like_torch(tmp_path):
    """MobileNetV2's trunk through onnxruntime gives the probe accuracy of the torch path, within 0.1 point."""
    from headstart.workflows.probe import probe

    name = "tv:mobilenet_v2.IMAGENET1K_V1"
    path = export_trunk(load_backbone(name), tmp_path / "mnv2.onnx", input_size=64)
    data = load_data("builtin:animal-mnist", per_class=20, seed=0)
    report = probe(data, [name, f"onnx:{path}"], ["linear"], image_size=64, quiet=True)
    accuracy = {run.backbone.split(":", 1)[0]: run.test.accuracy for run in report.runs}
    print(f"probe accuracy on builtin:animal-mnist (per-class 20, 64 px): torch {accuracy['tv']:.4f}, onnx {accuracy['onnx']:.4f}")
    assert abs(accuracy["tv"] - accuracy["onnx"]) <= 0.001
