"""Detection: COCO AP on hand-made cases, detectors on headstart trunks, policy names, training, resume, bundles, predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart.backbones import load_backbone
from headstart.finetune import PolicyError
from headstart.tasks import animal_scenes, build_detector, detection_metrics, train_detector
from headstart.engine import resolve_policy

TINY = "timm:test_efficientnet@random"


def _target(boxes, labels, crowd=None):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels), "iscrowd": np.array(crowd if crowd is not None else [0] * len(labels))}


def _pred(boxes, scores, labels):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "scores": np.array(scores, float), "labels": np.array(labels)}


BOX = [0, 0, 10, 10]
FAR = [50, 50, 60, 60]


# ----- AP against hand-computed values ------------------------------------------------------------

def test_perfect_predictions_give_ap_one():
    metrics = detection_metrics([_pred([BOX, FAR], [0.9, 0.8], [0, 1])], [_target([BOX, FAR], [0, 1])], ["a", "b"])
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_50"] == pytest.approx(1.0)
    assert metrics["per_class"] == {"a": {"ap": pytest.approx(1.0), "ap_50": pytest.approx(1.0)}, "b": {"ap": pytest.approx(1.0), "ap_50": pytest.approx(1.0)}}


def test_false_positive_ranked_first_halves_ap():
    # ranks: FP (0.95), TP (0.9): precision 0.5 at recall 1, so the interpolated precision is 0.5 at every recall point
    metrics = detection_metrics([_pred([FAR, BOX], [0.95, 0.9], [0, 0])], [_target([BOX], [0])], ["a"])
    assert metrics["map"] == pytest.approx(0.5)


def test_half_recall_gives_51_of_101_points():
    # one of two objects found at precision 1: recall points 0.00..0.50 (51 of 101) have precision 1
    metrics = detection_metrics([_pred([BOX], [0.9], [0])], [_target([BOX, FAR], [0, 0])], ["a"])
    assert metrics["map"] == pytest.approx(51 / 101)


def test_iou_thresholds_average():
    # IoU 0.62 with the only object: a hit at thresholds 0.50, 0.55, 0.60 (3 of 10)
    metrics = detection_metrics([_pred([[0, 0, 10, 6.2]], [0.9], [0])], [_target([BOX], [0])], ["a", "unseen"])
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["map"] == pytest.approx(0.3)
    assert metrics["map_75"] == pytest.approx(0.0)
    assert metrics["per_class"]["unseen"] == {"ap": None, "ap_50": None}  # no ground truth: not scored, not in the mean


def test_crowd_regions_are_ignored():
    predictions = [_pred([FAR, BOX], [0.95, 0.8], [0, 0])]
    crowd = detection_metrics(predictions, [_target([BOX, [48, 48, 62, 62]], [0, 0], [0, 1])], ["a"])
    assert crowd["map"] == pytest.approx(1.0)  # the detection on the crowd region is neither a hit nor a false positive
    assert crowd["objects"] == 1
    counted = detection_metrics(predictions, [_target([BOX, [48, 48, 62, 62]], [0, 0], [0, 0])], ["a"])
    # as a real object (IoU 100/196 = 0.51): a hit at 0.50 only; elsewhere the FP ranks first at recall 0.5
    assert counted["map"] == pytest.approx((1.0 + 9 * 0.5 * 51 / 101) / 10)


def test_no_detections_give_zero():
    metrics = detection_metrics([_pred([], [], [])], [_target([BOX], [0])], ["a"])
    assert metrics["map"] == 0.0 and metrics["map_50"] == 0.0


# ----- detectors on headstart backbones ----------------------------------------------------------

def test_detector_reuses_backbone_modules_and_names():
    backbone = load_backbone(TINY)
    reference = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    model = build_detector(backbone, num_classes=3, image_size=64, fpn_channels=32)
    names = list(model.policy_parameters())
    trunk = [n for n in names if not n.startswith("head.")]
    assert trunk and all(n in reference for n in trunk)  # the backbone's own names
    assert {"head.rpn.head.conv.0.0.weight", "head.roi_heads.box_predictor.cls_score.weight"} <= set(names)
    shared = dict(backbone.model.named_parameters())
    for name in trunk:
        assert model.policy_parameters()[name] is shared[name]  # the same tensors, not copies
    assert model.config["trunk"]["strides"] == [8, 16, 32]
    assert sum(1 for k in model.state_dict() if k.endswith("conv_stem.weight")) == 1  # each tensor saved once


def test_policy_head_and_stages_on_a_detector():
    backbone = load_backbone(TINY)
    model = build_detector(backbone, num_classes=3, image_size=64, fpn_channels=32)
    policy = resolve_policy(backbone.spec, 2, task="detection", trainable_stages=1)
    trainable, _ = policy.compile(model, 1e-3).phase(0)
    assert all(n in trainable for n in model.policy_parameters() if n.startswith("head."))  # 'head' is every new part
    assert any(n.startswith("blocks.4.") for n in trainable)  # the last stage the trunk uses
    assert not any(n.startswith(("conv_stem", "blocks.3.")) for n in trainable)
    with pytest.raises(PolicyError, match="linear probe"):
        resolve_policy(backbone.spec, 2, task="detection", strategy="lp-ft")
    with pytest.raises(PolicyError, match="not strategy and trainable_stages"):
        resolve_policy(backbone.spec, 2, task="detection", strategy="full", trainable_stages=1)


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_other_detectors_give_losses(arch):
    model = build_detector(load_backbone(TINY), num_classes=3, arch=arch, image_size=64, fpn_channels=64)  # FCOS GroupNorm: 32 groups
    model.train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([2])}
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [target, target])
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    (output,) = model([torch.rand(3, 64, 64)])
    assert set(output) >= {"boxes", "scores", "labels"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tv:mobilenet_v2.IMAGENET1K_V1", "timm:tf_efficientnet_lite0"])
def test_offline_pretrained_weights_reach_the_detector(name):
    backbone = load_backbone(name)
    assert backbone.spec.pretrained and len(backbone.spec.sha256) == 64
    fresh = dict(load_backbone(name).model.named_parameters())
    model = build_detector(backbone, num_classes=10, image_size=128, fpn_channels=64)
    trunk = {n: p for n, p in model.policy_parameters().items() if not n.startswith("head.")}
    assert len(trunk) > 50
    for parameter_name, parameter in trunk.items():
        assert torch.equal(parameter, fresh[parameter_name]), parameter_name
    assert model.config["trunk"]["strides"] == [8, 16, 32]


# ----- training, resume, bundles, predict ------------------------------------------------------

@pytest.fixture(scope="module")
def scenes():
    return animal_scenes(n_train=8, n_test=4, size=64, seed=1)


def _train(scenes, out, **kwargs):
    settings = {"epochs": 1, "batch_size": 4, "image_size": 64, "fpn_channels": 32, "val_fraction": 0.0, "quiet": True, "out": out}
    settings.update(kwargs)
    return train_detector(scenes, TINY, **settings)


def test_train_bundle_round_trip_and_predict_cli(scenes, tmp_path):
    result = _train(scenes, tmp_path / "run")
    assert set(result.test) >= {"map", "map_50", "per_class"}
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    _assert_run_files(tmp_path / "run", result, scenes)
    from headstart.bundles import Bundle

    bundle = Bundle.load(result.bundle_path)
    assert type(bundle).__name__ == "TaskBundle" and bundle.task == "detection"
    images = [scenes.scenes[i].image for i in scenes.indices("test")]
    bundle.score_threshold = 0.0
    result.bundle.score_threshold = 0.0
    reloaded, original = bundle.predict_images(images), result.bundle.predict_images(images)
    for a, b in zip(reloaded, original):
        assert np.allclose(a["boxes"], b["boxes"], atol=1e-4) and np.array_equal(a["labels"], b["labels"])

    from PIL import Image

    from headstart.cli import app

    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in scenes.indices("test")[:2]:
        Image.fromarray(scenes.scenes[i].image).save(folder / f"scene{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    run = CliRunner().invoke(app, ["predict", str(result.bundle_path), str(folder), "--json", "--out", str(tmp_path / "pred")])
    assert run.exit_code == 0, run.output
    printed = json.loads(run.stdout)
    assert [r["error"] is not None for r in printed] == [True, False, False]
    written = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert written["task"] == "detection" and len(written["predictions"]) == 3
    assert all("boxes" in p for p in written["predictions"] if p["error"] is None)
    drawn = sorted(p.name for p in (tmp_path / "pred").glob("*.boxes.png"))
    assert len(drawn) == 2
    assert Image.open(tmp_path / "pred" / drawn[0]).size[0] >= 64


def _assert_run_files(out, result, scenes):
    """manifest.json, and report.html with the test images' boxes drawn and captioned against the truth."""
    import html

    from conftest import assert_task_run_manifest, report_sections

    assert_task_run_manifest(out, "detection", result, scenes)
    test_rows = scenes.indices("test")
    drawn = sorted((out / "predictions").glob("*.boxes.png"))
    assert [p.name for p in drawn] == sorted(f"{scenes.scenes[i].name}.boxes.png" for i in test_rows)
    captions = json.loads((out / "predictions" / "captions.json").read_text())
    first = scenes.scenes[test_rows[0]]
    truth = [scenes.classes[label] for label, crowd in zip(first.labels, first.iscrowd) if not crowd]
    assert captions[f"{first.name}.boxes.png"].endswith(f"predicted at score >= 0.5, {len(truth)} true ({', '.join(truth)})")
    sections = report_sections((out / "report.html").read_text())
    assert {"curves", "per-class", "predictions", "manifest"} <= set(sections)
    assert sections["predictions"].count("<img") == len(test_rows) and html.escape(captions[f"{first.name}.boxes.png"]) in sections["predictions"]


@pytest.mark.slow
def test_resume_is_exact(scenes, tmp_path, monkeypatch):
    straight = _train(scenes, tmp_path / "straight", epochs=2)
    import headstart.engine.loop as train_module

    def stop(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_after_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        _train(scenes, tmp_path / "resumed", epochs=2)
    monkeypatch.setattr(train_module, "_after_epoch", lambda epoch: None)
    resumed = _train(scenes, tmp_path / "resumed", epochs=2, resume=True)
    assert [row["train_loss"] for row in resumed.history] == pytest.approx([row["train_loss"] for row in straight.history], rel=1e-6)
    a = straight.bundle.model.network.state_dict()
    b = resumed.bundle.model.network.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    with pytest.raises(Exception, match="other settings"):
        _train(scenes, tmp_path / "resumed", epochs=2, resume=True, lr=0.01)


def test_frozen_backbone_stays_frozen(scenes, tmp_path):
    backbone = load_backbone(TINY)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    result = train_detector(scenes, backbone, trainable_stages=0, epochs=1, batch_size=4, image_size=64, fpn_channels=32, val_fraction=0.0, quiet=True)
    trunk = {n for n in result.bundle.model.policy_parameters() if not n.startswith("head.")}
    after = dict(backbone.model.named_parameters())
    assert trunk and all(torch.equal(before[n], after[n]) for n in trunk)
    assert result.history[0]["trainable_params"] < sum(p.numel() for p in result.bundle.model.parameters())


@pytest.mark.parametrize("name", ["timm:test_vit@random"])
def test_backbone_without_feature_maps_is_refused(name):
    from headstart.errors import HeadstartError

    with pytest.raises(HeadstartError, match="stride 8"):
        build_detector(load_backbone(name), num_classes=3, image_size=64)
