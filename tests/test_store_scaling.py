"""Extraction across several processes into one store, and stores behind fsspec URLs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart import FeatureStore, extract, load_data

HELPER = Path(__file__).with_name("_mp_extract.py")


def _run(store: str, output: Path, rank: int | None = None, world: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    if rank is not None:
        env.update(RANK=str(rank), WORLD_SIZE=str(world))
    return subprocess.Popen([sys.executable, str(HELPER), store, str(output)], env=env, stderr=subprocess.PIPE, text=True)


def _wait(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err


def test_two_processes_write_one_entry_identical_to_single_process(tmp_path):
    ranks = [_run(str(tmp_path / "shared"), tmp_path / f"rank{r}.npy", r, 2) for r in (0, 1)]
    for process in ranks:
        _wait(process)
    _wait(_run(str(tmp_path / "single"), tmp_path / "single.npy"))
    single = np.load(tmp_path / "single.npy")
    assert single.shape == (120, 256)
    for r in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"rank{r}.npy"), single)
    entries = FeatureStore(tmp_path / "shared").ls()
    assert len(entries) == 1
    assert entries[0].meta["n_shards"] == 8


def test_shards_of_a_dead_rank_are_redone_on_rerun(tmp_path, monkeypatch):
    # Rank 1 of 2 runs alone and then "dies": only its shards (odd indices) exist, nothing is committed.
    monkeypatch.setenv("HEADSTART_WAIT_S", "0")
    process = _run(str(tmp_path / "shared"), tmp_path / "rank1.npy", 1, 2)
    process.communicate(timeout=300)
    assert process.returncode != 0  # it waited for rank 0's commit and gave up
    store = FeatureStore(tmp_path / "shared")
    entry = next((tmp_path / "shared" / "features").iterdir())
    assert sorted(p.name for p in entry.glob("*.json")) == [f"shard-{i:05d}.json" for i in (1, 3, 5, 7)]
    assert store.ls() == []
    # A single-process rerun computes only the missing (even) shards and commits.
    before = {p.name: p.stat().st_mtime_ns for p in entry.glob("shard-*.safetensors")}
    _wait(_run(str(tmp_path / "shared"), tmp_path / "rerun.npy"))
    after = {p.name: p.stat().st_mtime_ns for p in entry.glob("shard-*.safetensors")}
    assert all(after[name] == mtime for name, mtime in before.items())
    assert len(after) == 8
    _wait(_run(str(tmp_path / "fresh"), tmp_path / "fresh.npy"))
    assert np.array_equal(np.load(tmp_path / "rerun.npy"), np.load(tmp_path / "fresh.npy"))


@pytest.fixture
def small_data(tiny_arrays):
    return load_data(tiny_arrays)


def test_fsspec_memory_store_round_trip(small_data):
    pytest.importorskip("fsspec")
    store = FeatureStore("memory://headstart-test")
    first = extract("timm:test_efficientnet@random", small_data, image_size=32, store=store, shard_size=16, quiet=True)
    second = extract("timm:test_efficientnet@random", small_data, image_size=32, store=store, shard_size=16, quiet=True)
    assert not first.hit and second.hit
    assert np.array_equal(first.X, second.X)
    assert [e.key for e in store.ls()] == [first.key]
    assert store.du() > first.X.nbytes
    assert store.rm(everything=True) == [first.key]
    assert store.ls() == []


def test_fsspec_local_url_matches_plain_path(small_data, tmp_path):
    plain = extract("timm:test_efficientnet@random", small_data, image_size=32, store=FeatureStore(tmp_path / "a"), quiet=True)
    url = extract("timm:test_efficientnet@random", small_data, image_size=32, store=FeatureStore(f"file://{tmp_path / 'b'}"), quiet=True)
    assert plain.key == url.key
    assert np.array_equal(plain.X, url.X)


def test_shards_from_another_layout_are_not_reused(small_data, tmp_path):
    store = FeatureStore(tmp_path)
    first = extract("timm:test_efficientnet@random", small_data, image_size=32, store=store, shard_size=16, quiet=True)
    (Path(first.path) / "meta.json").unlink()
    # Same key, other shard size: the old shards describe other row ranges and must not be served.
    assert store.done_shards(first.key, len(small_data), 32) == set()
    second = extract("timm:test_efficientnet@random", small_data, image_size=32, store=store, shard_size=32, quiet=True)
    assert np.array_equal(first.X, second.X)
