"""The fine-tuning loop on a tiny random-init model: frozen means frozen, exact resume, bundles, bad input, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart.backbones import load_backbone
from headstart.bundles import Bundle
from headstart.cli import app
from headstart.data import load_data
from headstart.data.transforms import preprocess_array_batch
from headstart.features import FeatureStore
from headstart.finetune import (
    FinetuneModel,
    FinetunePolicy,
    FrozenWeightsChangedError,
    PolicyError,
    TrainingDivergedError,
    finetune,
)
from headstart.engine import CheckpointError, train_batches
from headstart.finetune import adapter as classification
from headstart.finetune.data import split_indices
from headstart.finetune.adapter import SMALL_VALIDATION
from headstart.models.classifier import is_batchnorm

from conftest import TINY_BACKBONE, report_sections

HELPER = Path(__file__).resolve().parent / "_ft_run.py"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs torch on one thread (tests/conftest.py's one_thread)."""


@pytest.fixture
def npz(tmp_path, arrays):
    path = tmp_path / "squares.npz"
    np.savez(path, x=arrays[0], y=arrays[1])
    return path


def _bn_names(backbone) -> list[str]:
    return [name for name, module in backbone.model.named_modules() if is_batchnorm(module)]


def test_frozen_parameters_and_bn_statistics_do_not_move(data):
    backbone = load_backbone(TINY_BACKBONE)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    result = finetune(data, backbone, strategy="last-stage", epochs=2, image_size=32, quiet=True)
    after = backbone.model.state_dict()
    trained_prefixes = ("blocks.4.", "conv_head.", "bn2.")
    for key, value in before.items():
        if key.startswith(trained_prefixes):
            continue
        assert torch.equal(value, after[key]), f"frozen {key} changed"
    # BatchNorm in the trained stage runs in train mode: its statistics follow the new data.
    assert not torch.equal(before["bn2.running_mean"], after["bn2.running_mean"])
    assert not torch.equal(before["blocks.4.0.bn1.running_var"], after["blocks.4.0.bn1.running_var"])
    assert not torch.equal(before["conv_head.weight"], after["conv_head.weight"])
    assert [row["trainable_params"] for row in result.history] == [result.history[0]["trainable_params"]] * 2


def test_finetune_trains_the_callers_backbone_but_leaves_its_spec_alone(data):
    """image_size applies to the run (its copy of the spec), not to the Backbone the caller passed in."""
    backbone = load_backbone(TINY_BACKBONE)
    size = backbone.spec.input_size
    assert size != 32
    result = finetune(data, backbone, strategy="full", epochs=1, image_size=32, quiet=True)
    assert backbone.spec.input_size == size
    assert result.bundle.spec.input_size == 32 and result.model.backbone.spec.input_size == 32
    assert result.model.backbone.model is backbone.model  # the network itself is trained in place, as documented


def test_stats_frozen_keeps_every_running_statistic_but_trains_affine(data):
    backbone = load_backbone(TINY_BACKBONE)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    policy = FinetunePolicy(trainable=("*",), bn="stats-frozen")
    finetune(data, backbone, policy=policy, epochs=1, image_size=32, quiet=True, val_fraction=0.0)
    after = backbone.model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) == 3 * len(_bn_names(backbone))
    for key in stats:
        assert torch.equal(before[key], after[key]), f"{key} moved in stats-frozen mode"
    assert not torch.equal(before["bn1.weight"], after["bn1.weight"])
    assert not torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])


def test_bundle_predicts_like_the_model_and_run_files_are_written(data, tmp_path):
    out = tmp_path / "run"
    result = finetune(data, TINY_BACKBONE, strategy="lp-ft", epochs=2, lr=1e-3, image_size=32, out=out, quiet=True)
    assert result.probe_test_accuracy is not None and result.test is not None
    assert result.test.accuracy > 0.9
    test_rows = data.indices("test")
    images = data.items[test_rows]
    bundle = Bundle.load(out / "bundle")
    assert bundle.finetuned
    temperature = bundle.calibration.temperature
    assert temperature == result.calibration["temperature"] != 1.0  # fitted on the validation split, saved, loaded
    with torch.no_grad():
        x = preprocess_array_batch(images, result.bundle.spec)
        expected = torch.softmax(result.model(x).double() / temperature, dim=1).numpy()
    np.testing.assert_allclose(bundle.predict_proba(list(images)), expected, atol=1e-5)
    assert bundle.predict(list(images[:3])) == [data.classes[i] for i in expected[:3].argmax(1)]
    # logs, checkpoints and the policy
    lines = (out / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,phase,") and len(lines) == 3
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "best.pt").is_file()
    assert FinetunePolicy.load(out / "policy.yaml") == result.policy
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(result.test.accuracy)
    # the manifest: how the run was made, down to the probe's features in the store
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == sys.argv and {"python", "torch", "headstart"} <= set(manifest["versions"])
    assert manifest["seed"] == 0 and manifest["device"] == result.device and manifest["strategy"] == "lp-ft"
    assert manifest["weights_sha256"] == result.bundle.spec.sha256 and manifest["data_fingerprint"] == data.fingerprint()
    assert FeatureStore().meta(manifest["probe_store_key"]) is not None
    assert 0 < manifest["wall_seconds"] == pytest.approx(result.seconds, abs=0.01)
    # the report: training curves from metrics.csv and the run details
    sections = report_sections((out / "report.html").read_text())
    assert {"curves", "confusion", "manifest"} <= set(sections)
    assert "<img" in sections["curves"] and manifest["probe_store_key"][:12] in sections["manifest"]


def test_resume_after_kill_ends_with_the_same_weights(npz, tmp_path):
    """Kill -9 right after the checkpoint of epoch 0 (gradual: epoch 1 unfreezes everything), resume, compare."""
    data = load_data(str(npz), seed=0)
    killed = tmp_path / "killed"
    args = [sys.executable, str(HELPER), str(npz), str(killed), "--strategy", "gradual", "--epochs", "3", "--ema-decay", "0.9"]
    run = subprocess.run([*args, "--kill-after-epoch", "0"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == -9, run.stderr[-2000:]
    assert (killed / "checkpoints" / "last.pt").is_file() and not (killed / "metrics.json").exists()
    assert len((killed / "metrics.csv").read_text().strip().splitlines()) == 2  # header + epoch 0

    common = {"strategy": "gradual", "epochs": 3, "ema_decay": 0.9, "image_size": 32, "seed": 0, "device": "cpu", "quiet": True}
    resumed = finetune(data, TINY_BACKBONE, out=killed, resume=True, **common)
    straight = finetune(data, TINY_BACKBONE, out=tmp_path / "straight", **common)
    # the phase changes across the kill point: more trains after it
    assert [row["phase"] for row in straight.history] == [0, 1, 1]
    assert straight.history[1]["trainable_params"] > straight.history[0]["trainable_params"]
    for name in ("last.pt", "best.pt"):
        a = torch.load(killed / "checkpoints" / name, weights_only=True)
        b = torch.load(tmp_path / "straight" / "checkpoints" / name, weights_only=True)
        for part in ("model", "ema"):
            for key, value in a[part].items():
                assert torch.equal(value, b[part][key]), f"{name}: {part} {key} differs after resume"
    drop = ("seconds", "seconds_train", "cpu_seconds")
    strip = lambda history: [{k: v for k, v in row.items() if k not in drop} for row in history]
    assert strip(resumed.history) == strip(straight.history)
    assert resumed.test.accuracy == straight.test.accuracy
    assert len((killed / "metrics.csv").read_text().strip().splitlines()) == 4


class _KilledBetweenWrites(BaseException):
    """Stands for a SIGKILL that lands between two checkpoint writes of one epoch."""


def test_a_kill_between_the_checkpoint_writes_of_an_epoch_resumes_to_the_same_bundle(data, tmp_path, monkeypatch):
    """The kill soak's finding: a kill after the last epoch's first checkpoint write must not leave a stale best.pt."""
    import headstart.engine.loop as loop_module

    common = {"strategy": "lp-ft", "epochs": 2, "image_size": 32, "seed": 0, "device": "cpu", "quiet": True}
    straight = finetune(data, TINY_BACKBONE, out=tmp_path / "straight", **common)
    assert straight.best_epoch == 1, "the last epoch must improve for the kill to matter"
    real_save = loop_module.save_checkpoint
    writes: list[str] = []

    def save_then_die(path, checkpoint):
        real_save(path, checkpoint)
        writes.append(Path(path).name)
        if checkpoint["loop"]["epoch"] == 2:  # the last epoch's first write is on disk: die before the second
            raise _KilledBetweenWrites

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_die)
    with pytest.raises(_KilledBetweenWrites):
        finetune(data, TINY_BACKBONE, out=tmp_path / "killed", **common)
    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    resumed = finetune(data, TINY_BACKBONE, out=tmp_path / "killed", resume=True, **common)
    assert resumed.best_epoch == straight.best_epoch
    for name in ("backbone.safetensors", "head.safetensors"):
        a, b = tmp_path / "killed" / "bundle" / name, tmp_path / "straight" / "bundle" / name
        if a.exists() or b.exists():
            assert a.read_bytes() == b.read_bytes(), f"{name} differs after the kill between writes"
    assert resumed.test.accuracy == straight.test.accuracy


def test_resume_with_other_settings_is_refused(data, tmp_path):
    out = tmp_path / "run"
    finetune(data, TINY_BACKBONE, strategy="full", epochs=1, image_size=32, out=out, quiet=True)
    with pytest.raises(CheckpointError, match=r"lr: checkpoint 0\.001, now 0\.002"):
        finetune(data, TINY_BACKBONE, strategy="full", epochs=1, lr=2e-3, image_size=32, out=out, resume=True, quiet=True)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        finetune(data, TINY_BACKBONE, strategy="full", epochs=1, image_size=32, out=tmp_path / "empty", resume=True, quiet=True)


def test_nan_loss_stops_with_the_batch_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    train_rows, _, _ = split_indices(data, 0.1, 0)
    first_epoch = len(train_batches(train_rows, 32, 0, 0))
    calls = {"train": 0}
    original = FinetuneModel.forward

    def forward(self, x):
        out = original(self, x)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] == first_epoch + 2:  # epoch 1, batch 1
                return out * float("nan")
        return out

    monkeypatch.setattr(FinetuneModel, "forward", forward)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"became nan in epoch 1, batch 1.*last good checkpoint is kept.*Lower --lr") as info:
        finetune(data, TINY_BACKBONE, strategy="full", epochs=3, image_size=32, out=out, quiet=True)
    assert "mixed precision" in str(info.value)
    kept = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert kept["loop"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_a_frozen_weight_changed_by_outside_code_is_caught(data, monkeypatch):
    original = FinetuneModel.forward

    def forward(self, x):
        if torch.is_grad_enabled():
            with torch.no_grad():
                self.backbone.model.conv_stem.weight.mul_(1.001)  # "frozen" under last-stage
        return original(self, x)

    monkeypatch.setattr(FinetuneModel, "forward", forward)
    with pytest.raises(FrozenWeightsChangedError, match=r"conv_stem\.weight of module conv_stem changed during epoch 0"):
        finetune(data, TINY_BACKBONE, strategy="last-stage", epochs=1, image_size=32, quiet=True)


def test_early_stopping_keeps_the_best_epoch(data, monkeypatch):
    scores = iter([(0.9, 0.5), (0.8, 0.6), (0.7, 0.55), (0.6, 0.58)])  # (loss, accuracy): accuracy decides
    monkeypatch.setattr(classification, "_validate", lambda *args: next(scores))
    # keep_within=0: the highest validation accuracy (tests/test_finetune_defaults.py has the noise-aware rule)
    result = finetune(data, TINY_BACKBONE, strategy="full", epochs=6, patience=2, keep_within=0, image_size=32, quiet=True)
    assert result.stopped_early and len(result.history) == 4
    assert result.best_epoch == 1 and [row["best"] for row in result.history] == [True, True, False, False]


def test_a_validation_tie_goes_to_the_later_epoch(data, monkeypatch):
    scores = iter([(0.5, 0.8), (0.9, 0.8), (0.4, 0.7)])  # a tie in accuracy, whatever the loss
    monkeypatch.setattr(classification, "_validate", lambda *args: next(scores))
    result = finetune(data, TINY_BACKBONE, strategy="full", epochs=3, keep_within=0, image_size=32, quiet=True)
    assert result.best_epoch == 1 and [row["best"] for row in result.history] == [True, True, False]


def test_a_small_validation_split_gets_a_note_that_the_epoch_choice_is_noisy(data, capsys):
    n_val = len(split_indices(data, 0.1, 0)[1])
    assert 0 < n_val < SMALL_VALIDATION
    finetune(data, TINY_BACKBONE, strategy="full", epochs=1, image_size=32)
    message = " ".join(capsys.readouterr().err.split())
    assert f"validation split has {n_val} items" in message and "--val-fraction 0" in message
    finetune(data, TINY_BACKBONE, strategy="full", epochs=1, image_size=32, val_fraction=0.0)
    assert "validation split has" not in capsys.readouterr().err


def test_lp_ft_keeps_the_probe_when_fine_tuning_does_not_beat_it(data, tmp_path, monkeypatch):
    scores = iter([(0.3, 0.9), (0.5, 0.8), (0.2, 0.85)])  # (loss, accuracy): the start, then epochs 0 and 1
    monkeypatch.setattr(classification, "_validate", lambda *args: next(scores))
    result = finetune(data, TINY_BACKBONE, strategy="lp-ft", epochs=5, patience=2, keep_within=0, image_size=32, out=tmp_path / "run", quiet=True)
    assert result.best_epoch == -1 and result.start == {"val_loss": 0.3, "val_accuracy": 0.9}
    assert result.stopped_early and [row["best"] for row in result.history] == [False, False]
    # the kept weights are the probe's: the model scores on test as the probe did on the stored features
    assert result.test.accuracy == pytest.approx(result.probe_test_accuracy, abs=1.5 / result.test.n)
    assert torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["loop"]["best_epoch"] == -1


def test_policy_errors_reach_the_user(data):
    with pytest.raises(PolicyError, match="Similar names"):
        finetune(data, TINY_BACKBONE, policy=FinetunePolicy(trainable=("layer4.*",)), epochs=1, image_size=32, quiet=True)
    with pytest.raises(PolicyError, match="not both"):
        finetune(data, TINY_BACKBONE, strategy="full", policy=FinetunePolicy(), epochs=1, image_size=32, quiet=True)
    with pytest.raises(PolicyError, match="Unknown strategy 'lp_ft'.*Did you mean lp-ft"):
        finetune(data, TINY_BACKBONE, strategy="lp_ft", epochs=1, image_size=32, quiet=True)


def test_cli_finetune_then_predict(npz, tmp_path, arrays):
    from PIL import Image

    runner = CliRunner()
    out = tmp_path / "run"
    policy = tmp_path / "policy.yaml"
    policy.write_text(FinetunePolicy(trainable=["head", "last-n:2"], lr_mult={"last-n:2": 0.5}).to_yaml())
    result = runner.invoke(app, ["finetune", str(npz), "--backbone", TINY_BACKBONE, "--policy", str(policy), "--epochs", "1",
                                 "--image-size", "32", "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = json.loads(result.stdout)
    assert summary["strategy"] == "custom" and summary["policy"]["trainable"] == ["head", "last-n:2"]
    assert len(summary["history"]) == 1 and summary["bundle"] == str(out / "bundle")
    paths = []
    for i in (0, 150, 299):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(arrays[0][i]).save(path)
        paths.append(str(path))
    predicted = runner.invoke(app, ["predict", str(out / "bundle"), *paths, "--json"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    assert [row["error"] for row in rows] == [None] * 3 and all(row["label"] in ("0", "1", "2") for row in rows)
    bad = runner.invoke(app, ["finetune", str(npz), "--backbone", TINY_BACKBONE, "--strategy", "last-n", "--epochs", "1"])
    assert isinstance(bad.exception, PolicyError)
    plan = runner.invoke(app, ["finetune", str(npz), "--backbone", TINY_BACKBONE, "--strategy", "gradual", "--epochs", "4", "--explain"])
    assert plan.exit_code == 0 and plan.stdout.count("fine-tuning policy (gradual)") == 3


@pytest.mark.slow
def test_two_gloo_processes_agree_with_one(npz, tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every global batch; metrics match one process."""
    policy = tmp_path / "policy.yaml"
    # BatchNorm in eval mode makes each sample's computation independent of how the batch is split.
    # LP-FT's probe is fitted by the main process alone and broadcast; DDP is wrapped again in epoch 1.
    policy.write_text(FinetunePolicy(trainable=["head"], unfreeze={1: ["*"]}, bn="stats-frozen", head_init="probe").to_yaml())
    common = [str(HELPER), str(npz), "--policy", str(policy), "--epochs", "2", "--lr", "3e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *common[:1], common[1], str(tmp_path / "one"), *common[2:]], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = shutil.which("torchrun", path=str(VENV_BIN)) or "torchrun"
    double = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", common[0], common[1], str(tmp_path / "two"), *common[2:]],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stderr.count("process group at exit: none") == 2 and "process group at exit: alive" not in double.stderr
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for a, b in zip(one["history"], two["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.04)
    assert one["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=0.03)
    assert one["start"]["val_loss"] == pytest.approx(two["start"]["val_loss"], rel=1e-5)
    assert len(one["history"]) == len(two["history"]) == 2
    assert (one["processes"], two["processes"]) == (1, 2)
    assert [row["phase"] for row in two["history"]] == [0, 1]


def test_image_files_train_through_workers_and_a_broken_file_is_skipped(tmp_path, arrays):
    from PIL import Image

    images, labels = arrays
    for i in range(0, 300, 5):  # 60 files, 20 per class
        folder = tmp_path / "folder" / f"class{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).convert("RGB").save(folder / f"{i}.png")
    (tmp_path / "folder" / "class0" / "broken.png").write_bytes(b"not a png")
    data = load_data(str(tmp_path / "folder"), seed=0)
    result = finetune(data, TINY_BACKBONE, strategy="full", epochs=2, batch_size=16, image_size=32, num_workers=1, quiet=True)
    assert len(result.history) == 2 and all(np.isfinite(row["train_loss"]) for row in result.history)
    test_items = [data.items[i] for i in data.indices("test")]
    assert result.test is not None and result.test.n == len(test_items) - sum("broken" in item for item in test_items)


def test_bf16_autocast_on_cpu_after_an_fp32_run(data):
    """Accelerate keeps one state per process: a second run with another precision must still work."""
    finetune(data, TINY_BACKBONE, strategy="last-stage", epochs=1, image_size=32, quiet=True, mixed_precision="no")
    result = finetune(data, TINY_BACKBONE, strategy="last-stage", epochs=1, image_size=32, quiet=True, mixed_precision="bf16")
    assert result.mixed_precision == "bf16" and np.isfinite(result.history[0]["train_loss"])


def test_gradient_accumulation_matches_one_big_batch(data, monkeypatch):
    """12 x 2 accumulated equals 24 in one step (BatchNorm in eval mode, no random crops)."""
    from headstart.finetune import data as finetune_data

    monkeypatch.setattr(finetune_data, "augment_batch", lambda images, spec, config, seed, keep=None, device="cpu": preprocess_array_batch(images[keep], spec))
    policy = FinetunePolicy(trainable=("*",), bn="stats-frozen")
    runs = []
    for batch_size, steps in ((24, 1), (12, 2)):
        backbone = load_backbone(TINY_BACKBONE)
        result = finetune(data, backbone, policy=policy, epochs=2, batch_size=batch_size, accumulation_steps=steps, optimizer="sgd",
                          lr=0.05, image_size=32, quiet=True)
        runs.append((result, {k: v.clone() for k, v in backbone.model.state_dict().items()}))
    (one, weights_one), (two, weights_two) = runs
    for a, b in zip(one.history, two.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    for key, value in weights_one.items():
        torch.testing.assert_close(value, weights_two[key], rtol=1e-4, atol=1e-6)
    initial = load_backbone(TINY_BACKBONE).model.conv_stem.weight
    assert not torch.allclose(weights_one["conv_stem.weight"], initial, atol=1e-4), "the runs must actually train"


def test_weight_ema_is_what_lp_ft_validates_and_keeps(data, tmp_path):
    from headstart.engine.ema import WeightEMA

    live = torch.nn.BatchNorm1d(3)
    average = WeightEMA(live, decay=0.75)
    with torch.no_grad():
        live.weight.fill_(5.0)
        live.num_batches_tracked.fill_(7)
    average.update(live)
    assert torch.allclose(average.model.weight, torch.full((3,), 2.0)) and int(average.model.num_batches_tracked) == 7
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(live, decay=1.0)

    result = finetune(data, TINY_BACKBONE, strategy="lp-ft", epochs=2, lr=1e-3, ema_decay=0.99, image_size=32, out=tmp_path / "run", quiet=True)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["settings"]["ema_decay"] == 0.99 and best["ema"] is not None
    kept = result.model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in best["ema"].items())
    assert not all(torch.equal(kept[k], v) for k, v in best["model"].items()) or result.best_epoch == -1
