"""Shared fixtures: an isolated feature store per test session, tiny models, small data."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("HEADSTART_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_BACKBONE = "timm:test_efficientnet@random"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own feature store, so no test sees another's entries; extraction pins the torch runtime."""
    root = tmp_path_factory.mktemp("hscache")
    monkeypatch.setenv("HEADSTART_CACHE", str(root))
    # Extraction runs torch fp32 as before: auto's one-off ONNX export and timing would add seconds
    # to every test over 1,000 items. tests/test_runtime.py covers auto (it unsets this).
    monkeypatch.setenv("HEADSTART_RUNTIME", "torch")
    return root


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (bit-for-bit comparisons, and no oversubscription beside the helper processes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def arrays():
    """300 16x16 images, 3 classes told apart by where a bright bar sits (the fine-tuning tests' data)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    images = rng.integers(0, 60, size=(300, 16, 16)).astype(np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 4 * label
        images[i, top : top + 5, 3:13] = 220
    return images, labels


@pytest.fixture
def data(arrays):
    """``arrays`` as a Dataset (seeded split)."""
    from headstart.data import load_data

    return load_data(arrays, seed=0)


@pytest.fixture
def tiny_arrays():
    """60 random 16x16 grayscale images in 3 classes whose brightness differs by class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    images = (rng.random((60, 16, 16)) * 80 + labels[:, None, None] * 80).astype(np.uint8)
    return images, labels


def assert_task_run_manifest(out, task: str, result, scenes) -> None:
    """A detect/segment training run's manifest.json: command, versions, task, seed, wall time, weights and data."""
    import json
    import sys

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == sys.argv and "torch" in manifest["versions"]
    assert manifest["task"] == task and manifest["seed"] == 0 and manifest["wall_seconds"] > 0
    assert manifest["weights_sha256"] == result.bundle.spec.sha256 and manifest["data_fingerprint"] == scenes.fingerprint()


def report_sections(page: str) -> dict[str, str]:
    """The sections of a report.html page: id to the section's HTML."""
    import re

    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, re.S))


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``headstart.cli.main`` in this process (the console script's entry point) on ``args``: (exit code, stdout, stderr)."""
    from headstart.cli import main

    monkeypatch.setattr(sys, "argv", ["headstart", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
