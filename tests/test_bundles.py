"""One bundle API: load_bundle dispatches on bundle.json's ``kind``; bundles from before ``kind`` still load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from headstart.backbones import load_backbone
from headstart.bundles import BUNDLE_FORMAT, Bundle, TaskBundle, load_bundle
from headstart.errors import DataError
from headstart.heads import LinearProbe

BACKBONE = "tv:mobilenet_v2@random"


@pytest.fixture(scope="module")
def classifier() -> Bundle:
    """A linear head on a random MobileNetV2 at 32 px: a classification bundle that predicts for real."""
    backbone = load_backbone(BACKBONE)
    backbone.spec = dataclasses.replace(backbone.spec, input_size=32)
    bundle = Bundle(backbone.spec, LinearProbe(random_state=0), ["cat", "dog"], backbone=backbone)
    images = list(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    batch = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])
    with torch.inference_mode():
        X = backbone.features(batch).float().numpy()
    bundle.head.fit(X, np.array([0, 1] * 4))
    return bundle


def _images() -> list[np.ndarray]:
    return list(np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))


class _Network:
    """What TaskBundle.save needs of a model: its network's weights."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.network = torch.nn.Linear(3, 2)


def _task_bundle(task: str) -> TaskBundle:
    spec = load_backbone(BACKBONE).spec
    config = {"num_classes": 2, "arch": "fcos", "image_size": 64, "fpn_channels": 32, "strides": [8, 16]}
    return TaskBundle(task, spec, config, ["cat", "dog"] if task == "detection" else ["background", "cat"], model=_Network(), score_threshold=0.25)


def test_load_bundle_dispatches_on_kind_for_classification(classifier, tmp_path):
    path = classifier.save(tmp_path / "clf")
    document = json.loads((path / "bundle.json").read_text())
    assert document["kind"] == "classification" and document["format"] == BUNDLE_FORMAT
    loaded = load_bundle(path)
    assert type(loaded) is Bundle and loaded.kind == "classification" and loaded.classes == ["cat", "dog"]
    assert type(Bundle.load(path)) is Bundle
    np.testing.assert_allclose(loaded.predict_proba(_images()), classifier.predict_proba(_images()), atol=1e-6)
    with pytest.raises(DataError, match="is a classification bundle, not a detection or segmentation one"):
        TaskBundle.load(path)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_load_bundle_dispatches_on_kind_for_task_bundles(task, tmp_path):
    path = _task_bundle(task).save(tmp_path / task)
    document = json.loads((path / "bundle.json").read_text())
    assert document["kind"] == task and document["task"] == task
    for loaded in (load_bundle(path), Bundle.load(path), TaskBundle.load(path)):
        assert type(loaded) is TaskBundle and loaded.kind == task and loaded.task == task
        assert loaded.score_threshold == 0.25 and loaded.config["arch"] == "fcos"


def test_legacy_classification_bundle_without_kind_loads(classifier, tmp_path):
    """bundle.json as headstart wrote it before ``kind`` (with ``task``), and the oldest shape (neither)."""
    from safetensors.numpy import save_file

    arrays, head_meta = classifier.head.to_state()
    legacy = {
        "format": 1,
        "task": "classification",
        "modality": "image",
        "backbone": classifier.spec.to_dict(),
        "finetuned_backbone_sha256": None,
        "adapter": None,
        "layer": "pooled",
        "pool": "avg",
        "classes": ["cat", "dog"],
        "head": head_meta,
        "metrics": {"accuracy": 0.5},
        "manifest": {"versions": {}, "saved": 0.0, "seed": 0},
    }
    for name, document in (("with-task", legacy), ("oldest", {k: v for k, v in legacy.items() if k != "task"})):
        folder = tmp_path / name
        folder.mkdir()
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / "head.safetensors"))
        (folder / "bundle.json").write_text(json.dumps(document))
        for loaded in (load_bundle(folder), Bundle.load(folder)):
            assert type(loaded) is Bundle and loaded.kind == "classification" and loaded.metrics == {"accuracy": 0.5}
            np.testing.assert_allclose(loaded.predict_proba(_images()), classifier.predict_proba(_images()), atol=1e-6)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_legacy_task_bundle_without_kind_loads(task, tmp_path):
    """A detection or segmentation bundle.json as headstart wrote it before ``kind``."""
    spec = load_backbone(BACKBONE).spec
    legacy = {
        "format": 1,
        "task": task,
        "modality": "image",
        "backbone": spec.to_dict(),
        "model": {"num_classes": 2, "head": "fpn", "image_size": 64, "channels": 32, "strides": [8, 16]},
        "model_sha256": "0" * 64,
        "classes": ["background", "cat"],
        "score_threshold": 0.4,
        "ignore_index": 255,
        "metrics": {},
        "manifest": {"versions": {}, "saved": 0.0},
    }
    (tmp_path / "bundle.json").write_text(json.dumps(legacy))
    for loaded in (load_bundle(tmp_path), Bundle.load(tmp_path), TaskBundle.load(tmp_path)):
        assert type(loaded) is TaskBundle and loaded.task == task and loaded.kind == task
        assert loaded.score_threshold == 0.4 and loaded.ignore_index == 255 and loaded.spec == spec


def test_bundle_json_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="no bundle.json"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not an object"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 1, "kind": "captioning"}))
    with pytest.raises(DataError, match="'captioning' bundle"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": BUNDLE_FORMAT + 1, "kind": "detection"}))
    with pytest.raises(DataError, match="newer headstart"):
        load_bundle(tmp_path)
