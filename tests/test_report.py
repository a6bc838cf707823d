"""Run reports: sections drawn from the run directory's files, the CLI, a real browser, and Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import DataError
from headstart.evaluate import evaluate
from headstart.report import log_phases, plots, rank_rows, render_report, write_report
from headstart.runs import EpochLog, read_run, write_test_predictions

from conftest import TINY_BACKBONE

ROOT = Path(__file__).resolve().parents[1]
HEADSTART = ROOT / ".venv" / "bin" / "headstart"
CLASSES = ["bear", "bird", "cat", "cow"]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


# ----- a run directory with every file, written without any model ------------------------------


def make_run_dir(path: Path, *, rank: object | None = "default", log: bool = True, pictures: bool = True) -> Path:
    """A probe-like run directory with rank.json, an epoch log with phases, predictions and pictures."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    n = 60
    y = np.arange(n) % 4
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = np.array(CLASSES, dtype=object)
    result = evaluate(names[y], proba, CLASSES).to_dict()
    runs = [
        {"backbone": backbone, "head": head, "image_size": 32, "layer": "pooled", "test/accuracy": accuracy,
         "test/macro_f1": accuracy - 0.02, "test/ece": 0.05, "extract_s": 1.0, "fit_s": 0.1, "store_hit": False,
         "bundle": "bundles/x", "metrics": result}
        for backbone, head, accuracy in [("tv:a", "linear", result["accuracy"]), ("tv:a", "knn", 0.3), ("tv:b", "linear", 0.25)]
    ]
    metrics = {
        "dataset": {"source": "arrays", "modality": "image", "classes": CLASSES,
                    "counts": {"train": {c: 10 for c in CLASSES}, "test": {c: 15 for c in CLASSES}},
                    "skipped": [{"item": "cat/broken.jpg", "reason": "cannot identify image file"}]},
        "runs": runs,
        "best": {k: v for k, v in runs[0].items() if k != "metrics"},
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "manifest.json").write_text(json.dumps({"command": ["headstart", "probe", "arrays"], "seed": 0, "versions": {"torch": "2"}}))
    images = (rng.random((n, 12, 12)) * 255).astype(np.uint8)
    top = proba.argmax(axis=1)
    write_test_predictions(path, np.arange(n), names[y], names[top], proba.max(axis=1), items=images)
    if rank == "default":
        rank = {"sample": 200, "rows": [
            {"rank": 1, "candidate": "timm:tf_efficientnet_lite0", "scores": {"logme": 1.3, "leep": {"value": None, "reason": "no source head"}},
             "probe_accuracy": 0.94, "cost": {"params": 4_700_000, "images_per_s": 120.0}, "pareto": True},
            {"rank": 2, "candidate": "tv:mobilenet_v2.IMAGENET1K_V1", "scores": {"logme": 1.2, "leep": 0.4},
             "probe_accuracy": 0.92, "cost": {"params": 3_500_000, "images_per_s": 169.0}, "pareto": True},
            {"rank": 3, "candidate": "tv:mobilenet_v2@random", "scores": {"logme": 0.2, "leep": 0.1},
             "probe_accuracy": 0.75, "cost": {"params": 3_500_000, "images_per_s": 169.0}, "pareto": False},
        ]}
    if rank is not None:
        (path / "rank.json").write_text(json.dumps(rank))
    if log:
        with open(path / "log.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "phase", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"])
            for epoch in range(6):
                phase = "head" if epoch < 2 else ("layer4" if epoch < 4 else "all")
                writer.writerow([epoch, phase, 1.5 / (epoch + 1), 1.6 / (epoch + 1), 0.6 + 0.05 * epoch, 1e-3 * 0.8**epoch, 2.0])
    if pictures:
        from PIL import Image

        (path / "predictions").mkdir(exist_ok=True)
        for k in range(2):
            Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(path / "predictions" / f"scene{k}.png")
    return path


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def main_table_rows(page: str) -> int:
    match = re.search(r'<table id="main-table"[^>]*>.*?<tbody>(.*?)</tbody>', page, re.S)
    assert match, "no main table"
    return match.group(1).count("<tr")


def assert_self_contained(page: str) -> None:
    assert "<script" not in page
    assert "<link" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page), "a resource that is not embedded"
    assert "@import" not in page and "url(" not in page


# ----- sections ----------------------------------------------------------------------------------


def test_report_draws_every_section_it_has_files_for(tmp_path):
    run = make_run_dir(tmp_path / "run")
    page = render_report(run)
    assert section_ids(page) == [
        "overview", "dataset", "rank", "probes", "curves", "confusion", "per-class", "reliability", "wrong", "predictions", "manifest",
    ]
    assert_self_contained(page)
    assert main_table_rows(page) == 3  # the rank table: one row per candidate
    assert "Content-Security-Policy" in page
    assert page.count('src="data:image/png;base64,') >= 8
    assert "is n/a for timm:tf_efficientnet_lite0: no source head" in page  # never shown as 0
    assert "cat/broken.jpg" in page
    assert "Pareto front" in page
    assert "Phases (column <code>phase</code>): head from epoch 0; layer4 from epoch 2; all from epoch 4." in page


def test_report_shows_only_what_exists(tmp_path):
    run = tmp_path / "rank-only"
    run.mkdir()
    (run / "rank.json").write_text(json.dumps([{"backbone": "a", "logme": 1.0, "params": 10}, {"backbone": "b", "logme": 2.0, "params": 20}]))
    page = render_report(run)
    assert section_ids(page) == ["rank"]
    assert main_table_rows(page) == 2

    log_only = tmp_path / "finetune"
    log_only.mkdir()
    (log_only / "epochs.csv").write_text("epoch,train_loss,val_accuracy\n0,1.0,0.5\n1,0.5,0.7\n")
    run_files = read_run(log_only)
    assert run_files.kind == "finetune"
    assert section_ids(render_report(log_only)) == ["curves"]


def test_unreadable_files_become_notes(tmp_path):
    run = make_run_dir(tmp_path / "run", rank=None, log=False, pictures=False)
    (run / "metrics.json").write_text("{not json")
    (run / "test_predictions.csv").write_text("a,b\n1,2\n")
    page = render_report(run)
    assert "metrics.json: could not be read" in page
    assert "missing columns" in page
    assert "manifest" in section_ids(page)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_run(tmp_path / "nowhere")
    with pytest.raises(DataError, match="none of the files"):
        read_run(tmp_path)


def test_test_predictions_from_files_and_texts(tmp_path):
    """Image files get thumbnails of the confidently wrong ones; texts go into the item column and get none."""
    from PIL import Image

    paths = []
    for k in range(4):
        path = tmp_path / f"img{k}.png"
        Image.fromarray(np.full((300, 200, 3), 60 * k, dtype=np.uint8)).save(path)
        paths.append(str(path))
    run = tmp_path / "files"
    write_test_predictions(run, [0, 1, 2, 3], ["a", "a", "b", "b"], ["a", "b", "a", "b"], [0.9, 0.8, 0.7, 0.6], items=paths, thumbnails=1)
    assert [p.name for p in (run / "thumbnails").iterdir()] == ["1.png"]  # the most confident of the two mistakes
    assert max(Image.open(run / "thumbnails" / "1.png").size) == 128
    with open(run / "test_predictions.csv", newline="") as handle:
        assert [row["item"] for row in csv.DictReader(handle)] == paths

    texts = tmp_path / "texts"
    write_test_predictions(texts, [0, 1], ["pos", "neg"], ["neg", "neg"], [0.99, 0.6], items=["so good", "awful"], modality="text")
    assert not (texts / "thumbnails").exists()
    page = render_report(texts)
    assert '<div class="text-item" title="so good">so good</div>' in page


def test_rank_rows_accepts_the_likely_formats():
    row = {"name": "a", "scores": {"logme": 1.0, "leep": {"value": None, "reason": "no source head"}}, "layers": ["x", "y"]}
    assert rank_rows([row]) == [{"name": "a", "scores.logme": 1.0, "scores.leep": "n/a: no source head", "layers": "x, y"}]
    assert rank_rows({"candidates": [row]}) == rank_rows([row])
    assert rank_rows({"nothing": 1}) == []


def test_pareto_front():
    costs = [1.0, 2.0, 3.0, 2.0, 5.0]
    scores = [0.5, 0.7, 0.6, 0.7, 0.9]
    assert plots.pareto_front(costs, scores) == [0, 1, 3, 4]


def test_phases_of_an_epoch_log():
    rows = [{"epoch": str(e), "unfreeze_phase": p, "loss": "1"} for e, p in enumerate(["0", "0", "1", "1", "2"])]
    column, spans = log_phases(EpochLog("log.csv", "epoch", rows))
    assert column == "unfreeze_phase"
    assert [label for _, _, label in spans] == ["unfreeze_phase 0", "unfreeze_phase 1", "unfreeze_phase 2"]
    assert [start for start, _, _ in spans] == [0, 1.5, 3.5]


def test_report_without_matplotlib_keeps_tables(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run", pictures=False)
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    page = render_report(run)
    assert "Plots need matplotlib: pip install &#x27;headstart[report]&#x27;" in page
    assert 'class="plot' not in page
    assert main_table_rows(page) == 3


def test_matplotlib_is_imported_lazily():
    code = "import sys, headstart, headstart.report, headstart.runs, headstart.cli; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_finetune_run_format(tmp_path):
    """A run directory as finetune() writes it: metrics.csv per epoch, metrics.json with the policy and test metrics."""
    run = tmp_path / "finetune"
    run.mkdir()
    columns = ["epoch", "phase", "trainable_params", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds_train", "seconds", "best"]
    lines = [",".join(columns)]
    for epoch, phase in enumerate([0, 1, 2, 2]):
        lines.append(f"{epoch},{phase},{1000 * (phase + 1)},0.001,{1 / (epoch + 1)},{0.5 + epoch / 10},{1.1 / (epoch + 1)},{0.4 + epoch / 10},0.3,0.4,{epoch == 3}")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    names = np.array(CLASSES, dtype=object)
    labels = np.arange(20) % 4
    proba = np.full((20, 4), 0.1)
    proba[np.arange(20), labels] = 0.7
    metrics = {
        "backbone": "tv:mobilenet_v2.IMAGENET1K_V1", "strategy": "gradual", "best_epoch": 3, "test_accuracy": 1.0,
        "policy": {"trainable": ["head"], "unfreeze": {"1": ["last-n:3"], "2": ["*"]}},
        "test": evaluate(names[labels], proba, CLASSES).to_dict(),
        "history": [{"epoch": 0}],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    files = read_run(run)
    assert files.kind == "finetune"
    page = render_report(run)
    assert section_ids(page) == ["overview", "curves", "confusion", "per-class"]
    assert "tv:mobilenet_v2.IMAGENET1K_V1 (gradual)" in page
    assert "train head from epoch 0; + last-n:3 from epoch 1; + * from epoch 2" in page
    assert "The kept weights are those of epoch 3" in page
    from headstart.report import log_series

    _, series = log_series(files.logs[0], "phase")
    assert set(series) == {"lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}


def test_rank_table_format(tmp_path):
    """rank.json as headstart.select.rank writes it: two declared Pareto plots, n/a scores with reasons."""
    rank = pytest.importorskip("headstart.select.rank")
    from headstart.select.cost import Cost

    def row(rank_position, name, logme, leep, macs, speed, front, front_speed):
        cost = Cost(params=macs // 10, macs=macs, images_per_s=speed, peak_memory_bytes=50_000_000, image_size=112, batch_size=32, device="cpu", threads=2)
        return rank.RankRow(
            candidate=name, backbone=name, layer="pooled", image_size=112, feature_dim=1280, pretrained=True,
            scores={"logme": logme, "leep": leep}, undefined={} if leep is not None else {"leep": "no source head"},
            combined=logme, rank=rank_position, cost=cost, pareto=front, pareto_speed=front_speed,
        )

    table = rank.RankTable(
        rows=[row(1, "timm:tf_efficientnet_lite0", 1.3, None, 400_000_000, 120.0, True, False),
              row(2, "tv:mobilenet_v2.IMAGENET1K_V1", 1.2, 0.4, 300_000_000, 169.0, True, True),
              row(3, "tv:mobilenet_v2@random", 0.2, None, 300_000_000, 169.0, False, False)],
        skipped=[("tv:resnet50.IMAGENET1K_V2", "weights are not available offline")],
        scores=("logme", "leep"), combination=rank.Combination(scores=("logme",)), dataset={"source": "arrays", "classes": ["a", "b"], "counts": {}},
        sample={"n_samples": 200}, seed=0,
    )
    table.write(tmp_path / "rank")
    page = render_report(tmp_path / "rank")
    assert section_ids(page)[:2] == ["dataset", "rank"]
    assert main_table_rows(page) == 3
    assert 'alt="combined against cost.macs"' in page
    assert 'alt="combined against cost.images_per_s"' in page
    assert "is n/a for timm:tf_efficientnet_lite0, tv:mobilenet_v2@random: no source head" in page
    assert "weights are not available offline" in page


# ----- the CLI -----------------------------------------------------------------------------------


def test_cli_report_and_comparison(tmp_path):
    runner = CliRunner()
    first = make_run_dir(tmp_path / "first", pictures=False)
    second = make_run_dir(tmp_path / "second", rank=None, log=False, pictures=False)
    result = runner.invoke(app, ["report", str(first)])
    assert result.exit_code == 0, result.output
    assert (first / "report.html").is_file()

    out = tmp_path / "compare.html"
    result = runner.invoke(app, ["report", str(first), str(second), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["report"] == str(out)
    assert [run["kind"] for run in summary["runs"]] == ["probe", "probe"]
    page = out.read_text()
    assert main_table_rows(page) == 2  # one summary row per run
    assert "(not in this run)" in page  # the second run has no rank.json
    assert_self_contained(page)


def test_cli_report_of_a_missing_run_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, DataError)


# ----- a real probe run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """A probe run of the tiny backbone with two heads on arrays it gets partly wrong."""
    from headstart.data import load_data
    from headstart.features import FeatureStore
    from headstart.workflows.probe import probe

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 30)
    images = np.clip(rng.normal(100 + labels[:, None, None] * 25, 60, (90, 16, 16)), 0, 255).astype(np.uint8)
    out = tmp_path_factory.mktemp("probe") / "run"
    store = FeatureStore(tmp_path_factory.mktemp("probe-store"))
    report = probe(load_data((images, labels)), [TINY_BACKBONE], ["linear", "knn"], image_size=32, out=out, store=store, quiet=True)
    return out, report


def test_probe_run_writes_its_report(probe_run):
    out, report = probe_run
    page = (out / "report.html").read_text()
    assert {"dataset", "probes", "confusion", "per-class", "reliability", "wrong", "manifest"} <= set(section_ids(page))
    assert main_table_rows(page) == 2  # the probe table: one row per (backbone, head)
    assert_self_contained(page)
    with open(out / "test_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == report.best.test.n
    wrong = [row for row in rows if row["true"] != row["predicted"]]
    assert wrong, "the fixture should leave some test examples wrong"
    assert len(list((out / "thumbnails").glob("*.png"))) == min(len(wrong), 24)
    accuracy = 1 - len(wrong) / len(rows)
    assert accuracy == pytest.approx(report.best.test.accuracy)


def test_probe_manifest_and_a_report_that_fails_only_warns(probe_run, tmp_path, monkeypatch, capsys):
    import sys

    from headstart.report import page as report_module
    from headstart.report import write_report_or_warn
    from headstart.runs import write_manifest

    out, report = probe_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == sys.argv and {"python", "torch", "numpy"} <= set(manifest["versions"])
    assert manifest["seed"] == 0 and manifest["wall_seconds"] > 0
    assert [run["store_key"] for run in manifest["runs"]] == [run.store_key for run in report.runs]
    assert all(run["weights_sha256"] == report.best.bundle.spec.sha256 for run in manifest["runs"])

    run_dir = tmp_path / "run"
    write_manifest(run_dir, seed=3, where=run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["where"] == str(run_dir)  # not JSON: written as text

    def broken(run_dir, out=None):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(report_module, "write_report", broken)
    assert write_report_or_warn(run_dir) is None
    warning = " ".join(capsys.readouterr().err.split())
    assert "report.html was not written (RuntimeError: no fonts today)" in warning
    assert f"headstart report {run_dir}" in warning
    assert (run_dir / "manifest.json").is_file() and not (run_dir / "report.html").exists()


def test_manifest_carries_the_schema_version(tmp_path):
    from headstart.runs import SCHEMA_VERSION, write_manifest

    write_manifest(tmp_path, seed=1, schema=99)  # the caller cannot overwrite the schema version
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert SCHEMA_VERSION >= 1 and manifest["schema"] == SCHEMA_VERSION
    assert manifest["command"] == sys.argv and manifest["seed"] == 1
    assert read_run(tmp_path).schema == SCHEMA_VERSION
    assert "<th>schema</th>" in render_report(tmp_path)


def test_a_legacy_run_directory_without_a_schema_still_renders(tmp_path):
    """A run written before manifest.json had "schema" is schema version 0, and reads and renders as before."""
    run = make_run_dir(tmp_path / "legacy")
    manifest = json.loads((run / "manifest.json").read_text())
    assert "schema" not in manifest
    files = read_run(run)
    assert files.schema == 0 and files.kind == "probe"
    page = render_report(run)
    assert section_ids(page)[0] == "overview" and "manifest" in section_ids(page)
    assert "<th>schema</th>" not in page
    (run / "manifest.json").unlink()  # no manifest at all: still schema 0
    assert read_run(run).schema == 0


def test_runs_sits_below_the_report():
    """headstart.runs imports none of the layers above it (report, bundles, probe, finetune, tasks, select)."""
    code = ("import sys, headstart.runs; "
            "print(sorted(m for m in sys.modules if m.startswith('headstart.') and not m.startswith('headstart.runs')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "['headstart.errors']", result.stderr


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || 'resource')); }, true);
document.addEventListener('securitypolicyviolation', function (e) { window.__errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI); });
var original = console.error;
console.error = function () { window.__errors.push('console: ' + Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); };
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var out = document.createElement('pre');
  out.id = 'hs-check';
  out.textContent = JSON.stringify({
    errors: window.__errors,
    images: images.length,
    undecoded: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; }),
    main_rows: document.querySelectorAll('#main-table tbody tr').length,
    sections: Array.prototype.map.call(document.querySelectorAll('section'), function (s) { return s.id; })
  });
  document.body.appendChild(out);
});
</script>"""


def browser_check(page_path: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load a copy of the page with a checking script first in <head>; return its findings and console lines.

    The script runs before the report's Content-Security-Policy meta tag, so the policy still
    applies to everything in the report itself.
    """
    browser = chromium_path()
    page = page_path.read_text()
    checked = tmp_path / f"checked-{page_path.name}"
    checked.write_text(page.replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r'<pre id="hs-check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"chromium printed no check results (exit {result.returncode}): {result.stderr[-2000:]}"
    import html

    findings = json.loads(html.unescape(match.group(1)))
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return findings, console


@pytest.mark.skipif(chromium_path() is None, reason="headless Chromium is not installed: run scripts/install_browser.sh (Debian's chromium, needs root)")
def test_report_in_a_real_browser(probe_run, tmp_path):
    out, report = probe_run
    findings, console = browser_check(out / "report.html", tmp_path)
    assert findings["errors"] == []
    assert console == []
    assert findings["images"] >= 5
    assert findings["undecoded"] == []
    assert findings["main_rows"] == len(report.runs)
    assert "wrong" in findings["sections"]


@pytest.mark.skipif(chromium_path() is None, reason="headless Chromium is not installed: run scripts/install_browser.sh (Debian's chromium, needs root)")
def test_browser_check_catches_broken_pages(tmp_path):
    """The checks themselves fail on a page with an undecodable image and an external resource."""
    run = make_run_dir(tmp_path / "run", rank=None, log=False, pictures=False)
    page_path = write_report(run)
    page = page_path.read_text().replace(
        "</main>", '<img alt="broken" src="data:image/png;base64,AAAA"><img alt="remote" src="http://127.0.0.1:9/x.png"></main>'
    )
    page_path.write_text(page)
    findings, console = browser_check(page_path, tmp_path)
    assert set(findings["undecoded"]) == {"broken", "remote"}
    assert any("img-src" in error for error in findings["errors"])
    assert console, "chromium should log the blocked request"


# ----- progress and console ------------------------------------------------------------------------


def _read_pty(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_progress_only_on_a_terminal_and_json_alone_on_stdout(tmp_path, tiny_arrays):
    """A terminal gets a progress bar with throughput and ETA; --quiet and a pipe get none; --json is pure JSON."""
    import pty

    data = tmp_path / "tiny.npz"
    np.savez(data, x=tiny_arrays[0], y=tiny_arrays[1])
    base = [str(HEADSTART), "extract", str(data), "--backbone", TINY_BACKBONE, "--image-size", "32"]
    processes = {}
    for name, extra, terminal in (("terminal", [], True), ("quiet", ["--quiet"], True), ("piped", ["--json"], False)):
        env = {**os.environ, "HEADSTART_CACHE": str(tmp_path / f"cache-{name}"), "HEADSTART_OFFLINE": "1"}
        if terminal:
            parent, child = pty.openpty()
            process = subprocess.Popen([*base, *extra], env=env, stdout=subprocess.PIPE, stderr=child)
            os.close(child)
            processes[name] = (process, parent)
        else:
            processes[name] = (subprocess.Popen([*base, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE), None)
    outputs = {}
    for name, (process, parent) in processes.items():
        if parent is not None:
            stderr = _read_pty(parent)
            stdout = process.communicate(timeout=240)[0].decode()
            os.close(parent)
        else:
            stdout, stderr = (part.decode() for part in process.communicate(timeout=240))
        assert process.returncode == 0, f"{name}: exit {process.returncode}: {stderr[-1000:]}"
        outputs[name] = (stdout, stderr)
    assert "items/s" in outputs["terminal"][1] and "ETA" in outputs["terminal"][1]
    assert "items/s" not in outputs["quiet"][1] and "━" not in outputs["quiet"][1]
    stdout, stderr = outputs["piped"]
    assert "━" not in stderr and "items/s" not in stderr
    assert json.loads(stdout)["shape"] == [60, json.loads(stdout)["shape"][1]]


# ----- Ctrl-C -------------------------------------------------------------------------------------


# ``headstart extract`` as the console script runs it (cli.main), with 64-row shards instead of 2,048
# so that the test needs seconds, not a minute: the store commits shard by shard either way. Each
# shard write is followed by a 0.25 s pause, so that on an idle machine the run cannot finish
# between the first shard and the SIGINT. SIGINT gets Python's usual handler back, since a test run
# started in the background of a non-interactive shell passes SIGINT down as ignored.
EXTRACT_WITH_SMALL_SHARDS = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "import sys, time; from headstart.features import extract; extract.__kwdefaults__['shard_size'] = 64; "
    "from headstart.features.store import FeatureStore; write = FeatureStore.write_shard; "
    "FeatureStore.write_shard = lambda self, *a, **k: (write(self, *a, **k), time.sleep(0.25))[0]; "
    "from headstart.cli import main; sys.argv[0] = 'headstart'; main()"
)


def test_ctrl_c_keeps_committed_shards_and_says_how_to_resume(tmp_path):
    """SIGINT to a running ``headstart extract`` after its first shard: exit 130, the shard stays, a hint."""
    from headstart.features import FeatureStore

    rng = np.random.default_rng(0)
    n = 64 * 40
    data = tmp_path / "data.npz"
    np.savez(data, x=(rng.random((n, 8, 8)) * 255).astype(np.uint8), y=np.arange(n) % 4)
    cache = tmp_path / "cache"
    env = {**os.environ, "HEADSTART_CACHE": str(cache), "HEADSTART_OFFLINE": "1"}
    command = ["extract", str(data), "--backbone", TINY_BACKBONE, "--image-size", "32", "--batch-size", "16"]
    process = subprocess.Popen(
        [sys.executable, "-c", EXTRACT_WITH_SMALL_SHARDS, *command],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    first_shard = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list(cache.glob("features/*/shard-00000.json"))
        if found:
            first_shard = found[0]
            break
        time.sleep(0.02)
    assert first_shard is not None, f"no shard was committed (exit {process.poll()})"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    key = first_shard.parent.name
    store = FeatureStore(cache)
    assert store.meta(key) is None, "the run finished before SIGINT arrived; the test needs more shards"
    assert store.read_shard(key, 0) is not None, "the committed shard must survive Ctrl-C"
    assert "Traceback" not in stderr
    assert process.returncode == 130, f"exit {process.returncode}: {stderr[-2000:]}"
    message = " ".join(stderr.split())  # rich wraps long lines at 80 columns off a terminal
    assert "interrupted" in message and "run the same command again to resume" in message
