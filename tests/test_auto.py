"""``headstart auto``: the budget, the plan, the choice on validation data, the files, resume, and the CLI contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_BACKBONE, run_cli

from headstart.errors import OptionError
from headstart.workflows.auto_plan import (
    MAX_EPOCHS,
    CandidateCost,
    make_plan,
    parse_budget,
)

TINY_VIT = "timm:test_vit@random"


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("90s", 90), ("1h30m", 5400), ("2.5m", 150), ("45", 45), (30, 30), ("1 h 2 m", 3720)])
def test_parse_budget_reads_durations(text, seconds):
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "", "0", "0s", "-1", "m", "1h-2m", float("nan")])
def test_parse_budget_refuses_what_is_not_a_duration(text):
    with pytest.raises(OptionError, match="--budget"):
        parse_budget(text)


def _costs(n: int = 3, item: float = 0.01, train: float | None = 0.03) -> dict[str, CandidateCost]:
    return {f"c{i}": CandidateCost(f"c{i}", 1.0, item * (1 + i), 0.5, train, "test", 64) for i in range(n)}


PLAN = {"n_items": 1200, "n_train": 1000, "n_test": 200, "n_classes": 10, "head_rates": {"linear": 1e-3, "knn": 1e-4, "mlp": 5e-3}}


def test_plan_grows_with_the_budget():
    costs = _costs()
    order = list(costs)
    small = make_plan(costs, order, budget=60, spent=2, **PLAN)
    large = make_plan(costs, order, budget=3600, spent=2, **PLAN)
    assert small.epochs == 0 and any("no fine-tuning" in r for r in small.reasons)
    assert large.epochs == MAX_EPOCHS and large.probe == order
    assert small.eta <= 0.85 * 58 and large.eta <= 0.85 * 3598
    # Every planned step's estimate is in the ETA, in order: ranking first, the final step last.
    assert large.steps[0][0].startswith("rank") and large.steps[-1][0] == "choose and save"
    assert abs(large.eta - sum(s for _, s in large.steps)) < 1e-9
    medium = make_plan(costs, order, budget=200, spent=2, **PLAN)
    assert 0 <= medium.epochs <= MAX_EPOCHS and small.eta <= medium.eta <= large.eta


def test_plan_refuses_a_budget_below_the_smallest_plan_and_says_what_would_do():
    with pytest.raises(OptionError, match=r"too short.*--budget \d+m"):
        make_plan(_costs(item=0.5), ["c0", "c1", "c2"], budget=30, spent=1, **PLAN)


def test_plan_drops_a_costly_head_before_refusing():
    rates = {"linear": 1e-4, "knn": 1e-4, "mlp": 1.0}  # the MLP would take minutes
    plan = make_plan(_costs(), ["c0", "c1", "c2"], budget=100, spent=1, **{**PLAN, "head_rates": rates})
    assert plan.heads == ("linear", "knn") and any("no mlp head" in r for r in plan.reasons)


def test_plan_without_trainable_candidates_does_not_fine_tune():
    plan = make_plan(_costs(train=None), ["c0", "c1", "c2"], budget=3600, spent=0, **PLAN)
    assert plan.epochs == 0 and any("no candidate can be fine-tuned" in r for r in plan.reasons)


@pytest.fixture
def auto_run(arrays, tmp_path, one_thread):
    from headstart.data import load_data
    from headstart.workflows.auto import auto

    data = load_data(arrays, seed=0)

    def run(**options):
        settings = {"candidates": [TINY_BACKBONE, TINY_VIT], "image_size": 32, "out": tmp_path / "auto", "quiet": True}
        settings.update(options)
        return data, auto(data, settings.pop("budget", "2m"), **settings)

    return run


@pytest.mark.slow
def test_auto_chooses_on_validation_and_writes_an_explained_run(auto_run, tmp_path):
    from headstart.bundles import load_bundle

    data, result = auto_run(finetune=False)
    out = tmp_path / "auto"
    decisions = json.loads((out / "auto.json").read_text())
    # The choice is the best out-of-fold accuracy of all the probed pairs (the test split played no part).
    scored = [(acc, name, head) for name, record in decisions["probes"].items() for head, acc in (record.get("cv") or {}).items()]
    assert scored and result.choice["validation_accuracy"] == max(acc for acc, _, _ in scored)
    assert result.choice["kind"] == "probe" and (result.choice["backbone"], result.choice["head"]) in {(n, h) for _, n, h in scored}
    assert decisions["rank"][0]["candidate"] in decisions["probes"]
    assert result.seconds <= 1.1 * result.budget
    assert any(reason.startswith("Best probe") for reason in decisions["reasons"])
    assert any(reason.startswith("No fine-tuning") for reason in decisions["reasons"])
    # One bundle that predict takes; its test accuracy is the result's.
    bundle = load_bundle(out / "bundle")
    test = data.indices("test")
    predicted = bundle.predict([data.items[i] for i in test])
    accuracy = np.mean(np.array(predicted) == np.array([data.classes[data.labels[i]] for i in test]))
    assert accuracy == pytest.approx(result.test.accuracy, abs=1e-9) and accuracy > 0.6
    page = (out / "report.html").read_text()
    assert "Auto: what was chosen and why" in page and result.choice["backbone"] in page
    for name in ("rank.json", "metrics.json", "manifest.json", "test_predictions.csv"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_auto_fine_tunes_when_the_budget_allows_and_compares_on_the_same_rows(auto_run):
    _, result = auto_run(candidates=[TINY_BACKBONE], budget="3m")
    tune, compare = result.decisions["finetune"], result.decisions["comparison"]
    assert tune["done"] and tune["epochs_run"] >= 1 and 2 <= tune["epochs"] <= MAX_EPOCHS
    assert compare["validation_rows"] > 0
    assert compare["gain"] == pytest.approx(compare["finetune_validation_accuracy"] - compare["probe_validation_accuracy"])
    assert (result.choice["kind"] == "finetune") == (compare["gain"] > 0)
    assert result.seconds <= 1.1 * result.budget


@pytest.mark.slow
def test_a_killed_auto_run_resumes_without_redoing_steps_and_counts_the_whole_budget(auto_run, monkeypatch, tmp_path):
    from headstart.workflows import auto as auto_module

    calls = []
    original = auto_module._Run.probe

    def killed_after_first_probe(self, name, *args, **kwargs):
        original(self, name, *args, **kwargs)
        calls.append(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(auto_module._Run, "probe", killed_after_first_probe)
    with pytest.raises(KeyboardInterrupt):
        auto_run(finetune=False)
    state = json.loads((tmp_path / "auto" / "auto_state.json").read_text())
    first_spent = state["spent"]
    assert first_spent > 0 and len(state["probes"]) == 1
    monkeypatch.setattr(auto_module._Run, "probe", original)
    _, result = auto_run(finetune=False, resume=True)
    steps = [step["step"] for step in result.decisions["steps"]]
    assert steps.count("measure candidates") == 1 and steps.count("rank") == 1
    assert steps.count(f"probe {calls[0]}") == 1  # the probe that finished before the kill is not run again
    assert result.seconds >= first_spent
    # Other options refuse to resume this run.
    with pytest.raises(OptionError, match="other seed"):
        auto_run(finetune=False, resume=True, seed=1)


def test_resume_without_a_run_is_refused_before_any_work(auto_run):
    with pytest.raises(OptionError, match="Nothing to resume"):
        auto_run(resume=True)


@pytest.mark.slow
def test_auto_cli_contract(arrays, tmp_path, monkeypatch, capsys, one_thread):
    images, labels = arrays
    np.savez(tmp_path / "bars.npz", x=images, y=labels)
    out = tmp_path / "run"
    base = ["auto", str(tmp_path / "bars.npz"), "--candidates", TINY_BACKBONE, "--image-size", "32"]
    code, stdout, stderr = run_cli([*base, "--budget", "2m", "--no-finetune", "--out", str(out), "--json"], monkeypatch, capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["choice"]["backbone"] == TINY_BACKBONE and summary["bundle"] == str(out / "bundle")
    assert summary["seconds"] <= 1.1 * summary["budget_s"]
    code, _, stderr = run_cli([*base, "--budget", "soon"], monkeypatch, capsys)
    assert code == 2 and "--budget" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli([*base, "--resume"], monkeypatch, capsys)
    assert code == 2 and "--resume needs --out" in stderr
    code, _, stderr = run_cli([*base, "--budget", "1s", "--out", str(tmp_path / "short")], monkeypatch, capsys)
    assert code == 2 and "too short" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_finetune_max_seconds_stops_training_and_keeps_the_best_so_far(data, one_thread):
    from headstart.finetune import finetune

    result = finetune(data, TINY_BACKBONE, strategy="lp-ft", epochs=5, image_size=32, max_seconds=0.01, quiet=True)
    assert result.stopped_by_budget and len(result.history) == 1  # cut short in its first epoch, which is still validated
    assert result.history[0]["val_accuracy"] is not None and result.to_dict()["stopped_by_budget"] is True
    assert result.best_epoch in (-1, 0) and result.test is not None


def test_max_seconds_must_be_positive():
    from headstart.engine import TrainConfig

    with pytest.raises(OptionError, match="--max-seconds"):
        TrainConfig(max_seconds=0)
