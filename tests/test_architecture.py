"""The layer contract in pyproject.toml (docs/architecture.md) holds, and it would catch a break.

import-linter reads every import in src/headstart, function-level ones included. The contract's
layers say which package may import which; `acyclic_siblings` forbids circles between the modules of
any one package. These tests run it on the code as it is, then on copies of the code with one
upward import or one circle written in, which it must reject.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))"


def lint(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter with ``root``'s pyproject.toml on ``root/src``."""
    pytest.importorskip("importlinter")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [sys.executable, "-c", LINT, str(root / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_the_layer_contract_holds():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml to break on purpose."""
    shutil.copytree(ROOT / "src" / "headstart", tmp_path / "src" / "headstart", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


@pytest.mark.parametrize(
    ("module", "code", "expected"),
    [
        # The old finetune/loop.py -> evaluate.report shape, turned round: a pure metric reaching into
        # training, inside a function, is still an upward import.
        ("evaluate/metrics.py", "def _late():\n    from headstart.finetune import finetune\n    return finetune",
         "headstart.evaluate is not allowed to import headstart.finetune"),
        # The training engine must not know the task adapters that sit on it.
        ("engine/__init__.py", "def _late():\n    import headstart.tasks\n    return headstart.tasks",
         "headstart.engine is not allowed to import headstart.tasks"),
        # A library layer reaching the orchestration above it (today's probe -> report shape, upside down).
        ("features/extract.py", "def _late():\n    from headstart.workflows import probe\n    return probe",
         "headstart.features is not allowed to import headstart.workflows"),
    ],
)
def test_an_upward_import_breaks_the_contract(copy: Path, module: str, code: str, expected: str):
    append(copy / "src" / "headstart" / module, code)
    result = lint(copy)
    assert result.returncode == 1, result.stdout
    assert expected in result.stdout


def test_a_circle_inside_a_package_breaks_the_contract(copy: Path):
    # data.scenes' loaders import scene.py; scene.py importing a loader back closes a circle.
    append(copy / "src" / "headstart" / "data" / "scenes" / "scene.py",
           "def _late():\n    from headstart.data.scenes.coco import load_coco\n    return load_coco")
    result = lint(copy)
    assert result.returncode == 1, result.stdout
    assert "No cycles are allowed in headstart.data.scenes" in result.stdout


ENTRY_POINTS = {
    "rank_backbones": ("headstart.workflows.rank", "rank_backbones"),
    "fine_tune": ("headstart.finetune", "finetune"),
    "train_detector": ("headstart.tasks", "train_detector"),
    "train_segmenter": ("headstart.tasks", "train_segmenter"),
    "evaluate_predictions": ("headstart.evaluate", "evaluate"),
    "load_bundle": ("headstart.bundles", "load_bundle"),
}


def test_top_level_entry_points_survive_importing_every_subpackage():
    """``import headstart.finetune`` sets ``headstart.finetune``; the entry points' names are never a subpackage's."""
    script = (
        "import importlib, pkgutil, headstart\n"
        "before = {name: getattr(headstart, name) for name in %r}\n"
        "for info in pkgutil.walk_packages(headstart.__path__, 'headstart.'):\n"
        "    importlib.import_module(info.name)\n"
        "for name, (module, attribute) in %r.items():\n"
        "    value = getattr(headstart, name)\n"
        "    assert callable(value) and value is before[name], name\n"
        "    assert value is getattr(importlib.import_module(module), attribute), name\n"
        "print('ok')\n"
    ) % (list(ENTRY_POINTS), ENTRY_POINTS)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_top_level_import_stays_light():
    """``import headstart`` loads no torch: the entry points import their packages on first use."""
    script = "import sys, headstart; headstart.__version__; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.stdout.strip() == "False", result.stderr[-2000:]
