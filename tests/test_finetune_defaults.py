"""Fine-tuning defaults: --flip/--no-flip reaches the augmentation, and the noise-aware kept-epoch rule (resumable)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart.backbones import load_backbone
from headstart.bundles import Bundle
from headstart.cli import app
from headstart.data.augment import AugmentConfig, augment_batch, pil_train_transform
from headstart.engine import keep
from headstart.finetune import adapter as classification
from headstart.finetune import finetune
from headstart.finetune.data import split_indices

from conftest import TINY_BACKBONE


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs torch on one thread (tests/conftest.py's one_thread)."""


# ----- flips ----------------------------------------------------------------------------------------


def _left_heavy(n: int = 64, size: int = 24) -> np.ndarray:
    """``n`` copies of an image whose left third is white and the rest black: a mirror puts the white on the right."""
    images = np.zeros((n, size, size), dtype=np.uint8)
    images[:, :, : size // 3] = 255
    return images


def _mirrored(batch: torch.Tensor) -> np.ndarray:
    """Per image: is the bright side on the right (the image was flipped)?"""
    half = batch.shape[-1] // 2
    return (batch[..., half:].mean(dim=(1, 2, 3)) > batch[..., :half].mean(dim=(1, 2, 3))).numpy()


def test_no_flip_never_mirrors_a_training_batch_and_flip_does():
    spec = load_backbone(TINY_BACKBONE).spec.with_input_size(24)
    images = _left_heavy()
    # The whole image in every crop, so that only a flip can move the bright side.
    whole = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    flipped = sum(_mirrored(augment_batch(images, spec, AugmentConfig(**whole), seed)).sum() for seed in range(5))
    assert 0.3 * 5 * len(images) < flipped < 0.7 * 5 * len(images), "with flips on, about half the images are mirrored"
    for seed in range(20):
        assert not _mirrored(augment_batch(images, spec, AugmentConfig(**whole, flip=False), seed)).any(), f"seed {seed} mirrored an image"
    # with the default random crops too: the crop keeps part of the white third on the left
    for seed in range(20):
        batch = augment_batch(images, spec, AugmentConfig(flip=False), seed)
        assert (batch[..., 0].mean(dim=(1, 2)) >= batch[..., -1].mean(dim=(1, 2))).all()


def test_no_flip_never_mirrors_an_image_file():
    from PIL import Image

    spec = load_backbone(TINY_BACKBONE).spec.with_input_size(24)
    image = Image.fromarray(_left_heavy(1)[0])
    whole = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    on, off = pil_train_transform(spec, AugmentConfig(**whole)), pil_train_transform(spec, AugmentConfig(**whole, flip=False))
    torch.manual_seed(0)
    assert 10 < sum(bool(_mirrored(on(image)[None])[0]) for _ in range(60)) < 50
    assert not any(bool(_mirrored(off(image)[None])[0]) for _ in range(60))


def test_finetune_no_flip_trains_on_unmirrored_batches_and_records_it(data, tmp_path, monkeypatch):
    from headstart.finetune import data as finetune_data

    seen: list[AugmentConfig] = []
    real = finetune_data.augment_batch

    def spy(images, spec, config, seed, keep=None, device="cpu"):
        seen.append(config)
        return real(images, spec, config, seed, keep=keep, device=device)

    monkeypatch.setattr(finetune_data, "augment_batch", spy)
    out = tmp_path / "run"
    result = finetune(data, TINY_BACKBONE, strategy="full", epochs=1, image_size=32, flip=False, out=out, quiet=True)
    assert seen and all(config.flip is False for config in seen)
    assert result.augment["flip"] is False
    assert json.loads((out / "metrics.json").read_text())["augment"]["flip"] is False
    assert json.loads((out / "manifest.json").read_text())["augment"]["flip"] is False
    assert Bundle.load(out / "bundle").manifest["finetune"]["augmentation"]["flip"] is False
    # a resume with the other setting is another run
    from headstart.finetune import CheckpointError

    with pytest.raises(CheckpointError, match="augment"):
        finetune(data, TINY_BACKBONE, strategy="full", epochs=1, image_size=32, flip=True, out=out, resume=True, quiet=True)


def test_cli_flip_option_reaches_the_augmentation(tmp_path, arrays, monkeypatch):
    np.savez(tmp_path / "bars.npz", x=arrays[0], y=arrays[1])
    import headstart.finetune as finetune_package

    calls: list[dict] = []
    real = finetune_package.finetune

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_package, "finetune", spy)
    runner = CliRunner()
    for flag, expected in (("--no-flip", False), ("--flip", True), (None, True)):
        out = tmp_path / f"run-{flag}"
        args = ["finetune", str(tmp_path / "bars.npz"), "--backbone", TINY_BACKBONE, "--strategy", "full", "--epochs", "1",
                "--image-size", "32", "--out", str(out), "--json", "--quiet"]
        result = runner.invoke(app, args + ([flag] if flag else []))
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        assert calls[-1]["flip"] is expected
        assert json.loads(result.stdout)["augment"]["flip"] is expected
        assert json.loads((out / "manifest.json").read_text())["augment"]["flip"] is expected


# ----- the kept-epoch rule --------------------------------------------------------------------------


def _offline(scores: list[float], n: int, k: float) -> int:
    """The rule by its definition, with the whole curve known: the latest epoch at or above the final threshold.

    ``scores[0]`` is the start candidate (epoch -1). The threshold is the highest ``best_t - k * se(best_t)``
    over the run (it only rises); ties in the best go to the later epoch.
    """
    best, threshold = -math.inf, -math.inf
    for score in scores:
        best = max(best, score)
        threshold = max(threshold, best - k * keep.binomial_se(best, n))
    if k == 0:
        return max(i for i, s in enumerate(scores) if s == best) - 1
    return max(i for i, s in enumerate(scores) if s >= threshold) - 1


def _online(scores: list[float], n: int, k: float) -> dict:
    state = keep.keep_state()
    noise = lambda p: keep.binomial_se(p, n)  # noqa: E731
    keep.start(state, scores[0], noise, k)
    for epoch, score in enumerate(scores[1:]):
        keep.update(state, epoch, score, noise, k, True, True)
    return state


def test_binomial_standard_error():
    assert keep.binomial_se(0.9, 100) == pytest.approx(math.sqrt((91 / 102) * (11 / 102) / 100))
    assert keep.binomial_se(1.0, 100) > 0.009  # a perfect score is still a noisy one
    assert keep.binomial_se(0.9, 0) == 0.0


def test_the_rule_keeps_the_latest_epoch_within_one_standard_error():
    n = 100
    scores = [0.80, 0.86, 0.84, 0.85, 0.70]  # start, epochs 0..3
    se = keep.binomial_se(0.86, n)
    assert 0.86 - se < 0.84  # epochs 1 and 2 are within one standard error of the best
    state = _online(scores, n, 1.0)
    assert state["best_epoch"] == 2 and state["top_epoch"] == 0 and state["best_value"] == 0.86
    assert state["threshold"] == pytest.approx(0.86 - se)
    assert _online(scores, n, 0.0)["best_epoch"] == 0  # keep_within 0: the old rule, the highest score
    assert _online([0.80, 0.80, 0.79], n, 0.0)["best_epoch"] == 0  # ...ties to the later epoch
    # a later best raises the threshold: epochs close to the old best no longer count
    assert _online([0.80, 0.86, 0.84, 0.95, 0.93], n, 1.0)["best_epoch"] == 3
    assert _online([0.80, 0.86, 0.84, 0.95, 0.85], n, 1.0)["best_epoch"] == 2
    # the probe's start stays kept when every epoch is clearly worse
    assert _online([0.90, 0.80, 0.82], n, 1.0)["best_epoch"] == -1


def test_the_online_rule_equals_its_definition_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.choice([20, 50, 100, 400]))
        length = int(rng.integers(2, 12))
        k = float(rng.choice([0.0, 0.5, 1.0, 2.0]))
        scores = list(rng.integers(0, n + 1, size=length) / n) if rng.random() < 0.3 else list(np.clip(
            np.round((0.5 + 0.04 * np.arange(length) + rng.normal(0, 0.05, length)) * n) / n, 0, 1))
        assert _online(scores, n, k)["best_epoch"] == _offline(scores, n, k), (scores, n, k)


def test_finetune_keeps_the_latest_epoch_within_the_noise_and_records_the_rule(data, tmp_path, monkeypatch):
    n_val = len(split_indices(data, 0.1, 0)[1])
    scores = iter([(0.5, 0.75), (0.6, 0.80), (0.4, 0.78), (0.3, 0.70)])  # (loss, accuracy): start, epochs 0..2
    monkeypatch.setattr(classification, "_validate", lambda *args: next(scores))
    out = tmp_path / "run"
    result = finetune(data, TINY_BACKBONE, strategy="lp-ft", epochs=3, image_size=32, out=out, quiet=True)
    se = keep.binomial_se(0.80, n_val)
    assert 0.80 - se <= 0.78 and 0.80 - se > 0.70
    assert result.best_epoch == 1 and [row["best"] for row in result.history] == [True, True, False]
    rule = json.loads((out / "metrics.json").read_text())["keep_rule"]
    assert rule["kept_epoch"] == 1 and rule["kept_value"] == 0.78 and rule["best_value"] == 0.80 and rule["best_value_epoch"] == 0
    assert rule["n_val"] == n_val and rule["keep_within"] == keep.KEEP_WITHIN
    assert rule["standard_error"] == pytest.approx(se, abs=1e-6) and rule["threshold"] == pytest.approx(0.80 - se)
    assert "standard error" in rule["rule"] and rule["score"] == "val_accuracy"
    # keep_within=0: the epoch with the best validation accuracy, as before
    scores = iter([(0.5, 0.75), (0.6, 0.80), (0.4, 0.78), (0.3, 0.70)])
    monkeypatch.setattr(classification, "_validate", lambda *args: next(scores))
    assert finetune(data, TINY_BACKBONE, strategy="lp-ft", epochs=3, image_size=32, keep_within=0, quiet=True).best_epoch == 0


def test_keep_within_is_checked(data):
    from headstart.errors import OptionError

    with pytest.raises(OptionError, match="--keep-within"):
        finetune(data, TINY_BACKBONE, epochs=1, image_size=32, keep_within=-1, quiet=True)


class _Killed(BaseException):
    """Stands for a SIGKILL right after an epoch's checkpoints are written."""


def test_kill_and_resume_keeps_the_same_epoch_under_the_new_rule(data, tmp_path, monkeypatch):
    """The rule's state (best, threshold, kept epoch) survives a kill: the resumed run keeps the epoch a straight run keeps."""
    import headstart.engine.loop as loop_module

    # start, then epochs 0..3: epoch 0 is the best; epoch 1 (killed after) and 3 are within one standard error.
    curve = [(0.5, 0.70), (0.6, 0.80), (0.4, 0.78), (0.3, 0.60), (0.35, 0.76)]
    common = {"strategy": "lp-ft", "epochs": 4, "image_size": 32, "seed": 0, "device": "cpu", "quiet": True}

    def replay(values):
        it = iter(values)
        monkeypatch.setattr(classification, "_validate", lambda *args: next(it))

    replay(curve)
    straight = finetune(data, TINY_BACKBONE, out=tmp_path / "straight", **common)
    assert straight.best_epoch == 3 and straight.keep_rule["best_value_epoch"] == 0

    replay(curve[:3])
    real_after = loop_module._after_epoch

    def die(epoch):
        if epoch == 2:
            raise _Killed

    monkeypatch.setattr(loop_module, "_after_epoch", die)
    with pytest.raises(_Killed):
        finetune(data, TINY_BACKBONE, out=tmp_path / "killed", **common)
    monkeypatch.setattr(loop_module, "_after_epoch", real_after)
    replay(curve[3:])  # a resumed run does not validate the start again
    resumed = finetune(data, TINY_BACKBONE, out=tmp_path / "killed", resume=True, **common)
    assert resumed.best_epoch == straight.best_epoch == 3
    assert resumed.keep_rule == straight.keep_rule
    for name in ("backbone.safetensors", "head.safetensors"):
        a, b = tmp_path / "killed" / "bundle" / name, tmp_path / "straight" / "bundle" / name
        assert a.read_bytes() == b.read_bytes(), f"{name} differs after kill and resume"
