"""A catalogue of bad and unusual inputs, each through the CLI as a new user would type it.

The CLI's contract, for any input: exit 0 with every skipped item listed (one line each), or exit 2
with one error line that names the problem and the fix, or exit 1 with one line and the ``--debug``
hint for a bug. Never a traceback, never a row dropped without a line saying so.

Each case runs ``headstart.cli.main`` in this process (the console script's entry point, without
paying for a fresh interpreter per case) and checks the exit code, the number of lines on stderr,
the words of the message, and, for skips, that every skipped item is named.
"""

from __future__ import annotations

import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BACKBONE, run_cli
from PIL import Image

TINY = ["--backbone", TINY_BACKBONE, "--image-size", "32"]


@dataclass
class Case:
    """One input: the command line, the exit code, words the message must hold, items it must list."""

    args: list[str]
    code: int
    words: list[str] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)


# ----- the inputs -------------------------------------------------------------------------------


def _image(seed: int, size: int = 12) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _image(100 * c + i).save(root / name / f"{i:03d}.png")
    return root


def _odd_image_folder(root: Path, odd: str) -> tuple[Path, str]:
    """Two ordinary classes plus one odd image in class ``a``; returns the folder and the odd file."""
    _folder(root, {"a": 4, "b": 4})
    target = root / "a" / f"odd-{odd}.png"
    if odd == "gray":
        Image.fromarray(np.full((12, 12), 90, np.uint8), "L").save(target)
    elif odd == "rgba":
        Image.fromarray(np.full((12, 12, 4), 90, np.uint8), "RGBA").save(target)
    elif odd == "palette":
        _image(7).convert("P").save(target)
    elif odd == "cmyk":
        target = target.with_suffix(".jpg")
        _image(8).convert("CMYK").save(target)
    elif odd == "16-bit":
        Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(target)
    elif odd == "1x1":
        _image(9, size=1).save(target)
    elif odd == "exif-rotated":
        target = target.with_suffix(".jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(target, exif=exif)
    elif odd == "truncated":
        target = target.with_suffix(".jpg")
        _image(10, size=64).save(target, quality=90)
        target.write_bytes(target.read_bytes()[:200])
    elif odd == "not-an-image":
        target.write_bytes(b"this is text, not a PNG")
    elif odd == "bomb":
        # More pixels than PIL's decompression-bomb limit (2x MAX_IMAGE_PIXELS) in a tiny file.
        Image.new("1", (20000, 20000)).save(target, optimize=True)
    else:  # pragma: no cover
        raise ValueError(odd)
    return root, str(target)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    npz = root / "ok.npz"
    np.savez(npz, x=(rng.random((24, 8, 8)) * 255).astype(np.uint8), y=np.repeat([0, 1, 2], 8))
    ok = str(npz)
    cases: dict[str, Case] = {}

    # -- data sources
    cases["missing path"] = Case(["extract", str(root / "nowhere"), *TINY], 2, ["does not exist"])
    cases["unknown builtin"] = Case(["extract", "builtin:animal-mnits", *TINY], 2, ["animal-mnist"])
    (root / "empty").mkdir()
    cases["empty folder"] = Case(["extract", str(root / "empty"), *TINY], 2, ["empty"])
    cases["one class"] = Case(["extract", str(_folder(root / "one", {"only": 4})), *TINY], 2, ["at least 2"])
    with_empty = _folder(root / "with-empty", {"a": 3, "b": 3})
    (with_empty / "c").mkdir()
    cases["empty class folder"] = Case(["extract", str(with_empty), *TINY], 2, [str(with_empty / "c")])
    unsupported = root / "data.xlsx"
    unsupported.write_bytes(b"PK\x03\x04")
    cases["unsupported file type"] = Case(["extract", str(unsupported), *TINY], 2, [".csv"])
    no_xy = root / "no-xy.npz"
    np.savez(no_xy, images=np.zeros((4, 8, 8)), labels=np.zeros(4))
    cases["npz without x and y"] = Case(["extract", str(no_xy), *TINY], 2, ["x and y"])
    pickled = root / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    cases["npz holding pickled objects"] = Case(["extract", str(pickled), *TINY], 2, ["pickle"])
    not_npz = root / "broken.npz"
    not_npz.write_bytes(b"not a zip file")
    cases["corrupt npz"] = Case(["extract", str(not_npz), *TINY], 2, [str(not_npz)])

    # -- text tables
    latin1 = root / "latin1.csv"
    latin1.write_bytes("text,label\ntrès bon,pos\nmauvais,neg\ngénial,pos\ndéçu,neg\nbien,pos\nnul,neg\n".encode("latin-1"))
    cases["csv that is not UTF-8"] = Case(["extract", str(latin1), "-b", "sk:tfidf"], 2, ["--encoding cp1252"])
    no_label = root / "no-label.csv"
    no_label.write_text("text,sentiment\n" + "".join(f"t{i},pos\nu{i},neg\n" for i in range(3)))
    cases["csv without the label column"] = Case(["extract", str(no_label), "-b", "sk:tfidf"], 2, ["--label-column"])
    empty_csv = root / "empty.csv"
    empty_csv.write_text("")
    cases["empty csv"] = Case(["extract", str(empty_csv), "--text-column", "text", "-b", "sk:tfidf"], 2, ["no rows"])
    bad_jsonl = root / "bad.jsonl"
    bad_jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    cases["jsonl with a broken line"] = Case(["extract", str(bad_jsonl), "-b", "sk:tfidf"], 2, ["bad.jsonl:2", "not valid JSON"])
    manifest = root / "manifest.csv"
    pics = _folder(root / "manifest-pics", {"a": 3, "b": 3})
    rows = [f"{p},{p.parent.name}" for p in sorted(pics.rglob("*.png"))] + [f"{root / 'gone.png'},a"]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    cases["manifest naming a missing file"] = Case(["extract", str(manifest), *TINY], 0, listed=[str(root / "gone.png")])

    # -- images: odd modes decode, broken files are skipped and listed
    for odd in ("gray", "rgba", "palette", "cmyk", "16-bit", "1x1", "exif-rotated"):
        folder, _ = _odd_image_folder(root / f"img-{odd}", odd)
        cases[f"image: {odd}"] = Case(["extract", str(folder), *TINY], 0)
    for odd in ("truncated", "not-an-image", "bomb"):
        folder, target = _odd_image_folder(root / f"img-{odd}", odd)
        cases[f"image: {odd}"] = Case(["extract", str(folder), *TINY], 0, listed=[target])
    markup = _folder(root / "markup", {"[red]x": 4, "[/y]": 4})
    cases["class names that look like markup"] = Case(["probe", str(markup), *TINY, "--head", "knn"], 0)

    # -- option ranges
    cases["image size 0"] = Case(["extract", ok, *TINY, "--image-size", "0"], 2, ["--image-size"])
    cases["image size 100000"] = Case(["extract", ok, *TINY, "--image-size", "100000"], 2, ["--image-size"])
    cases["per class 0"] = Case(["extract", ok, *TINY, "--per-class", "0"], 2, ["--per-class"])
    cases["unknown pooling"] = Case(["extract", ok, *TINY, "--pool", "median"], 2, ["--pool"])
    cases["layer that does not exist"] = Case(["extract", ok, *TINY, "--layer", "blocks.99"], 2, ["Valid layers"])
    cases["batch size 0"] = Case(["extract", ok, *TINY, "--batch-size", "0"], 2, ["--batch-size"])
    cases["device cuda without a GPU"] = Case(["extract", ok, *TINY, "--device", "cuda"], 2, ["CUDA"])
    cases["device that does not exist"] = Case(["extract", ok, *TINY, "--device", "tpu"], 2, ["'auto', 'cpu' or 'cuda"])
    cases["unknown head"] = Case(["probe", ok, *TINY, "--head", "forest"], 2, ["linear"])
    cases["probe unknown prior"] = Case(["probe", ok, *TINY, "--prior", "balanced"], 2, ["--prior", "uniform"])
    cases["finetune unknown prior"] = Case(["finetune", ok, *TINY, "--prior", "natural"], 2, ["--prior", "uniform"])
    cases["finetune epochs 0"] = Case(["finetune", ok, *TINY, "--epochs", "0"], 2, ["--epochs"])
    cases["finetune negative lr"] = Case(["finetune", ok, *TINY, "--lr", "-1"], 2, ["--lr"])
    cases["finetune unknown strategy"] = Case(["finetune", ok, *TINY, "--strategy", "everything"], 2, ["lp-ft"])
    cases["finetune missing policy file"] = Case(["finetune", ok, *TINY, "--policy", str(root / "nope.yaml")], 2, ["nope.yaml"])
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("phases: [unclosed\n")
    cases["finetune malformed policy"] = Case(["finetune", ok, *TINY, "--policy", str(bad_yaml)], 2, [str(bad_yaml)])
    cases["rank unknown score"] = Case(["rank", ok, "-c", TINY_BACKBONE, "--image-size", "32", "--scores", "magic"], 2, ["magic"])
    cases["rank without candidates"] = Case(["rank", ok, "--image-size", "32"], 2, ["-c"])

    # -- backbones
    cases["unknown backbone"] = Case(["extract", ok, "--backbone", "tv:mobilnet_v2.IMAGENET1K_V1"], 2, ["Did you mean"])
    cases["file backbone that does not exist"] = Case(["extract", ok, "-b", f"file:{root / 'none.pt'}", "--image-size", "32"], 2, ["does not exist"])
    evil = root / "evil.pt"
    evil.write_bytes(pickle.dumps(_Evil()))
    evil.with_suffix(".json").write_text(json.dumps({"arch": "tv:mobilenet_v2"}))
    cases["pickled file backbone with code in it"] = Case(["extract", ok, "-b", f"file:{evil}", "--image-size", "32"], 2, ["weights_only"])
    bare = root / "bare.pt"
    bare.write_bytes(b"\x80\x04N.")
    cases["file backbone without its sidecar"] = Case(["extract", ok, "-b", f"file:{bare}", "--image-size", "32"], 2, ["bare.json"])
    cases["text backbone on images"] = Case(["extract", ok, "-b", "sk:tfidf"], 2, ["text"])
    cases["probe names a bad backbone second"] = Case(["probe", ok, *TINY, "-b", "tv:nonet", "--head", "knn"], 2, ["tv:nonet"])

    # -- --out
    existing = root / "a-file"
    existing.write_text("keep me")
    cases["out is an existing file"] = Case(["probe", ok, *TINY, "--head", "knn", "--out", str(existing)], 2, [str(existing), "--out"])
    cases["out under a file"] = Case(["probe", ok, *TINY, "--head", "knn", "--out", str(existing / "run")], 2, ["--out"])

    # -- bundles and predict
    cases["predict without a bundle"] = Case(["predict", str(root / "empty"), str(npz)], 2, ["bundle"])
    cases["export without a bundle"] = Case(["export", str(root / "empty")], 2, ["bundle"])
    cases["export to an unknown format"] = Case(["export", str(root / "empty"), "--format", "tflite"], 2, ["onnx, pt2"])
    tfidf = root / "tfidf-bundle"
    tfidf.mkdir()
    (tfidf / "bundle.json").write_text(json.dumps({"kind": "tfidf", "format": 1}))
    cases["export a tf-idf bundle"] = Case(["export", str(tfidf)], 2, ["sk:tfidf", "cannot be exported"])
    not_onnx = root / "model.onnx"
    not_onnx.write_bytes(b"\x00 not a model")
    cases["predict with a file that is not ONNX"] = Case(["predict", str(not_onnx), str(npz)], 2, ["model.onnx", "headstart export"])
    cases["report of a missing folder"] = Case(["report", str(root / "no-run")], 2, ["no-run"])
    cases["cache rm without a key"] = Case(["cache", "rm"], 2, ["--all"])
    cases["detect train on a missing path"] = Case(["detect", "train", str(root / "no-scenes"), *TINY], 2, ["does not exist"])
    broken_coco = root / "coco.json"
    broken_coco.write_text('{"images": [')
    cases["detect train on a broken COCO file"] = Case(["detect", "train", str(broken_coco), *TINY], 2, ["coco.json"])
    # -- auto
    tiny_auto = ["auto", ok, "--candidates", TINY_BACKBONE, "--image-size", "32"]
    cases["auto budget that is not a duration"] = Case([*tiny_auto, "--budget", "soon"], 2, ["--budget", "10m"])
    cases["auto budget too short"] = Case([*tiny_auto, "--budget", "1s", "--out", str(root / "auto-short")], 2, ["too short", "--budget"])
    cases["auto unknown head"] = Case([*tiny_auto, "--head", "svm"], 2, ["svm"])
    cases["auto resume without a run"] = Case([*tiny_auto, "--resume", "--out", str(root / "auto-none")], 2, ["Nothing to resume"])
    cases["auto only unknown candidates"] = Case(["auto", ok, "--candidates", "tv:no_such_net", "--budget", "1m"], 2, ["no_such_net"])
    cases["segment train epochs 0"] = Case(["segment", "train", "builtin:animal-scenes?train=8&test=4&size=64", *TINY, "--epochs", "0"], 2, ["--epochs"])
    return cases


class _Evil:
    """Unpickling this would run ``print``; ``weights_only=True`` must refuse it first."""

    def __reduce__(self):
        return (print, ("the pickled code ran",))


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Path:
    """A probe run's --out folder, for the cases that read one back."""
    from headstart.cli import main

    root = tmp_path_factory.mktemp("probe-run")
    rng = np.random.default_rng(1)
    npz = root / "data.npz"
    np.savez(npz, x=(rng.random((24, 8, 8)) * 255).astype(np.uint8), y=np.repeat([0, 1, 2], 8))
    out = root / "run"
    old = sys.argv
    sys.argv = ["headstart", "probe", str(npz), *TINY, "--head", "linear", "--out", str(out), "--quiet"]
    try:
        with pytest.raises(SystemExit) as info:
            main()
            raise SystemExit(0)
    finally:
        sys.argv = old
    assert info.value.code in (0, None)
    return out


run = run_cli  # the CLI in this process: tests/conftest.py


def check(case: Case, code: int, out: str, err: str) -> None:
    assert "Traceback" not in err + out, err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:
        assert code == 2, f"exit {code}, stderr: {err}"
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        for word in case.words:
            assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    else:
        assert code == case.code, f"exit {code}, stderr: {err}"
        for item in case.listed:
            assert any(item in line and "skipped" in line for line in lines), f"{item} is not listed as skipped: {lines}"


CASE_NAMES = [
    "missing path", "unknown builtin", "empty folder", "one class", "empty class folder", "unsupported file type",
    "npz without x and y", "npz holding pickled objects", "corrupt npz", "csv that is not UTF-8",
    "csv without the label column", "empty csv", "jsonl with a broken line", "manifest naming a missing file",
    "image: gray", "image: rgba", "image: palette", "image: cmyk", "image: 16-bit", "image: 1x1", "image: exif-rotated",
    "image: truncated", "image: not-an-image", "image: bomb", "class names that look like markup",
    "image size 0", "image size 100000", "per class 0", "unknown pooling", "layer that does not exist", "batch size 0",
    "device cuda without a GPU", "device that does not exist", "unknown head", "probe unknown prior", "finetune unknown prior", "finetune epochs 0", "finetune negative lr",
    "finetune unknown strategy", "finetune missing policy file", "finetune malformed policy", "rank unknown score",
    "rank without candidates", "unknown backbone", "file backbone that does not exist",
    "pickled file backbone with code in it", "file backbone without its sidecar", "text backbone on images",
    "probe names a bad backbone second", "out is an existing file", "out under a file", "predict without a bundle",
    "export without a bundle", "export to an unknown format", "export a tf-idf bundle", "predict with a file that is not ONNX",
    "report of a missing folder", "cache rm without a key", "detect train on a missing path",
    "detect train on a broken COCO file", "segment train epochs 0",
    "auto budget that is not a duration", "auto budget too short", "auto unknown head", "auto resume without a run",
    "auto only unknown candidates",
]


# Cases whose fix has not landed yet: strict, so a fix that lands makes the test say to remove the name.
PENDING: set[str] = set()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input(inputs, name, monkeypatch, capsys, request):
    if name in PENDING:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason="fix pending"))
    case = inputs[name]
    code, out, err = run(case.args, monkeypatch, capsys)
    check(case, code, out, err)
    if name == "pickled file backbone with code in it":
        assert "the pickled code ran" not in out + err
    if name == "out is an existing file":
        assert Path(case.args[-1]).read_text() == "keep me", "nothing written before is lost"


def test_every_case_is_in_the_catalogue(inputs):
    assert sorted(inputs) == sorted(CASE_NAMES) and len(CASE_NAMES) >= 45


# ----- cases that read a run back ------------------------------------------------------------------


def test_predict_takes_a_run_directory_and_says_which_bundle(probe_run, monkeypatch, capsys):
    image = probe_run.parent / "one.png"
    _image(3, size=8).save(image)
    code, out, err = run(["predict", str(probe_run), str(image), "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert str(probe_run / "bundle") in err
    assert json.loads(out)


def test_predict_with_a_malformed_bundle_json(probe_run, tmp_path, monkeypatch, capsys):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(probe_run / "bundle", bundle)
    (bundle / "bundle.json").write_text("{ not json")
    code, out, err = run(["predict", str(bundle), str(probe_run / "manifest.json")], monkeypatch, capsys)
    check(Case([], 2, ["bundle.json"]), code, out, err)


def test_predict_with_a_corrupt_head(probe_run, tmp_path, monkeypatch, capsys):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(probe_run / "bundle", bundle)
    head = next(p for p in bundle.iterdir() if p.suffix == ".safetensors")
    head.write_bytes(b"\x00" * 16)
    image = tmp_path / "one.png"
    _image(4, size=8).save(image)
    code, out, err = run(["predict", str(bundle), str(image)], monkeypatch, capsys)
    check(Case([], 2, [head.name]), code, out, err)


def test_out_is_checked_without_creating_anything(tmp_path):
    from headstart.errors import OptionError
    from headstart.io import check_out_dir

    existing = tmp_path / "file"
    existing.write_text("x")
    with pytest.raises(OptionError, match="existing file"):
        check_out_dir(existing)
    with pytest.raises(OptionError, match="is a file, so no folder"):
        check_out_dir(existing / "a" / "b")
    fresh = tmp_path / "new" / "run"
    assert check_out_dir(fresh) == fresh and not (tmp_path / "new").exists()
    assert check_out_dir(None) is None and check_out_dir(tmp_path) == tmp_path


def test_predict_with_a_bundle_json_missing_a_field(probe_run, tmp_path, monkeypatch, capsys):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(probe_run / "bundle", bundle)
    document = json.loads((bundle / "bundle.json").read_text())
    del document["finetuned_backbone_sha256"]
    (bundle / "bundle.json").write_text(json.dumps(document))
    code, out, err = run(["predict", str(bundle), str(probe_run / "manifest.json")], monkeypatch, capsys)
    check(Case([], 2, ["finetuned_backbone_sha256", "damaged"]), code, out, err)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_torchscript_backbone_needs_allow_torchscript(tmp_path, monkeypatch, capsys):
    import torch

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    scripted = tmp_path / "mean.pt"
    torch.jit.script(Mean()).save(str(scripted))
    scripted.with_suffix(".json").write_text(json.dumps({"input_size": 8, "feature_dim": 3}))
    rng = np.random.default_rng(2)
    npz = tmp_path / "data.npz"
    np.savez(npz, x=(rng.random((24, 8, 8, 3)) * 255).astype(np.uint8), y=np.repeat([0, 1, 2], 8))
    backbone = ["--backbone", f"file:{scripted}"]
    out = tmp_path / "run"
    for command in (["extract", str(npz), *backbone], ["probe", str(npz), *backbone, "--out", str(out)]):
        code, stdout, err = run(command, monkeypatch, capsys)
        check(Case([], 2, ["TorchScript", "runs the code", "--allow-torchscript"]), code, stdout, err)
    code, stdout, err = run(["probe", str(npz), *backbone, "--out", str(out), "--allow-torchscript", "--quiet", "--json"], monkeypatch, capsys)
    assert code == 0, err
    image = tmp_path / "one.png"
    _image(5, size=8).save(image)
    code, stdout, err = run(["predict", str(out), str(image)], monkeypatch, capsys)
    assert f"using bundle {out / 'bundle'}" in err
    check(Case([], 2, ["--allow-torchscript"]), code, stdout, "\n".join(line for line in err.splitlines() if "using bundle" not in line))
    code, stdout, err = run(["predict", str(out), str(image), "--allow-torchscript", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(stdout)[0]["label"] is not None


@pytest.mark.parametrize("command", ["probe", "rank"])
def test_the_encoding_the_error_suggests_works_from_the_cli(command, tmp_path, monkeypatch, capsys):
    """The not-UTF-8 error says ``--encoding cp1252``: every command that reads a table takes it, and reads every row."""
    rows = [("très bon", "pos"), ("mauvais", "neg"), ("génial", "pos"), ("déçu", "neg")] * 4
    table = tmp_path / "latin1.csv"
    table.write_bytes(("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)).encode("cp1252"))
    common = ["--encoding", "cp1252", "--cache-dir", str(tmp_path / "store"), "--json"]
    args = {
        "probe": ["probe", str(table), "-b", "sk:tfidf", "--out", str(tmp_path / "run"), *common],
        "rank": ["rank", str(table), "-c", "sk:tfidf", "--no-cost", "--scores", "knn", "--combine", "knn", *common],
    }[command]
    code, out, err = run(args, monkeypatch, capsys)
    assert code == 0, err
    assert "Traceback" not in err and "skipped" not in err
    if command == "probe":
        counts = json.loads(out)["dataset"]["counts"]
        assert sum(n for split in counts.values() for n in split.values()) == len(rows)
