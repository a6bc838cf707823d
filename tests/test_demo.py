"""`headstart demo`, the README's main job, end to end on the offline assets (a smaller run than the default)."""

from __future__ import annotations

import json

import pytest

from headstart.backbones.availability import is_offline

pytestmark = pytest.mark.skipif(
    not is_offline("tv:mobilenet_v2.IMAGENET1K_V1"), reason="the offline MobileNetV2 weights are not installed (run make setup)"
)


def test_demo_json_is_the_only_stdout_and_the_run_is_complete(tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--per-class", "20", "--image-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # tables and narration go to stderr under --json
    pretrained = [r for r in summary["runs"] if "@random" not in r["backbone"]]
    control = [r for r in summary["runs"] if "@random" in r["backbone"]]
    assert pretrained and control
    # ImageNet features beat the random-init control with every head.
    for head in {r["head"] for r in summary["runs"]}:
        best_pretrained = max(r["test/accuracy"] for r in pretrained if r["head"] == head)
        assert best_pretrained > max(r["test/accuracy"] for r in control if r["head"] == head) + 0.05
    assert "@random" not in summary["rank"][0]["candidate"]  # the ranking puts a pretrained backbone first
    assert summary["finetune"]["finetune_accuracy"] > 0.5
    for name in ("report.html", "metrics.json", "manifest.json", "rank.json", "bundle/bundle.json", "finetune/bundle/bundle.json"):
        assert (out / name).is_file(), name
    assert (out / "finetune" / "report.html").is_file()
