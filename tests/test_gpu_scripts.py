"""The GPU measurement's scripts parse and render without a GPU, so the one GPU try does not fail on a typo.

The full CPU dry run of every step (`GPU_RUN_DRY=1 bash benchmarks/gpu_run.sh DIR`, a few minutes on
2 cores) is not run here; these are the cheap checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_gpu_run_script_is_valid_bash_and_names_the_three_steps():
    assert run("bash", "-n", str(BENCH / "gpu_run.sh")).returncode == 0
    text = (BENCH / "gpu_run.sh").read_text()
    assert '"$PYTHON" -m pytest -q -m gpu tests' in text
    assert '"$PYTHON" benchmarks/gpu_extract.py --models "$models" --corpus "$corpus" "${sizes[@]}"' in text
    assert '"$PYTHON" benchmarks/gpu_extract.py --models "$models" --corpus "$corpus" --compile "${sizes[@]}"' in text
    assert 'models=${GPU_RUN_MODELS:-resnet50}' in text


def test_gpu_extract_parses_its_options_and_refuses_bad_ones():
    help_text = run(sys.executable, str(BENCH / "gpu_extract.py"), "--help")
    assert help_text.returncode == 0
    for option in ("--n", "--models", "--compile", "--device", "--corpus", "--json", "--batch-size"):
        assert option in help_text.stdout
    bad = run(sys.executable, str(BENCH / "gpu_extract.py"), "--device", "cpu", "--n", "0")
    assert bad.returncode != 0 and "at least 1" in bad.stderr


def test_gpu_section_pending_state_names_the_command_and_the_scripts_time_limits():
    result = run(sys.executable, str(BENCH / "gpu_section.py"))
    assert result.returncode == 0
    assert result.stdout.startswith("## GPU extraction")
    assert "nothing has run on a GPU yet" in result.stdout and "bash benchmarks/gpu_run.sh" in result.stdout
    limits = re.findall(r"^    limits=\((\d+) (\d+) (\d+)\)$", (BENCH / "gpu_run.sh").read_text(), re.M)[-1]  # the GPU run's, after the dry run's
    assert sum(map(int, limits)) < 300  # the three steps fit in 5 minutes
    assert f"time limits of {limits[0]}, {limits[1]} and {limits[2]} s" in result.stdout


def _result(model: str, headstart: float, compiled: float | None = None) -> dict:
    out = {"model": model, "images": 8192, "batch_size": 1024, "workers": 16, "resize": "roi_align", "compile": compiled is not None,
           "recipe": 500.0, "headstart": headstart, "warmup_s": 2.0, "ceiling": 12000.0,
           "stages": {"decode": 9000.0, "decode + roi_align": 7000.0, "decode + interpolate": 3000.0,
                      "roi_align alone": 40000.0, "interpolate alone": 5000.0}}
    if compiled is not None:
        out.update(headstart_compiled=compiled, compile_and_warmup_s=50.0, ceiling_compiled=15000.0)
    return out


def test_gpu_section_records_a_gpu_run_and_refuses_a_dry_run(tmp_path):
    machine = {"torch": "2.11.0", "torchvision": "0.26.0", "python": "3.12.3", "cpu_cores": "16", "date": "2026-12-06 10:00 UTC",
               "device": "cuda", "card": "NVIDIA H100 80GB HBM3", "cuda": "13.0"}
    goals = {"eager": 6000, "compile": 10000}
    (tmp_path / "eager.json").write_text(json.dumps({"machine": machine, "goals": goals, "results": [_result("resnet50", 6500.0)]}))
    (tmp_path / "compile.json").write_text(json.dumps({"machine": machine, "goals": goals, "results": [_result("resnet50", 6400.0, 9000.0)]}))
    (tmp_path / "pytest.log").write_text("..\n3 passed, 862 deselected in 20.1s\npytest exit status: 0\n")
    text = run(sys.executable, str(BENCH / "gpu_section.py"), "--from", str(tmp_path)).stdout
    assert "NVIDIA H100 80GB HBM3, torch 2.11.0" in text
    assert "3 passed, 862 deselected" in text
    assert "eager: 6,500 img/s, goal 6,000: met" in text and "--compile: 9,000 img/s, goal 10,000: not met" in text
    assert "15,000 (compiled)" in text  # the compiled ceiling measured in the same run

    for name in ("eager.json", "compile.json"):
        data = json.loads((tmp_path / name).read_text())
        data["machine"]["device"] = "cpu"
        (tmp_path / name).write_text(json.dumps(data))
    refused = run(sys.executable, str(BENCH / "gpu_section.py"), "--from", str(tmp_path), "--write")
    assert refused.returncode != 0 and "dry run" in refused.stderr
