"""Write the GPU section of benchmarks/RESULTS.md: the state of the GPU measurement, and its numbers once it has run.

    .venv/bin/python benchmarks/gpu_section.py                          # prints the section (no GPU run recorded)
    .venv/bin/python benchmarks/gpu_section.py --from DIR --write        # from the folder benchmarks/gpu_run.sh filled

Without ``--from`` the section says that nothing has run on a GPU yet, what is ready, and the command
to run. With ``--from DIR`` (the folder that ``benchmarks/gpu_run.sh`` wrote: ``env.txt``,
``pytest.log``, ``eager.json``, ``compile.json``) it records what ran there: the card and torch
version, the GPU tests' outcome, and for each model the recipe, headstart end to end (eager and
``--compile``), the stage rates and the compute-only ceiling measured in the same run, against the
goals of issue 16. A step that did not finish is named as not run. It runs on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

HEADING = "## GPU extraction (`benchmarks/gpu_section.py`)"
COMMAND = "bash benchmarks/gpu_run.sh"


def pending() -> str:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    return "\n".join([
        HEADING,
        "",
        f"State on {today}: **nothing has run on a GPU yet.** No GPU machine has been lent to this project's sessions "
        "so far, so there are no GPU numbers: not the end-to-end images/s of ResNet-50 from JPEG files to committed "
        "features (goals: at least 6,000 eager and 10,000 with `--compile` on one H100), not the compute-only ceiling, "
        "and not the GPU tests (`pytest -m gpu`: GPU features against CPU features within bf16 tolerance, and the "
        "batched resize on the GPU against the CPU), which skip with that reason on a CPU. No machine line: nothing "
        "ran, so there are no cores, card or load average to record.",
        "",
        "What is ready, and checked on the CPU as far as a CPU can: the tensor decode path (its CPU decode and both "
        "resizes; nvJPEG and bf16 only run on a GPU), the batched `roi_align` resize that is its default on a GPU (its "
        "agreement with the per-image resize: the section on the batched resize), and the measurement, each of whose "
        "steps runs on the CPU as a dry run (`GPU_RUN_DRY=1`). One command runs the GPU tests, then "
        "`benchmarks/gpu_extract.py --models resnet50`, then the same with `--compile` (time limits of 55, 95 and 140 s: "
        "under 5 minutes on one H100), and keeps the logs and numbers, with the torch version and the card's name, in "
        "`$OUT` or the folder given:",
        "",
        "```",
        COMMAND + " [folder]",
        ".venv/bin/python benchmarks/gpu_section.py --from [folder] --write   # then, on any machine: this section",
        "```",
    ])


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pytest_outcome(folder: Path) -> str:
    try:
        lines = [line.strip() for line in (folder / "pytest.log").read_text().splitlines() if line.strip()]
    except OSError:
        return "did not run (no pytest.log)"
    summary = next((line for line in reversed(lines) if " in " in line and any(w in line for w in ("passed", "failed", "skipped", "error", "deselected"))), None)
    status = next((line for line in reversed(lines) if line.startswith("pytest exit status:")), "")
    return f"`{summary.strip('= ')}`" + (f" ({status})" if status else "") if summary else f"no summary line ({status or 'no exit status'})"


def measured(folder: Path, allow_cpu: bool = False) -> str:
    eager, compiled = _read_json(folder / "eager.json"), _read_json(folder / "compile.json")
    runs = [run for run in (eager, compiled) if run]
    if not runs:
        return pending() + f"\n\nA run left `{folder}` without `eager.json` or `compile.json`: see its logs."
    info = runs[0]["machine"]
    dry = any(run["machine"].get("device") != "cuda" for run in runs)
    if dry and not allow_cpu:
        raise SystemExit(f"{folder} holds a CPU dry run (--device cpu), not a GPU measurement: nothing to record.")
    lines = [
        HEADING,
        "",
        *(["**CPU DRY RUN: these numbers check the scripts, they measure nothing.**", ""] if dry else []),
        f"Ran on {info['date']}: {info['card']}, torch {info['torch']}, torchvision {info['torchvision']}"
        f"{', CUDA ' + info['cuda'] if info.get('cuda') else ''}, {info['cpu_cores']} CPU cores, by `{COMMAND}`.",
        f"GPU tests (`pytest -m gpu`): {_pytest_outcome(folder)}.",
        "",
        "| model | run | images | batch | recipe img/s | headstart img/s | goal | compute-only ceiling img/s | of ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    goals = runs[0].get("goals", {})
    verdicts = []
    for label, run in (("eager", eager), ("--compile", compiled)):
        if not run:
            lines.append(f"| resnet50 | {label} | | | | did not run or did not finish | | | |")
            continue
        for r in run["results"]:
            if label == "eager" or "headstart_compiled" not in r:
                rate, top, goal, kind = r["headstart"], r["ceiling"], goals.get("eager"), "eager"
            else:
                rate, top, goal, kind = r["headstart_compiled"], r["ceiling_compiled"], goals.get("compile"), "compiled"
            goal = goal if r["model"] == "resnet50" else None  # the goals are ResNet-50's
            lines.append(f"| {r['model']} | {label} | {r['images']:,} | {r['batch_size']} | {r['recipe']:,.0f} | **{rate:,.0f}** | "
                         f"{f'{goal:,}' if goal else '-'} | {top:,.0f} ({kind}) | {rate / top:.0%} |")
            if goal and r["model"] == "resnet50":
                verdicts.append(f"{label}: {rate:,.0f} img/s, goal {goal:,}: {'met' if rate >= goal else 'not met'}")
    lines.append("")
    if verdicts:
        lines.append("Goals (ResNet-50, 224 px, JPEG files to features committed in the store): " + "; ".join(verdicts) + ".")
    for run in runs:
        for r in run["results"]:
            stages = ", ".join(f"{name} {value:,.0f}" for name, value in r["stages"].items())
            lines.append(f"- {r['model']} ({'--compile run' if run['results'][0].get('compile') else 'eager run'}): stages alone, "
                         f"images/s on the main thread from bytes in memory: {stages}; end-to-end resize `{r['resize']}`, "
                         f"{r['workers']} read workers.")
            cap = min([("decode", r["stages"]["decode"]), (f"decode + {r['resize']}", r["stages"][f"decode + {r['resize']}"]),
                       ("ceiling", r.get("ceiling_compiled", r["ceiling"]))], key=lambda pair: pair[1])
            lines.append(f"  The slowest stage measured alone: {cap[0]} ({cap[1]:,.0f} img/s).")
    lines += [
        "",
        f"Raw logs and numbers: the folder `{COMMAND}` wrote (`env.txt`, `pytest.log`, `eager.json`, `compile.json`).",
        f"Rerun: `{COMMAND}`, then `.venv/bin/python benchmarks/gpu_section.py --from [folder] --write`.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="folder", type=Path, default=None, help="the folder benchmarks/gpu_run.sh wrote")
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    parser.add_argument("--dry-run-ok", action="store_true", help="render a CPU dry run's folder too (never with --write)")
    args = parser.parse_args()
    if args.write and args.dry_run_ok:
        raise SystemExit("--dry-run-ok renders a dry run for checking; it cannot be written into RESULTS.md.")
    block = measured(args.folder, args.dry_run_ok) if args.folder else pending()
    print(block)
    if args.write:
        from _results import write_section

        write_section(block)


if __name__ == "__main__":
    main()
