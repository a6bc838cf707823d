"""The feature store: content keys, hits without the network, crash safety, kill-and-resume, cache management."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE

from headstart.backbones import Backbone, load_backbone, save_backbone
from headstart.data import load_data
from headstart.errors import CacheError
from headstart.features import FeatureStore, extract
from headstart.features.store import default_root

HERE = Path(__file__).parent
KILL_HELPER = HERE / "_kill_extract.py"


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(TINY_BACKBONE)


@pytest.fixture
def store(tmp_path):
    return FeatureStore(tmp_path / "store")


def _extract(backbone, data, store, **kwargs):
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("quiet", True)
    return extract(backbone, data, store=store, **kwargs)


class _Counter:
    """Wraps FeatureStore.write_shard to count the shards written."""

    def __init__(self, monkeypatch):
        self.indices: list[int] = []
        original = FeatureStore.write_shard

        def counting(store_self, key, index, *args, **kwargs):
            self.indices.append(index)
            return original(store_self, key, index, *args, **kwargs)

        monkeypatch.setattr(FeatureStore, "write_shard", counting)


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network ran, but the features were stored")

    monkeypatch.setattr(Backbone, "features", refuse)
    monkeypatch.setattr(Backbone, "forward", refuse)


# ----- defaults -------------------------------------------------------------------------------


def test_default_root_follows_env(isolated_cache, monkeypatch, tmp_path):
    assert default_root() == isolated_cache
    assert FeatureStore().root == isolated_cache
    monkeypatch.delenv("HEADSTART_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_root() == tmp_path / ".cache" / "headstart"


def test_extract_uses_headstart_cache_by_default(isolated_cache, tiny_arrays, tiny):
    features = extract(tiny, load_data(tiny_arrays), image_size=32, quiet=True)
    assert features.path.parent.parent == isolated_cache
    assert (features.path / "meta.json").is_file()


# ----- hits -----------------------------------------------------------------------------------


def test_second_call_is_a_hit_without_the_network(tiny_arrays, tiny, store, monkeypatch):
    data = load_data(tiny_arrays)
    first = _extract(tiny, data, store, batch_size=16)
    assert not first.hit
    assert first.shape == (60, tiny.spec.feature_dim)
    assert first.valid.all()
    assert first.path == store.entry_dir(first.key)
    _no_network(monkeypatch)
    counter = _Counter(monkeypatch)
    second = _extract(tiny, data, store, batch_size=16)
    assert second.hit
    assert counter.indices == []
    assert second.key == first.key
    assert np.array_equal(second.X, first.X)
    assert np.array_equal(second.valid, first.valid)
    assert np.array_equal(second.labels, first.labels)
    assert list(second.split) == list(first.split)
    # A new Dataset object loaded from the same source is the same data.
    third = _extract(tiny, load_data(tiny_arrays), store)
    assert third.hit and third.key == first.key


def test_hit_by_name_does_not_need_the_weights_twice(tiny_arrays, store):
    data = load_data(tiny_arrays)
    first = _extract(TINY_BACKBONE, data, store)
    second = _extract(TINY_BACKBONE, data, store)
    assert second.hit and np.array_equal(first.X, second.X)


def test_features_match_a_direct_forward(tiny_arrays, tiny, store):
    from headstart.data.transforms import preprocess_array_batch

    data = load_data(tiny_arrays)
    features = _extract(tiny, data, store, layer="blocks.2", pool="avgmax")
    spec = tiny.spec.with_input_size(32)
    with torch.no_grad():
        expected = tiny.features(preprocess_array_batch(data.items, spec), "blocks.2", "avgmax").numpy()
    np.testing.assert_allclose(features.X, expected, rtol=1e-4, atol=1e-5)
    meta = json.loads((features.path / "meta.json").read_text())
    assert meta["shape"] == list(features.shape)
    assert meta["parts"]["layer"] == "blocks.2" and meta["parts"]["pool"] == "avgmax"
    assert meta["spec"]["input_size"] == 32


# ----- keys -----------------------------------------------------------------------------------


def test_key_changes_with_layer_pool_size_and_backbone(tiny_arrays, tiny, store):
    data = load_data(tiny_arrays)
    base = _extract(tiny, data, store)
    variants = {
        "layer": _extract(tiny, data, store, layer="blocks.3"),
        "pool": _extract(tiny, data, store, layer="blocks.3", pool="max"),
        "image size": _extract(tiny, data, store, image_size=48),
        "backbone": _extract("timm:test_resnet@random", data, store),
    }
    keys = {name: f.key for name, f in variants.items()}
    assert len({base.key, *keys.values()}) == 1 + len(keys), keys
    assert not any(f.hit for f in variants.values())
    assert len(store.ls()) == 1 + len(variants)
    assert not np.array_equal(variants["pool"].X, variants["layer"].X)


def test_key_changes_with_the_weights_under_the_same_name(tiny_arrays, tmp_path, store):
    """Same file path, same architecture, new weights: a new sha256, so a new key and new features."""
    data = load_data(tiny_arrays)
    original = load_backbone("timm:test_resnet@random")
    path = save_backbone(original, tmp_path / "w" / "net.safetensors")
    first = _extract(f"file:{path}", data, store)
    with torch.no_grad():
        for parameter in original.model.parameters():
            parameter.mul_(1.5)
    save_backbone(original, path)
    second = _extract(f"file:{path}", data, store)
    assert first.spec.name == second.spec.name
    assert first.spec.sha256 != second.spec.sha256
    assert first.key != second.key
    assert not second.hit
    assert not np.allclose(first.X, second.X)


def test_key_changes_when_a_file_is_touched(tmp_path, tiny, store):
    from test_data import make_folder

    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    first = _extract(tiny, load_data(root), store, num_workers=0)
    again = _extract(tiny, load_data(root), store, num_workers=0)
    assert again.hit and again.key == first.key
    victim = next((root / "a").iterdir())
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = _extract(tiny, load_data(root), store, num_workers=0)
    assert touched.key != first.key
    assert not touched.hit
    assert np.array_equal(touched.X, first.X), "same pixels, same features"


def test_key_changes_when_one_pixel_changes(tiny_arrays, tiny, store):
    images, labels = tiny_arrays
    first = _extract(tiny, load_data((images, labels)), store)
    changed = images.copy()
    changed[7, 3, 3] ^= 0x01
    second = _extract(tiny, load_data((changed, labels)), store)
    assert second.key != first.key
    assert not second.hit
    assert not np.array_equal(second.X[7], first.X[7])
    others = np.arange(60) != 7
    np.testing.assert_allclose(second.X[others], first.X[others], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", ["max", "token"])
def test_pool_at_the_default_layer_is_applied_or_refused(tiny_arrays, tiny, store, pool):
    data = load_data(tiny_arrays)
    avg = _extract(tiny, data, store)
    try:
        other = _extract(tiny, data, store, pool=pool)
    except ValueError:
        return  # refusing a pool the default layer cannot apply is fine
    assert not np.allclose(other.X, avg.X), f"pool={pool!r} gave the avg-pooled features"


def test_labels_and_splits_do_not_change_the_key(tiny_arrays, tiny, store):
    images, labels = tiny_arrays
    first = _extract(tiny, load_data((images, labels), seed=0), store)
    other = _extract(tiny, load_data((images, (labels + 1) % 3), seed=5), store)
    assert other.hit and other.key == first.key
    assert np.array_equal(other.labels, (labels + 1) % 3), "labels come from the data, not the store"


# ----- non-writable store ---------------------------------------------------------------------


def test_non_writable_store_is_a_cache_error(tiny_arrays, tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where a folder should be")
    store = FeatureStore(blocker / "cache")
    with pytest.raises(CacheError) as info:
        _extract(tiny, load_data(tiny_arrays), store)
    message = str(info.value)
    assert str(blocker / "cache") in message
    assert "HEADSTART_CACHE" in message and "--cache-dir" in message


def test_non_writable_store_from_env(tiny_arrays, tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("HEADSTART_CACHE", str(blocker / "sub"))
    with pytest.raises(CacheError, match="not writable"):
        extract(tiny, load_data(tiny_arrays), image_size=32, quiet=True)


# ----- torn and missing pieces ----------------------------------------------------------------


def _three_shards(tiny, tiny_arrays, store, **kwargs):
    # batch_size divides shard_size, so a recomputed shard sees the same batches as the first run.
    return _extract(tiny, load_data(tiny_arrays), store, shard_size=20, batch_size=10, **kwargs)


def _tear(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        mutable = bytearray(data)
        mutable[-5] ^= 0xFF  # inside the float payload: the file still parses
        path.write_bytes(bytes(mutable))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    else:  # pragma: no cover
        raise ValueError(how)


@pytest.mark.parametrize(
    ("filename", "how"),
    [
        ("shard-00001.safetensors", "truncate"),
        ("shard-00001.safetensors", "flip"),
        ("shard-00001.safetensors", "delete"),
        ("shard-00001.json", "empty"),
        ("shard-00001.json", "delete"),
    ],
)
def test_torn_shard_is_detected_and_recomputed(tiny_arrays, tiny, store, monkeypatch, filename, how):
    clean = _three_shards(tiny, tiny_arrays, store)
    assert sorted(p.name for p in clean.path.glob("shard-*.safetensors")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    _tear(clean.path / filename, how)
    counter = _Counter(monkeypatch)
    repaired = _three_shards(tiny, tiny_arrays, store)
    assert not repaired.hit, "a damaged entry is never served"
    assert counter.indices == [1], "only the damaged shard is recomputed"
    assert repaired.key == clean.key
    assert np.array_equal(repaired.X, clean.X)
    assert np.array_equal(repaired.valid, clean.valid)
    assert _three_shards(tiny, tiny_arrays, store).hit


def test_flipped_bytes_never_served(tiny_arrays, tiny, store):
    clean = _three_shards(tiny, tiny_arrays, store)
    shard = clean.path / "shard-00002.safetensors"
    _tear(shard, "flip")
    assert store.read_shard(clean.key, 2) is None
    assert store.load(clean.key) is None
    assert not (clean.path / "meta.json").exists(), "a damaged entry is un-committed"
    assert clean.key not in {entry.key for entry in store.ls()}


def test_uncommitted_entry_resumes_without_recomputing(tiny_arrays, tiny, store, monkeypatch):
    clean = _three_shards(tiny, tiny_arrays, store)
    (clean.path / "meta.json").unlink()  # as if killed after the last shard, before the commit
    assert store.load(clean.key) is None
    counter = _Counter(monkeypatch)
    _no_network(monkeypatch)
    resumed = _three_shards(tiny, tiny_arrays, store)
    assert counter.indices == []
    assert not resumed.hit
    assert np.array_equal(resumed.X, clean.X)


def test_leftover_temp_files_are_ignored(tiny_arrays, tiny, store):
    clean = _three_shards(tiny, tiny_arrays, store)
    (clean.path / ".shard-00001.safetensors.abc.tmp").write_bytes(b"half a write")
    again = _three_shards(tiny, tiny_arrays, store)
    assert again.hit and np.array_equal(again.X, clean.X)


def test_shard_from_another_run_is_not_mixed_in(tiny_arrays, tiny, store, monkeypatch):
    """A valid shard of the wrong rows (copied over another) must not be served in its place."""
    clean = _three_shards(tiny, tiny_arrays, store)
    for suffix in (".safetensors", ".json"):
        (clean.path / f"shard-00001{suffix}").write_bytes((clean.path / f"shard-00000{suffix}").read_bytes())
    served = _three_shards(tiny, tiny_arrays, store)
    assert np.array_equal(served.X, clean.X), "shard 0's rows were served as shard 1"


def test_resume_with_another_shard_size(tiny_arrays, tiny, store):
    clean = _three_shards(tiny, tiny_arrays, store)
    # As if killed after shards 0 and 1 (rows 0-39), before shard 2 and the commit.
    (clean.path / "meta.json").unlink()
    (clean.path / "shard-00002.json").unlink()
    resumed = _extract(tiny, load_data(tiny_arrays), store, shard_size=30, batch_size=10)
    assert resumed.X.shape == clean.X.shape
    assert np.array_equal(resumed.X, clean.X)


# ----- kill and resume ------------------------------------------------------------------------

N_KILL = 240
KILL_SHARD = 24  # 10 shards
KILL_BATCH = 8  # divides the shard size, so a resumed shard sees the same batches


def _kill_data(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(4), N_KILL // 4)
    images = (rng.random((N_KILL, 20, 20, 3)) * 255).astype(np.uint8)
    path = tmp_path / "kill.npz"
    np.savez(path, x=images, y=labels)
    return path


def _helper(data: Path, cache: Path, report: Path, delay: float) -> list[str]:
    return [
        sys.executable, str(KILL_HELPER), str(data), "--cache", str(cache), "--report", str(report),
        "--shard-size", str(KILL_SHARD), "--batch-size", str(KILL_BATCH), "--delay", str(delay),
    ]


def _run_helper(data, cache, report, delay=0.0) -> dict:
    result = subprocess.run(_helper(data, cache, report, delay), check=False, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.mark.slow
def test_kill_and_resume_gives_identical_features(tmp_path):
    data = _kill_data(tmp_path)
    # The uninterrupted reference run goes beside the run that gets killed, in its own cache.
    reference_run = subprocess.Popen(
        _helper(data, tmp_path / "cache-clean", tmp_path / "clean.json", delay=0.0),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    cache = tmp_path / "cache-killed"
    process = subprocess.Popen(
        _helper(data, cache, tmp_path / "killed.json", delay=0.25), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while not list(cache.glob("features/*/shard-00000.json")):
            assert process.poll() is None, f"the helper exited early: {process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no shard was committed in time"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    _, reference_err = reference_run.communicate(timeout=240)
    assert reference_run.returncode == 0, reference_err[-3000:]
    reference = json.loads((tmp_path / "clean.json").read_text())
    assert reference["written"] == list(range(10))
    entry = cache / "features" / reference["key"]
    assert not (tmp_path / "killed.json").exists(), "the run was killed before it finished"
    assert not (entry / "meta.json").exists()
    done_before = sorted(p.name for p in entry.glob("shard-*.json"))
    assert 1 <= len(done_before) < 10

    resumed = _run_helper(data, cache, tmp_path / "resumed.json")
    assert resumed["key"] == reference["key"]
    assert not resumed["hit"]
    assert 0 < len(resumed["written"]) <= 10 - len(done_before), resumed["written"]
    assert not set(resumed["written"]) & {int(name[6:11]) for name in done_before}, "committed shards are reused"

    clean = FeatureStore(tmp_path / "cache-clean").load(reference["key"])
    killed = FeatureStore(cache).load(reference["key"])
    assert clean is not None and killed is not None
    assert np.array_equal(killed[1], clean[1]), "resumed features differ from an uninterrupted run"
    assert np.array_equal(killed[2], clean[2])
    assert killed[1].shape == (N_KILL, reference["dim"])


# ----- cache management -----------------------------------------------------------------------


def test_ls_du_rm(tiny_arrays, tiny, store):
    assert store.ls() == [] and store.du() == 0 and store.rm(everything=True) == []
    data = load_data(tiny_arrays)
    first = _extract(tiny, data, store)
    time.sleep(0.01)
    second = _extract(tiny, data, store, pool="max", layer="blocks.1")
    entries = store.ls()
    assert [e.key for e in entries] == [second.key, first.key], "newest first"
    listed = entries[1].to_dict()
    assert listed["backbone"] == TINY_BACKBONE
    assert listed["layer"] == "pooled" and listed["pool"] == "avg"
    assert listed["shape"] == [60, tiny.spec.feature_dim]
    assert listed["bytes"] > first.X.nbytes
    assert store.du() >= sum(e.bytes for e in entries)
    # An uncommitted folder counts in du but is not listed.
    (store.features_dir / "partial").mkdir()
    (store.features_dir / "partial" / "shard-00000.safetensors").write_bytes(b"x" * 1000)
    assert len(store.ls()) == 2
    assert store.du() >= sum(e.bytes for e in entries) + 1000
    assert store.rm(first.key[:12]) == [first.key]
    assert [e.key for e in store.ls()] == [second.key]
    assert not first.path.exists()
    assert store.rm("") == [] and store.rm(None) == []
    assert sorted(store.rm(everything=True)) == sorted([second.key, "partial"])
    assert store.ls() == [] and store.du() == 0
    again = _extract(tiny, data, store)
    assert not again.hit and np.array_equal(again.X, first.X)


# ----- robustness: odd records, transient errors, read-only stores, permissions -------------------


def test_commit_record_without_its_fields_is_recomputed_not_a_keyerror(tiny_arrays, tiny, store, monkeypatch):
    clean = _three_shards(tiny, tiny_arrays, store)
    meta_path = clean.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["n_shards"]
    meta_path.write_text(json.dumps(meta))
    assert store.meta(clean.key) is None, "a record without n_shards is not a commit"
    assert store.load(clean.key) is None
    counter = _Counter(monkeypatch)
    again = _three_shards(tiny, tiny_arrays, store)
    assert not again.hit and counter.indices == [], "the intact shards are reused; only the record is rewritten"
    assert np.array_equal(again.X, clean.X)
    assert json.loads(meta_path.read_text())["n_shards"] == 3


def test_a_transient_read_error_keeps_the_entry(tiny_arrays, tiny, store, monkeypatch):
    clean = _three_shards(tiny, tiny_arrays, store)
    real_read = store._files.read

    def flaky(path):
        if str(path).endswith("shard-00001.safetensors"):
            raise OSError(5, "Input/output error")
        return real_read(path)

    monkeypatch.setattr(store._files, "read", flaky)
    with pytest.raises(CacheError, match="Cannot read shard 1 .*rerun"):
        store.load(clean.key)
    assert (clean.path / "meta.json").exists(), "a read that failed for another reason than damage un-commits nothing"
    monkeypatch.setattr(store._files, "read", real_read)
    assert store.load(clean.key) is not None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_damaged_entry_on_a_read_only_store_is_not_served_and_does_not_crash(tiny_arrays, tiny, store):
    clean = _three_shards(tiny, tiny_arrays, store)
    _tear(clean.path / "shard-00001.safetensors", "flip")
    os.chmod(clean.path, 0o555)
    try:
        assert store.load(clean.key) is None
    finally:
        os.chmod(clean.path, 0o755)


def test_a_damaged_entry_whose_record_cannot_be_removed_is_not_served(tiny_arrays, tiny, store, monkeypatch):
    clean = _three_shards(tiny, tiny_arrays, store)
    _tear(clean.path / "shard-00001.safetensors", "flip")

    def refuse(path):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(store._files, "unlink", refuse)
    assert store.load(clean.key) is None
    assert (clean.path / "meta.json").exists()


def test_store_files_honour_the_umask(tiny_arrays, tiny, store):
    previous = os.umask(0o027)
    try:
        clean = _three_shards(tiny, tiny_arrays, store)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in clean.path.iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {0o640}, modes


def test_key_holds_runtime_precision_and_the_init_versions(tiny_arrays, tiny):
    from headstart.features.extract import key_parts, store_key

    spec = tiny.spec
    cpu = key_parts(spec, "pooled", "avg", "fp")
    assert cpu["runtime"] == "torch" and cpu["precision"] == "fp32"
    assert key_parts(spec, "pooled", "avg", "fp", device="cuda:0")["precision"] == "bf16"
    assert store_key(spec, "pooled", "avg", "fp", device="cuda") != store_key(spec, "pooled", "avg", "fp", device="cpu"), \
        "bf16 GPU features and fp32 CPU features never share an entry"
    from importlib.metadata import version

    assert spec.sha256.startswith("random-init"), "the tiny backbone is a seeded random initialisation"
    assert cpu["init_versions"]["torch"] == version("torch") and cpu["init_versions"]["timm"] == version("timm")
    assert "init_versions" not in key_parts(dataclasses.replace(spec, sha256="ab" * 32), "pooled", "avg", "fp")


def test_content_fingerprint_sees_a_same_size_edit_that_keeps_the_mtime(tmp_path, monkeypatch):
    from test_data import make_folder

    root = make_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    data = load_data(root)
    before_stat, before_content = data.fingerprint(), data.fingerprint(content=True)
    target = Path(data.items[0])
    stat = target.stat()
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF  # same size
    target.write_bytes(bytes(raw))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert data.fingerprint() == before_stat, "size + mtime cannot see this edit"
    assert data.fingerprint(content=True) != before_content
    monkeypatch.setenv("HEADSTART_FINGERPRINT", "content")
    assert data.fingerprint() == data.fingerprint(content=True)
