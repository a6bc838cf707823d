"""One bundle API: load_bundle dispatches on bundle.json's ``kind``; bundles from before ``kind`` still load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from headstart.backbones import load_backbone
from headstart.bundles import BUNDLE_FORMAT, Bundle, TaskBundle, load_bundle
from headstart.errors import DataError, WeightsMismatchError
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
            # Saved before calibration existed: temperature 1, no prior shift, the head's own probabilities.
            assert loaded.calibration.temperature == 1.0 and loaded.calibration.log_prior_shift is None and loaded.calibration.is_identity
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


# ----- run folders, damaged bundles, hashes before reading, TorchScript (issue 13) ----------------


def test_load_bundle_takes_a_run_folder(classifier, tmp_path):
    from headstart.bundles import locate_bundle

    classifier.save(tmp_path / "run" / "bundle")
    assert locate_bundle(tmp_path / "run") == (tmp_path / "run" / "bundle", True)
    assert locate_bundle(tmp_path / "run" / "bundle") == (tmp_path / "run" / "bundle", False)
    for loaded in (load_bundle(tmp_path / "run"), Bundle.load(tmp_path / "run")):
        assert loaded.path == tmp_path / "run" / "bundle"
        np.testing.assert_allclose(loaded.predict_proba(_images()), classifier.predict_proba(_images()), atol=1e-6)
    _task_bundle("detection").save(tmp_path / "det" / "bundle")
    assert TaskBundle.load(tmp_path / "det").path == tmp_path / "det" / "bundle"


def _edit(path, **changes):
    document = json.loads((path / "bundle.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            document.pop(key)
        else:
            document[key] = value
    (path / "bundle.json").write_text(json.dumps(document))


_DROP = object()


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("finetuned_backbone_sha256", _DROP, "no 'finetuned_backbone_sha256' field"),
        ("backbone", _DROP, "no 'backbone' field"),
        ("classes", _DROP, "no 'classes' field"),
        ("head", _DROP, "no 'head' field"),
        ("classes", "cat,dog", "'classes' field is a str, not a list"),
        ("head", [1, 2], "'head' field is a list, not a dict"),
        ("layer", 3, "'layer' field is a int, not a str"),
        ("finetuned_backbone_sha256", 7, "'finetuned_backbone_sha256' field is a int"),
        ("backbone", {"name": "tv:x"}, "'backbone' field is not a backbone spec"),
        ("adapter", {"rank": 8}, "'adapter' field has no 'sha256'"),
        ("head", {"kind": "no-such-head"}, "does not fit the 'head' field"),
        ("classes", None, "'classes' field is a null, not a list"),
        ("format", "1", "'format' field is a str"),
        ("calibration", [1.5], "'calibration' field is a list, not a dict"),
        ("calibration", {"temperature": -1.0}, "'calibration' field is not valid"),
        ("calibration", {"temperature": 2.0, "log_prior_shift": [0.1, -0.1, 0.0]}, "3 entries for 2 classes"),
        ("calibration", {"scores": "logits"}, "'calibration' field is not valid"),
    ],
)
def test_a_damaged_classification_bundle_json_names_the_field(classifier, tmp_path, field, value, words):
    path = classifier.save(tmp_path / "clf")
    _edit(path, **{field: value})
    with pytest.raises(DataError, match="damaged") as info:
        load_bundle(path)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["model_sha256", "model", "backbone", "classes"])
def test_a_task_bundle_without_a_required_field_names_it(tmp_path, field):
    path = _task_bundle("detection").save(tmp_path / "det")
    _edit(path, **{field: _DROP})
    with pytest.raises(DataError, match=f"no '{field}' field.*damaged"):
        load_bundle(path)


def test_a_task_bundle_with_a_bad_model_field_or_file_is_damaged(tmp_path):
    from headstart.backbones.packaged import sha256_file

    path = _task_bundle("detection").save(tmp_path / "det")
    _edit(path, model={"num_classes": 2})
    with pytest.raises(DataError, match="'model' field does not describe a detection network"):
        _ = load_bundle(path).model
    path = _task_bundle("detection").save(tmp_path / "det2")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(WeightsMismatchError, match="model.safetensors.*damaged"):
        _ = load_bundle(path).model
    _edit(path, model_sha256=sha256_file(weights))  # the record matches the truncated file: reading it fails
    with pytest.raises(DataError, match="model.safetensors cannot be read .*SafetensorError.*damaged"):
        _ = load_bundle(path).model


def test_a_corrupt_head_is_one_data_error(classifier, tmp_path):
    path = classifier.save(tmp_path / "clf")
    (path / "head.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError, match="head.safetensors cannot be read.*the bundle is damaged"):
        load_bundle(path)
    (path / "head.safetensors").unlink()
    with pytest.raises(DataError, match="head.safetensors is missing.*the bundle is damaged"):
        load_bundle(path)


@pytest.mark.parametrize("filename", ["backbone.safetensors", "adapter.safetensors"])
def test_truncated_backbone_or_adapter_weights_are_damaged(classifier, tmp_path, filename):
    from headstart.backbones.packaged import sha256_file

    tuned = Bundle(classifier.spec, classifier.head, classifier.classes, backbone=classifier.backbone, finetuned=True)
    path = tuned.save(tmp_path / "tuned")
    if filename == "adapter.safetensors":
        (path / filename).write_bytes((path / "backbone.safetensors").read_bytes())
        _edit(path, finetuned_backbone_sha256=None, adapter={"rank": 8, "alpha": 16.0, "targets": ["x"], "sha256": sha256_file(path / filename)})
    weights = path / filename
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WeightsMismatchError, match=f"{filename} has sha256 .* not the recorded .*damaged"):
        _ = load_bundle(path).backbone
    key = "adapter" if filename == "adapter.safetensors" else "finetuned_backbone_sha256"
    document = json.loads((path / "bundle.json").read_text())
    recorded = {**document[key], "sha256": sha256_file(weights)} if key == "adapter" else sha256_file(weights)
    _edit(path, **{key: recorded})
    with pytest.raises(DataError, match=f"{filename} cannot be read.*damaged"):
        _ = load_bundle(path).backbone


def test_a_finetuned_bundle_loads_its_own_backbone(classifier, tmp_path):
    tuned = Bundle(classifier.spec, classifier.head, classifier.classes, backbone=classifier.backbone, finetuned=True)
    path = tuned.save(tmp_path / "tuned")
    loaded = load_bundle(path)
    assert loaded.finetuned
    np.testing.assert_allclose(loaded.predict_proba(_images()), classifier.predict_proba(_images()), atol=1e-6)


def test_the_recorded_backbone_sha256_is_checked_before_the_weights_are_read(classifier, tmp_path, monkeypatch):
    spec = dataclasses.replace(load_backbone("tv:mobilenet_v2.IMAGENET1K_V1").spec, sha256="0" * 64)
    path = Bundle(spec, classifier.head, classifier.classes).save(tmp_path / "clf")

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone's weights were read before their sha256 was checked")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(WeightsMismatchError) as info:
        _ = load_bundle(path).backbone
    message = str(info.value)
    assert str(path) in message and "0" * 64 in message and "not loaded" in message


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_torchscript_bundle_needs_the_opt_in(classifier, tmp_path):
    from headstart.errors import WeightsUnavailableError

    scripted = tmp_path / "scripted.pt"
    torch.jit.script(classifier.backbone.model).save(str(scripted))
    scripted.with_suffix(".json").write_text(json.dumps({"input_size": 32, "feature_dim": 1280}))
    backbone = load_backbone(f"file:{scripted}", allow_torchscript=True)
    path = Bundle(backbone.spec, classifier.head, classifier.classes, backbone=backbone).save(tmp_path / "clf")
    with pytest.raises(WeightsUnavailableError, match="TorchScript.*--allow-torchscript"):
        load_bundle(path).predict_proba(_images())
    loaded = load_bundle(path, allow_torchscript=True)
    np.testing.assert_allclose(loaded.predict_proba(_images()), classifier.predict_proba(_images()), atol=1e-5)
# ----- tfidf: the sk:tfidf baseline -------------------------------------------------------------------


def _mail(n: int = 60, classes: int = 2, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Texts where one keyword per class decides, among filler words (and accented ones)."""
    rng = np.random.default_rng(seed)
    filler = ["see", "you", "at", "the", "meeting", "today", "please", "send", "notes", "café", "naïve", "Ünïcode"]
    keywords = ["agenda", "unsubscribe", "invoice", "lottery"][:classes]
    texts, labels = [], []
    for i in range(n):
        label = i % classes
        words = [str(w) for w in rng.choice(filler, 6)]
        words.insert(int(rng.integers(0, 6)), keywords[label])
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)


@pytest.mark.parametrize("classes", [2, 3])
def test_tfidf_bundle_predicts_as_the_pipeline_and_holds_no_pickle(classes, tmp_path):
    from headstart.bundles import KINDS, TfidfBundle
    from headstart.heads.tfidf import TfidfLogReg

    texts, labels = _mail(classes=classes)
    model = TfidfLogReg(random_state=0).fit(texts[:45], labels[:45])
    names = ["ham", "spam", "bill"][:classes]
    TfidfBundle(model, names, metrics={"accuracy": 1.0}, manifest={"seed": 0}).save(tmp_path / "b")
    assert KINDS["tfidf"] is TfidfBundle
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bundle.json", "head.safetensors", "vectorizer.json", "vectorizer.safetensors"]
    for path in (tmp_path / "b").iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
    document = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert document["kind"] == "tfidf" and document["modality"] == "text" and document["backbone"]["name"] == "sk:tfidf"
    assert set(document["sha256"]) == {"vectorizer.json", "vectorizer.safetensors", "head.safetensors"}
    assert document["vectorizer"]["ngram_range"] == [1, 2] and document["head"]["C"] == model.C_

    loaded = load_bundle(tmp_path / "b")
    assert type(loaded) is TfidfBundle and type(Bundle.load(tmp_path / "b")) is TfidfBundle
    new = texts[45:] + ["unsubscribe", "words it never saw", "AGENDA, Café!"]
    np.testing.assert_allclose(loaded.predict_proba(new), model.predict_proba(new), atol=1e-6, rtol=0)
    assert loaded.predict(new) == [names[i] for i in model.predict(new)]
    assert loaded.spec.modality == "text" and loaded.spec.sha256 == document["backbone"]["sha256"]
    results = loaded.predict_batch(["unsubscribe now", "   ", "agenda"], top_k=5)
    assert results[1].error == "empty text" and results[1].label is None
    assert results[0].label == "spam" and len(results[0].top_k) == classes
    with pytest.raises(DataError, match="empty text"):
        loaded.predict_proba(["agenda", ""])
    with pytest.raises(DataError, match="not a single string"):
        loaded.predict_proba("agenda")


def test_tfidf_multilabel_bundle_round_trips(tmp_path):
    from headstart.bundles import TfidfBundle
    from headstart.heads.tfidf import TfidfLogReg

    words = ["alpha", "beta", "gamma"]
    texts = [" ".join(w for j, w in enumerate(words) if (i >> j) & 1) or "none" for i in range(1, 8)] * 6
    Y = np.array([[(i >> j) & 1 for j in range(3)] for i in range(1, 8)] * 6)
    model = TfidfLogReg(random_state=0).fit(texts, Y)
    TfidfBundle(model, words).save(tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    np.testing.assert_allclose(loaded.predict_proba(["alpha gamma", "beta"]), model.predict_proba(["alpha gamma", "beta"]), atol=1e-6, rtol=0)


def test_tfidf_bundle_files_are_checked_before_they_are_read(tmp_path):
    from headstart.bundles import TfidfBundle
    from headstart.errors import WeightsMismatchError
    from headstart.heads.tfidf import TfidfLogReg

    texts, labels = _mail()
    folder = TfidfBundle(TfidfLogReg(random_state=0).fit(texts, labels), ["ham", "spam"]).save(tmp_path / "b")
    original = {p.name: p.read_bytes() for p in folder.iterdir()}

    vocabulary = json.loads(original["vectorizer.json"])
    vocabulary["terms"][0], vocabulary["terms"][1] = vocabulary["terms"][1], vocabulary["terms"][0]
    (folder / "vectorizer.json").write_text(json.dumps(vocabulary))
    with pytest.raises(WeightsMismatchError, match="vectorizer.json has sha256"):
        load_bundle(folder)
    (folder / "vectorizer.json").write_bytes(original["vectorizer.json"])
    (folder / "head.safetensors").write_bytes(original["head.safetensors"][:-8] + b"\x00" * 8)
    with pytest.raises(WeightsMismatchError, match="head.safetensors has sha256"):
        load_bundle(folder)
    (folder / "head.safetensors").write_bytes(original["head.safetensors"])
    (folder / "vectorizer.safetensors").unlink()
    with pytest.raises(DataError, match="vectorizer.safetensors is missing"):
        load_bundle(folder)
    (folder / "vectorizer.safetensors").write_bytes(original["vectorizer.safetensors"])
    load_bundle(folder)  # whole again

    document = json.loads(original["bundle.json"])
    del document["sha256"]["head.safetensors"]
    (folder / "bundle.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"sha256\.head\.safetensors"):
        load_bundle(folder)
    del document["sha256"]
    (folder / "bundle.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match="no 'sha256' field"):
        load_bundle(folder)
