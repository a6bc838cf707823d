"""Docs that run: every ```python and ```bash block of README.md and docs/*.md is a test.

A page runs top to bottom like a notebook: its blocks share one working directory (a fresh temp
folder) and one Python namespace, so a later block may use a file or a variable an earlier block
made. Every page shares one feature store, so the same features are extracted once for all pages.

- ```python blocks run with ``exec``.
- ```bash blocks hold ``headstart`` commands only (one per line, ``\\`` continues a line, ``#``
  starts a comment); each runs through the venv's console script and must exit 0. A command with
  ``--json`` must print valid JSON on stdout.
- ``<!-- slow-test -->`` directly above a block marks it ``slow`` (real weights, minutes of CPU).
- ``<!-- skip-test: reason -->`` directly above a block opts it out, for what cannot run here
  (a multi-node launch, ``make test`` itself). The reason is required and is shown as the skip reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADSTART = ROOT / ".venv" / "bin" / "headstart"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REQUIRED_PAGES = (
    "image-classification.md", "text.md", "detection.md", "segmentation.md", "choosing-a-backbone.md", "finetuning.md", "scaling.md",
    "security.md",
)
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"^<!--\s*(skip-test|slow-test)\s*(?::\s*(.*?))?\s*-->$")
COMMAND_TIMEOUT_S = 3600


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    code: str
    skip: str | None
    slow: bool
    index: int

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    """The ```python and ```bash blocks of a page, with the markers written directly above each."""
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        language = match.group(1).lower()
        if language not in ("python", "bash"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        skip, slow = None, False
        above = text[: match.start()].rstrip("\n").split("\n")
        while above and MARKER.match(above[-1].strip()):
            kind, reason = MARKER.match(above.pop().strip()).groups()
            if kind == "skip-test":
                skip = reason or ""
            else:
                slow = True
        blocks.append(Block(page, line, language, match.group(2), skip, slow, len(blocks)))
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def bash_commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split like a shell."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


# ----- the pages themselves -------------------------------------------------------------------


def test_every_task_has_a_page_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in REQUIRED_PAGES:
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"
        assert f"docs/{name}" in readme, f"README.md does not link docs/{name}"


def test_every_block_runs_or_says_why_not():
    """A block either runs here or carries a skip-test marker with a reason; bash blocks run headstart only."""
    problems = []
    for block in ALL_BLOCKS:
        if block.skip is not None:
            if not block.skip.strip():
                problems.append(f"{block.name}: skip-test needs a reason: <!-- skip-test: why it cannot run here -->")
            continue
        if block.language == "bash":
            for words in bash_commands(block.code):
                if words[0] != "headstart":
                    problems.append(f"{block.name}: `{' '.join(words)}` is not a headstart command; mark the block skip-test with a reason")
                if any(word in ("|", ">", ">>", "&&", ";", "<") for word in words):
                    problems.append(f"{block.name}: `{' '.join(words)}` uses shell syntax the docs runner does not run")
        else:
            try:
                compile(block.code, block.name, "exec")
            except SyntaxError as exc:
                problems.append(f"{block.name}: {exc}")
    assert not problems, "\n".join(problems)


def _parse(words: list[str]) -> dict:
    """Parse a headstart command line with the CLI's own parser, without running it."""
    import typer.main

    from headstart.cli import app

    command, name, rest, parent = typer.main.get_command(app), "headstart", list(words[1:]), None
    while True:
        context = command.make_context(name, rest, parent=parent)
        if not hasattr(command, "resolve_command"):
            return context.params
        remaining = list(getattr(context, "_protected_args", None) or getattr(context, "protected_args", [])) + list(context.args)
        name, command, rest = command.resolve_command(context, remaining)
        parent = context


def _pending_command(words: list[str]) -> str | None:
    """The name of a command the docs use whose feature module is not in this checkout yet, else None.

    cli.py registers ``headstart.commands.<name>`` when that module exists; a page may document a
    feature that lands in the same release but not in this commit.
    """
    import importlib.util

    from headstart.cli import COMMAND_MODULES

    pending = {module.rsplit(".", 1)[1] for module in COMMAND_MODULES if importlib.util.find_spec(module) is None}
    return words[1] if len(words) > 1 and words[1] in pending else None


def test_every_headstart_command_parses():
    """Every command in the docs, slow ones included, names real commands and options with valid values."""
    problems = []
    for block in ALL_BLOCKS:
        if block.language != "bash" or block.skip is not None:
            continue
        for words in bash_commands(block.code):
            if _pending_command(words):
                continue
            try:
                _parse(words)
            except Exception as exc:  # click's usage errors: no such option, bad value, missing argument
                problems.append(f"{block.name}: `{' '.join(words)}`: {type(exc).__name__}: {exc}")
    assert not problems, "\n".join(problems)


# ----- running the blocks -----------------------------------------------------------------------


@dataclass
class PageState:
    cwd: Path
    namespace: dict


@pytest.fixture(scope="session")
def docs_cache(tmp_path_factory) -> Path:
    """One feature store for every page, so each page reuses the features another extracted."""
    return tmp_path_factory.mktemp("docs-store")


@pytest.fixture(scope="session")
def page_states(tmp_path_factory) -> dict[Path, PageState]:
    return {}


def _state(page_states: dict[Path, PageState], page: Path, tmp_path_factory) -> PageState:
    if page not in page_states:
        cwd = tmp_path_factory.mktemp("docs-" + page.stem.lower())
        page_states[page] = PageState(cwd=cwd, namespace={"__name__": "__main__"})
    return page_states[page]


def _params():
    for block in ALL_BLOCKS:
        marks = []
        if block.skip is not None:
            marks.append(pytest.mark.skip(reason=f"skip-test: {block.skip}"))
        if block.slow:
            marks += [pytest.mark.slow, pytest.mark.docs]
        yield pytest.param(block, id=f"{block.name}-{block.language}", marks=marks)


@pytest.mark.parametrize("block", list(_params()))
def test_doc_block(block: Block, page_states, docs_cache, tmp_path_factory, monkeypatch):
    state = _state(page_states, block.page, tmp_path_factory)
    monkeypatch.setenv("HEADSTART_CACHE", str(docs_cache))
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    monkeypatch.chdir(state.cwd)
    if block.language == "python":
        try:
            exec(compile(block.code, block.name, "exec"), state.namespace)  # noqa: S102 - the docs are our own
        except ModuleNotFoundError as exc:
            import importlib.util

            if exc.name and exc.name.startswith("headstart.") and importlib.util.find_spec(exc.name) is None:
                pytest.skip(f"{exc.name} is not in this checkout yet")
            raise
        return
    env = {**os.environ, "COLUMNS": "120"}
    pending = {_pending_command(words) for words in bash_commands(block.code)} - {None}
    if pending:
        pytest.skip(f"headstart {', '.join(sorted(pending))} is not in this checkout yet (no headstart.commands module)")
    for words in bash_commands(block.code):
        result = subprocess.run(
            [str(HEADSTART), *words[1:]], cwd=state.cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        )
        assert result.returncode == 0, f"{block.name}: `{' '.join(words)}` exited {result.returncode}\n{result.stderr[-3000:]}"
        if "--json" in words:
            try:
                json.loads(result.stdout)
            except ValueError as exc:
                pytest.fail(f"{block.name}: `{' '.join(words)}` printed invalid JSON on stdout ({exc}): {result.stdout[:500]!r}")
