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
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--per-class", "20", "--image-size", "64", "--budget", "1m", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # tables and narration go to stderr under --json
    # auto stayed within its budget, chose a pretrained backbone, and the control shows what pretraining is worth.
    assert summary["auto_seconds"] <= 1.1 * summary["budget_s"] == pytest.approx(66)
    assert "@random" not in summary["choice"]["backbone"] and summary["rank"][0]["candidate"] in summary["probes"]
    control = summary["control"]
    assert control["backbone"].endswith("@random") and summary["test_accuracy"] > control["test_accuracy"] + 0.05
    assert summary["reasons"] and summary["agreement"] >= 0.6
    for name in ("report.html", "metrics.json", "manifest.json", "rank.json", "auto.json", "bundle/bundle.json"):
        assert (out / name).is_file(), name
    assert "Auto: what was chosen and why" in (out / "report.html").read_text()
