"""The foundation's CLI: backbones, extract, cache ls/du/rm; one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BACKBONE
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import HeadstartError

HEADSTART = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "headstart"
SUMMARY_FIELDS = {"key", "path", "shape", "skipped", "seconds", "hit"}


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def npz(tmp_path, tiny_arrays):
    path = tmp_path / "tiny.npz"
    np.savez(path, x=tiny_arrays[0], y=tiny_arrays[1])
    return path


def _json(result) -> object:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return json.loads(result.stdout)


def _extract_args(data, *extra) -> list[str]:
    return ["extract", str(data), "--backbone", TINY_BACKBONE, "--image-size", "32", "--json", *extra]


# ----- CliRunner ------------------------------------------------------------------------------


@pytest.mark.slow  # with no pattern it checks every catalog name for offline weights (several seconds)
def test_backbones_json(runner):
    rows = _json(runner.invoke(app, ["backbones", "--json"]))
    assert isinstance(rows, list) and rows
    by_name = {row["name"]: row for row in rows}
    assert {"tv:mobilenet_v2.IMAGENET1K_V1", "timm:tf_efficientnet_lite0"} <= set(by_name)
    for row in rows:
        assert set(row) == {"name", "source", "offline", "params", "feature_dim"}
        assert row["offline"] is True
    assert by_name["tv:mobilenet_v2.IMAGENET1K_V1"]["feature_dim"] == 1280


def test_backbones_pattern_and_table(runner):
    rows = _json(runner.invoke(app, ["backbones", "timm:tf_efficientnet_lite*", "--json"]))
    assert {row["name"] for row in rows if row["offline"]} == {f"timm:tf_efficientnet_lite{i}" for i in range(3)}
    assert any(not row["offline"] for row in rows)
    table = runner.invoke(app, ["backbones", "timm:tf_efficientnet_lite0"])
    assert table.exit_code == 0
    assert "tf_efficientnet_lite0" in table.stdout and "1280" in table.stdout and "yes" in table.stdout


def test_extract_json_then_hit(runner, npz, isolated_cache):
    first = _json(runner.invoke(app, _extract_args(npz)))
    assert SUMMARY_FIELDS <= set(first)
    assert first["hit"] is False
    assert first["shape"] == [60, 256]
    assert first["skipped"] == 0
    assert first["image_size"] == 32
    assert isinstance(first["seconds"], (int, float)) and first["seconds"] >= 0
    assert Path(first["path"]).parent.parent == isolated_cache
    assert (Path(first["path"]) / "meta.json").is_file()
    second = _json(runner.invoke(app, _extract_args(npz)))
    assert second["hit"] is True
    assert second["key"] == first["key"] and second["path"] == first["path"]
    other = _json(runner.invoke(app, _extract_args(npz, "--pool", "max", "--layer", "blocks.2")))
    assert other["key"] != first["key"] and other["hit"] is False


def test_extract_reports_skipped_files(runner, tmp_path):
    from test_data import _folder_with_bad_files

    root, bad = _folder_with_bad_files(tmp_path)
    summary = _json(runner.invoke(app, _extract_args(root, "--workers", "0", "--cache-dir", str(tmp_path / "c"))))
    assert summary["skipped"] == 2
    assert {item["item"] for item in summary["skipped_items"]} == {str(p) for p in bad}
    assert all(item["reason"] for item in summary["skipped_items"])
    assert Path(summary["path"]).is_relative_to(tmp_path / "c")


def test_extract_table_output(runner, npz):
    result = runner.invoke(app, ["extract", str(npz), "-b", TINY_BACKBONE, "--image-size", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "key" in result.stdout and "hit" in result.stdout and "60" in result.stdout


def test_cache_ls_du_rm(runner, npz, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "c")]
    assert _json(runner.invoke(app, ["cache", "ls", "--json", *cache])) == []
    first = _json(runner.invoke(app, _extract_args(npz, *cache)))
    second = _json(runner.invoke(app, _extract_args(npz, "--layer", "blocks.1", *cache)))
    listed = _json(runner.invoke(app, ["cache", "ls", "--json", *cache]))
    assert {entry["key"] for entry in listed} == {first["key"], second["key"]}
    entry = next(e for e in listed if e["key"] == first["key"])
    assert entry["shape"] == [60, 256] and entry["backbone"] == TINY_BACKBONE and entry["bytes"] > 0
    table = runner.invoke(app, ["cache", "ls", *cache])
    assert table.exit_code == 0 and first["key"][:16] in table.stdout

    du = runner.invoke(app, ["cache", "du", *cache])
    assert du.exit_code == 0 and "MB" in du.stdout and str(tmp_path / "c") in du.stdout
    du_json = _json(runner.invoke(app, ["cache", "du", "--json", *cache]))
    assert du_json["bytes"] >= sum(e["bytes"] for e in listed)

    removed = _json(runner.invoke(app, ["cache", "rm", first["key"][:10], "--json", *cache]))
    assert removed == {"removed": [first["key"]]}
    assert [e["key"] for e in _json(runner.invoke(app, ["cache", "ls", "--json", *cache]))] == [second["key"]]
    result = runner.invoke(app, ["cache", "rm", "--all", *cache])
    assert result.exit_code == 0 and "removed 1 entry" in result.stdout
    assert _json(runner.invoke(app, ["cache", "ls", "--json", *cache])) == []
    assert _json(runner.invoke(app, ["cache", "du", "--json", *cache]))["bytes"] == 0


def test_cache_rm_needs_a_key_or_all(runner):
    result = runner.invoke(app, ["cache", "rm"])
    assert isinstance(result.exception, HeadstartError)
    assert "--all" in str(result.exception)


def test_cli_errors_are_headstart_errors(runner, npz):
    result = runner.invoke(app, ["extract", str(npz), "-b", "timm:tst_efficientnet@random"])
    assert isinstance(result.exception, HeadstartError)
    assert "Did you mean" in str(result.exception)


# ----- exit codes and one-line errors ---------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Arguments for each bad input of the issue, with a piece of the fix its message must show."""
    from test_data import make_folder

    root = tmp_path_factory.mktemp("cli-errors")
    rng = np.random.default_rng(0)
    npz = root / "ok.npz"
    np.savez(npz, x=(rng.random((20, 8, 8)) * 255).astype(np.uint8), y=np.repeat([0, 1], 10))
    empty_class = make_folder(root / "with-empty", {"a": 3, "b": 3})
    (empty_class / "c").mkdir()
    one_class = make_folder(root / "one-class", {"only": 4})
    blocker = root / "a-file"
    blocker.write_text("a regular file where the cache folder should be")
    tiny = ["--backbone", TINY_BACKBONE, "--image-size", "32"]
    return {
        "unknown backbone": (["extract", str(npz), "--backbone", "tv:mobilnet_v2.IMAGENET1K_V1"], "Did you mean: mobilenet_v2"),
        "bad layer": (["extract", str(npz), *tiny, "--layer", "blocks.99"], "Valid layers: pooled, blocks.0"),
        "missing data": (["extract", str(root / "nowhere"), *tiny], "does not exist"),
        "empty class folder": (["extract", str(empty_class), *tiny], str(empty_class / "c")),
        "one class": (["extract", str(one_class), *tiny], "at least 2"),
        "non-writable cache": (["extract", str(npz), *tiny, "--cache-dir", str(blocker / "cache")], "HEADSTART_CACHE"),
        "cache rm without key": (["cache", "rm"], "--all"),
    }


ERROR_CASES = [
    "unknown backbone",
    "bad layer",
    "missing data",
    "empty class folder",
    "one class",
    "non-writable cache",
    "cache rm without key",
]


def _check_one_line_error(case: str, code: int, stdout: str, stderr: str, expected: str) -> None:
    assert code == 2, f"{case}: exit {code}\n{stderr}"
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case}: expected one line, got {lines}"
    assert lines[0].startswith("error: ")
    assert expected in lines[0], f"{case}: {lines[0]!r} lacks {expected!r}"
    assert stdout == ""


@pytest.mark.parametrize("case", ERROR_CASES)
def test_main_one_line_error(bad_inputs, case, monkeypatch, capsys):
    """The console script's entry point, in this process."""
    from headstart.cli import main

    args, expected = bad_inputs[case]
    monkeypatch.setattr(sys, "argv", ["headstart", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    _check_one_line_error(case, info.value.code, captured.out, captured.err, expected)


@pytest.fixture(scope="module")
def console_runs(bad_inputs, tmp_path_factory):
    """Run every bad input through the installed console script (each run pays for importing torch)."""
    cache = tmp_path_factory.mktemp("cli-cache")
    env = {**os.environ, "HEADSTART_CACHE": str(cache), "HEADSTART_OFFLINE": "1", "COLUMNS": "80"}
    results = {}
    pending = list(bad_inputs.items())
    while pending:  # two at a time: one per core
        running = []
        for name, (args, expected) in pending[:2]:
            process = subprocess.Popen([str(HEADSTART), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running.append((name, expected, process))
        pending = pending[2:]
        for name, expected, process in running:
            stdout, stderr = process.communicate(timeout=300)
            results[name] = (process.returncode, stdout, stderr, expected)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("case", ERROR_CASES)
def test_console_script_one_line_error(console_runs, case):
    code, stdout, stderr, expected = console_runs[case]
    _check_one_line_error(case, code, stdout, stderr, expected)


def test_usage_error_exits_2(monkeypatch, capsys):
    from headstart.cli import main

    monkeypatch.setattr(sys, "argv", ["headstart", "extract"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "Missing" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--pool", "median"], ["--image-size", "0"]])
def test_bad_pool_or_image_size_is_a_one_line_error(bad_inputs, extra, monkeypatch, capsys):
    from headstart.cli import main

    args, _ = bad_inputs["bad layer"]
    args = [a for a in args if a not in ("--layer", "blocks.99")]
    monkeypatch.setattr(sys, "argv", ["headstart", *args, *extra])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    _check_one_line_error("bad option", info.value.code, captured.out, captured.err, extra[0])


# ----- the CLI contract: an internal error is one line with the --debug hint ---------------------


def _boom(*args, **kwargs):
    raise RuntimeError("something inside broke\nover two lines")


def test_an_internal_error_is_one_line_with_the_debug_hint(npz, monkeypatch, capsys):
    from headstart import cli

    monkeypatch.setattr("headstart.features.extract", _boom)
    monkeypatch.setattr(sys, "argv", ["headstart", *_extract_args(npz)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert info.value.code == 1
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("internal error: RuntimeError: something inside broke over two lines")
    assert "--debug" in lines[0] and "Traceback" not in captured.err


def test_debug_shows_the_traceback_from_anywhere_on_the_line(npz, monkeypatch, capsys):
    from headstart import cli

    monkeypatch.setattr("headstart.features.extract", _boom)
    monkeypatch.setattr(sys, "argv", ["headstart", "--debug", *_extract_args(npz)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 1
    assert "Traceback" in err and "_boom" in err and "something inside broke" in err


@pytest.mark.parametrize("name", ["[red]x", "[/x]", "[bold]"])
def test_markup_in_an_error_message_prints_as_it_is(name, monkeypatch, capsys):
    from headstart import cli

    monkeypatch.setattr(sys, "argv", ["headstart", "extract", f"/no/such/{name}", "--backbone", TINY_BACKBONE])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert f"/no/such/{name}" in err, err
    assert "Traceback" not in err and "MarkupError" not in err


def test_table_cells_print_markup_as_text(capsys):
    from headstart.commands.common import table

    table("classes", ["name"], [["[red]cat"], ["[/dog]"]])
    out = capsys.readouterr().out
    assert "[red]cat" in out and "[/dog]" in out
