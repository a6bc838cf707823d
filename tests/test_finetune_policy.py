"""FinetunePolicy: pattern resolution, groups and learning rates, BatchNorm modes, checksums, head folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart.backbones import load_backbone
from headstart.finetune import (
    STRATEGIES,
    FinetuneModel,
    FinetunePolicy,
    FrozenGuard,
    FrozenWeightsChangedError,
    PolicyError,
    strategy_policy,
    suggest_batch_size,
)
from headstart.data.augment import AugmentConfig, augment_batch
from headstart.models.classifier import head_to_probe_state, is_batchnorm
from headstart.heads import LinearProbe, head_from_state

from conftest import TINY_BACKBONE


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(TINY_BACKBONE)


@pytest.fixture
def model(tiny_backbone):
    backbone = load_backbone(TINY_BACKBONE)
    return FinetuneModel(backbone, 3)


def _bn(model: FinetuneModel) -> dict:
    return {name: module for name, module in model.policy_modules().items() if is_batchnorm(module)}


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "lora"])  # lora adapts linear layers: tests/test_text.py
def test_every_strategy_compiles_and_starts_with_the_head_training(model, strategy):
    policy = strategy_policy(strategy, model.backbone.spec, epochs=6)
    compiled = policy.compile(model, lr=1e-3)
    trainable, _ = compiled.phase(0)
    assert {"head.weight", "head.bias"} <= trainable
    final, _ = compiled.phase(5)
    if strategy in ("lp-ft", "full", "linear-then-full", "gradual"):
        assert final == set(compiled.names), f"{strategy} must train everything by the last epoch"
    if strategy == "last-stage":
        assert not any(name.startswith(("conv_stem", "blocks.0.")) for name in final)
        assert any(name.startswith("blocks.4.") for name in final) and "conv_head.weight" in final


def test_pattern_matching_nothing_lists_similar_names(model):
    with pytest.raises(PolicyError) as info:
        FinetunePolicy(trainable=("block.4.*",)).compile(model, 1e-3)
    message = str(info.value)
    assert "'block.4.*'" in message and "matches no parameter" in message
    assert "blocks.4.*" in message  # the close match
    with pytest.raises(PolicyError, match="lr_mult"):
        FinetunePolicy(lr_mult={"stemm": 0.1}).compile(model, 1e-3)


def test_nothing_trainable_is_an_error(model):
    with pytest.raises(PolicyError, match="nothing trainable in epoch 0"):
        FinetunePolicy(trainable=("head",), frozen=("head",)).compile(model, 1e-3)
    with pytest.raises(PolicyError, match="nothing trainable"):
        FinetunePolicy(trainable=("bn1",), bn="frozen").compile(model, 1e-3)


def test_stage_shortcuts_follow_spec_param_groups(model):
    compiled = FinetunePolicy().compile(model, 1e-3)
    last = compiled.resolve("last-stage")
    last_two = compiled.resolve("last-n:2")
    assert last == {n for n in compiled.names if n.startswith(("blocks.4.", "conv_head.", "bn2."))}
    assert last_two == last | {n for n in compiled.names if n.startswith("blocks.3.")}
    assert compiled.resolve("stem") == {"conv_stem.weight", "bn1.weight", "bn1.bias"}
    assert compiled.resolve("blocks.1") == compiled.resolve("blocks.1.*")  # module-name match
    assert compiled.resolve("*.bn1") >= {"blocks.1.0.bn1.weight", "blocks.1.0.bn1.bias"}
    with pytest.raises(PolicyError, match="has 5"):
        compiled.resolve("last-n:9")
    with pytest.raises(PolicyError, match="positive whole number"):
        compiled.resolve("last-n:x")


def test_no_weight_decay_on_biases_and_1d_params(model):
    compiled = FinetunePolicy(weight_decay=0.1).compile(model, 1e-3)
    params = compiled.parameters
    for group in compiled.optimizer_groups():
        for name in group["names"]:
            expect = 0.0 if (params[name].ndim <= 1 or name.endswith(".bias")) else 0.1
            assert group["weight_decay"] == expect, name
    covered = [n for g in compiled.optimizer_groups() for n in g["names"]]
    assert sorted(covered) == sorted(compiled.names) and len(covered) == len(set(covered))


def test_lr_per_group_is_what_explain_shows(model, capsys):
    policy = FinetunePolicy(layer_decay=0.5, lr_mult={"conv_stem": 0.1})
    rows = policy.explain(model, lr=1e-2)
    assert "fine-tuning policy" in capsys.readouterr().out
    compiled = policy.compile(model, 1e-2)
    assert compiled.group_source == "timm group_matcher"
    by_param = {name: group["lr"] for group in compiled.optimizer_groups() for name in group["names"]}
    n_groups = len(compiled.groups)
    for depth, (group, row) in enumerate(zip(compiled.groups, rows)):
        assert row["group"] == group.name
        expected = 1e-2 * 0.5 ** (n_groups - 1 - depth)
        lrs = {by_param[name] for name in group.params}
        assert sorted(lrs) == pytest.approx(row["lr_all"])
        if group.name != "conv_stem+bn1":
            assert len(lrs) == 1 and lrs.pop() == pytest.approx(expected)
    assert rows[-1]["group"] == "head" and rows[-1]["lr"] == pytest.approx(1e-2)
    assert by_param["conv_stem.weight"] == pytest.approx(1e-2 * 0.5 ** (n_groups - 1) * 0.1)
    assert by_param["bn1.weight"] == pytest.approx(1e-2 * 0.5 ** (n_groups - 1))


def test_module_order_fallback_without_matcher_or_groups(model):
    model.backbone.spec = model.backbone.spec.__class__(**{**model.backbone.spec.__dict__, "param_groups": ()})
    network = model.backbone.model
    network.group_matcher = None  # hide timm's matcher
    compiled = FinetunePolicy(layer_decay=0.5).compile(model, 1.0)
    assert compiled.group_source == "module order"
    assert [g.name for g in compiled.groups] == ["conv_stem", "bn1", "blocks", "conv_head", "bn2", "head"]
    assert compiled.lr_scale["conv_stem.weight"] == pytest.approx(0.5**5)


def test_unfreeze_schedule_changes_requires_grad_and_bn_modes(model):
    policy = FinetunePolicy(trainable=("head",), unfreeze={2: ("last-stage",)}, bn="train", frozen_bn="frozen")
    compiled = policy.compile(model, 1e-3)
    assert policy.phase_at(1) == 0 and policy.phase_at(2) == 1
    compiled.apply(model, 0)
    model.train()
    assert [n for n, p in model.policy_parameters().items() if p.requires_grad] == ["head.weight", "head.bias"]
    assert not any(m.training for m in _bn(model).values())
    compiled.apply(model, 2)
    model.train()
    assert model.backbone.model.bn2.training and not model.backbone.model.bn1.training
    assert model.backbone.model.conv_head.weight.requires_grad and not model.backbone.model.conv_stem.weight.requires_grad
    assert compiled.first_trainable_epoch("conv_head.weight") == 2
    assert compiled.first_trainable_epoch("conv_stem.weight") is None
    # frozen-forever parameters are not in the optimizer
    assert "conv_stem.weight" not in [n for g in compiled.optimizer_groups() for n in g["names"]]


@pytest.mark.parametrize("bn, expect_training, expect_affine", [("train", True, True), ("stats-frozen", False, True), ("frozen", False, False)])
def test_bn_mode_is_enforced_every_time_the_model_trains(model, bn, expect_training, expect_affine):
    compiled = FinetunePolicy(trainable=("*",), bn=bn).compile(model, 1e-3)
    compiled.apply(model, 0)
    for _ in range(2):
        model.eval()
        model.train()  # the mode must be re-applied, not only set once
        for module in _bn(model).values():
            assert module.training is expect_training
            assert module.weight.requires_grad is expect_affine


def test_checksum_catches_a_tampered_frozen_weight_and_bn_buffer(model):
    compiled = FinetunePolicy(trainable=("head", "last-stage"), bn="stats-frozen").compile(model, 1e-3)
    compiled.apply(model, 0)
    guard = FrozenGuard(model, epoch=3)
    guard.check()  # nothing changed
    weight = model.backbone.model.blocks[1][0].conv_exp.weight
    with torch.no_grad():
        weight.view(-1)[5] = torch.nextafter(weight.view(-1)[5], torch.tensor(1.0))  # one ulp
    with pytest.raises(FrozenWeightsChangedError, match=r"blocks\.1\.0\.conv_exp\.weight of module blocks\.1\.0\.conv_exp changed during epoch 3"):
        guard.check()
    guard = FrozenGuard(model, epoch=0)
    model.backbone.model.bn2.running_mean[0] += 1e-3  # a trainable layer's BN in stats-frozen mode
    with pytest.raises(FrozenWeightsChangedError, match=r"BatchNorm buffer \(stats-frozen\) bn2\.running_mean of module bn2"):
        guard.check()


def test_yaml_round_trip_and_unknown_fields(tmp_path):
    policy = FinetunePolicy(trainable=("head", "last-n:2"), unfreeze={"3": ["*"]}, lr_mult={"stem": 0.1}, layer_decay=0.7, bn="stats-frozen")
    assert policy.unfreeze == {3: ("*",)}
    path = tmp_path / "policy.yaml"
    path.write_text(policy.to_yaml())
    assert FinetunePolicy.load(path) == policy
    path.write_text("trainable: [head]\nlayer_decy: 0.7\n")
    with pytest.raises(PolicyError, match="layer_decy.*Did you mean layer_decay"):
        FinetunePolicy.load(path)
    with pytest.raises(PolicyError, match="bn must be one of"):
        FinetunePolicy(bn="eval")
    with pytest.raises(PolicyError, match="does not exist"):
        FinetunePolicy.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("n_classes", [2, 4])
def test_probe_folds_into_the_head_and_back(tiny_backbone, n_classes):
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(80, tiny_backbone.spec.feature_dim))
    y = np.arange(80) % n_classes
    X[np.arange(80), y] += 4.0
    probe = LinearProbe(Cs=1.0, val_fraction=0.0).fit(X, y)
    model = FinetuneModel(load_backbone(TINY_BACKBONE), n_classes)
    model.init_head_from_probe(probe)
    with torch.no_grad():
        proba = torch.softmax(model.head(torch.as_tensor(X, dtype=torch.float32)).double(), dim=1).numpy()
    np.testing.assert_allclose(proba, probe.predict_proba(X), atol=1e-4)
    rebuilt = head_from_state(*head_to_probe_state(model.head))
    assert isinstance(rebuilt, LinearProbe) and list(rebuilt.classes_) == list(range(n_classes))
    np.testing.assert_allclose(rebuilt.predict_proba(X), proba, atol=1e-5)


def test_suggest_batch_size_halves_until_it_fits():
    tried = []

    def fits(size):
        tried.append(size)
        return size <= 10

    assert suggest_batch_size(64, fits) == 8
    assert tried == [32, 16, 8]
    assert suggest_batch_size(4, lambda size: False) is None


def test_augmentation_is_seeded_and_the_same_on_every_process(tiny_backbone):
    spec = tiny_backbone.spec.with_input_size(24)
    images = np.random.default_rng(0).integers(0, 255, size=(6, 16, 20), dtype=np.uint8)
    config = AugmentConfig()
    a = augment_batch(images, spec, config, seed=5)
    assert a.shape == (6, 3, 24, 24)
    assert torch.equal(a, augment_batch(images, spec, config, seed=5))
    assert not torch.equal(a, augment_batch(images, spec, config, seed=6))
    assert torch.equal(a[1::2], augment_batch(images, spec, config, seed=5, keep=slice(1, None, 2)))
    # the full-image, unflipped crop is the plain resize
    whole = augment_batch(images, spec, AugmentConfig(scale=(1.0, 1.0), ratio=(20 / 16, 20 / 16), flip=False), seed=1)
    resized = torch.nn.functional.interpolate(torch.as_tensor(images[:, None]).float().expand(-1, 3, -1, -1), size=(24, 24), mode=spec.interpolation, align_corners=False).clamp(0, 255)
    from headstart.data.transforms import normalize_uint8

    torch.testing.assert_close(whole, normalize_uint8(resized, spec), atol=1e-3, rtol=0)


def test_randaugment_is_seeded_on_arrays_and_files(tiny_backbone):
    from PIL import Image

    from headstart.data.augment import pil_train_transform

    spec = tiny_backbone.spec.with_input_size(24)
    images = np.random.default_rng(1).integers(0, 255, size=(4, 20, 20, 3), dtype=np.uint8)
    config = AugmentConfig(randaugment=True)
    a = augment_batch(images, spec, config, seed=3)
    assert a.shape == (4, 3, 24, 24) and torch.equal(a, augment_batch(images, spec, config, seed=3))
    state = torch.get_rng_state()
    augment_batch(images, spec, config, seed=4)
    assert torch.equal(state, torch.get_rng_state()), "RandAugment must not draw from the global generator"
    transform = pil_train_transform(spec, config)
    torch.manual_seed(0)
    first = transform(Image.fromarray(images[0]))
    torch.manual_seed(0)
    assert first.shape == (3, 24, 24) and torch.equal(first, transform(Image.fromarray(images[0])))
