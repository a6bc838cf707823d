"""Segmentation: IoU metrics by hand (ignore index excluded), heads on headstart trunks, training, bundle, predict, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headstart.backbones import load_backbone
from headstart.tasks import animal_scenes, build_segmenter, segmentation_metrics, train_segmenter
from headstart.evaluate.tasks import confusion_matrix

TINY = "timm:test_efficientnet@random"


# ----- metrics -----------------------------------------------------------------------------------

def test_iou_by_hand_and_ignore_index_excluded():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 2, 1]])  # the two ignored pixels are "wrong" on purpose
    confusion = confusion_matrix(prediction, target, 3)
    assert confusion.sum() == 10  # 12 pixels, 2 ignored
    metrics = segmentation_metrics(confusion, ["bg", "a", "b"])
    # bg: TP 3, FP 1 (a 2 predicted as 0), FN 1 (a 0 predicted as 1) -> 3/5; a: TP 4, FP 1 -> 4/5; b: TP 1, FN 1 -> 1/2
    assert metrics["per_class_iou"] == {"bg": pytest.approx(0.6), "a": pytest.approx(0.8), "b": pytest.approx(0.5)}
    assert metrics["miou"] == pytest.approx((0.6 + 0.8 + 0.5) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(8 / 10)


def test_absent_class_is_left_out_of_the_mean():
    target = np.zeros((4, 4), int)
    metrics = segmentation_metrics(confusion_matrix(target, target, 3), ["bg", "a", "b"])
    assert metrics["per_class_iou"] == {"bg": 1.0, "a": None, "b": None}
    assert metrics["miou"] == 1.0


def test_bad_target_values_are_refused():
    with pytest.raises(ValueError, match="neither classes"):
        confusion_matrix(np.zeros(4, int), np.array([0, 1, 7, 255]), 3)


# ----- heads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["fpn", "deeplabv3", "fcn"])
def test_heads_give_logits_at_input_size(head):
    model = build_segmenter(load_backbone(TINY), num_classes=4, head=head, image_size=64, channels=32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 4, 64, 64)
    assert any(n.startswith("head.") for n in model.policy_parameters())


# ----- training, bundle, predict -----------------------------------------------------------------

@pytest.fixture(scope="module")
def scenes():
    return animal_scenes(n_train=8, n_test=4, size=64, seed=2)


def test_train_bundle_and_predict_writes_masks_and_overlays(scenes, tmp_path):
    result = train_segmenter(scenes, TINY, epochs=1, batch_size=4, image_size=64, channels=32, val_fraction=0.0, quiet=True, out=tmp_path / "run")
    assert result.test["pixels"] == sum(int((scenes.scenes[i].mask != 255).sum()) for i in scenes.indices("test"))
    assert 0.0 <= result.test["miou"] <= 1.0
    assert result.bundle.classes == ["background", *scenes.classes]
    document = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert document["task"] == "segmentation" and document["ignore_index"] == 255
    _assert_run_files(tmp_path / "run", result, scenes)

    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in scenes.indices("test")[:2]:
        Image.fromarray(scenes.scenes[i].image).save(folder / f"scene{i}.png")
    from headstart.cli import app

    run = CliRunner().invoke(app, ["predict", str(result.bundle_path), str(folder), "--out", str(tmp_path / "pred"), "--json"])
    assert run.exit_code == 0, run.output
    written = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert written["task"] == "segmentation" and len(written["predictions"]) == 2
    masks = sorted((tmp_path / "pred").glob("*.mask.png"))
    overlays = sorted((tmp_path / "pred").glob("*.overlay.png"))
    assert len(masks) == 2 and len(overlays) == 2
    # the mask PNG holds the class indices the reloaded bundle predicts
    from headstart.bundles import Bundle

    bundle = Bundle.load(result.bundle_path)
    image = np.asarray(Image.open(folder / masks[0].name.replace(".mask.png", ".png")).convert("RGB"))
    (expected, _), = bundle.predict_images([image])
    saved = Image.open(masks[0])
    assert saved.mode == "P" and np.array_equal(np.asarray(saved), expected)


def _assert_run_files(out, result, scenes):
    """manifest.json, and report.html with overlays of the test images captioned with their own mIoU."""
    import html

    from conftest import assert_task_run_manifest, report_sections

    assert_task_run_manifest(out, "segmentation", result, scenes)
    test_rows = scenes.indices("test")
    overlays = sorted((out / "predictions").glob("*.overlay.png"))
    assert [p.name for p in overlays] == sorted(f"{scenes.scenes[i].name}.overlay.png" for i in test_rows)
    # the caption's mIoU is the image's own, from the saved mask against the truth
    first = scenes.scenes[test_rows[0]]
    predicted = np.asarray(Image.open(out / "predictions" / f"{first.name}.mask.png"))
    miou = segmentation_metrics(confusion_matrix(predicted, first.mask, len(result.bundle.classes), 255), result.bundle.classes)["miou"]
    captions = json.loads((out / "predictions" / "captions.json").read_text())
    assert f"mIoU {miou:.2f}" in captions[f"{first.name}.overlay.png"]
    sections = report_sections((out / "report.html").read_text())
    assert {"curves", "per-class", "predictions", "manifest"} <= set(sections)
    # the overlays, not the near-black class-index masks
    assert sections["predictions"].count("<img") == len(test_rows) and html.escape(captions[f"{first.name}.overlay.png"]) in sections["predictions"]


def test_cli_segment_train_and_evaluate_on_files(scenes, tmp_path):
    from headstart.cli import app
    from headstart.tasks import write_coco

    write_coco(scenes, tmp_path / "data")
    runner = CliRunner()
    run = runner.invoke(app, ["segment", "train", str(tmp_path / "data"), "-b", TINY, "--epochs", "1", "--batch-size", "4", "--channels", "32",
                              "--val-fraction", "0", "--out", str(tmp_path / "run"), "--json"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout)
    assert result["task"] == "segmentation" and result["test"]["miou"] is not None
    run = runner.invoke(app, ["segment", "evaluate", str(tmp_path / "run" / "bundle"), str(tmp_path / "data"), "--json"])
    assert run.exit_code == 0, run.output
    evaluated = json.loads(run.stdout)
    assert evaluated["metrics"]["miou"] == pytest.approx(result["test"]["miou"])
