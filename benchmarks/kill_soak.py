"""Kill soak: SIGKILL feature extraction and fine-tuning at random moments, resume, compare bit for bit.

Both workloads run in child processes through the test helpers ``tests/_kill_extract.py`` (extracts
a .npz into a feature store; ``--delay`` sleeps after each batch so kills land mid-shard) and
``tests/_ft_run.py`` (``finetune()`` with ``out=`` and ``resume=``). This script wraps each helper
so that the child marks when the work (the ``extract()`` / ``finetune()`` call) starts and when it
returns; the markers only classify where a kill landed and change nothing in the work.

For each workload:

1. an uninterrupted reference run, timed from launch: the start and end of its work window;
2. the soak: launch, sleep a delay drawn by a seeded RNG uniformly inside the reference's work
   window, SIGKILL the child's process group, inspect what the kill left, relaunch (``--resume``
   once a checkpoint exists) ... until ``--kills`` kills have been sent. A relaunch that finishes
   before its kill moment completes a *round*; the next kill starts a new round on a fresh store or
   run folder, and the last round is finished without a kill. Every completed round is compared
   with the reference;
3. the checks:

   * the store holds no torn entry: after every kill and at the end of every round, every shard
     record's ``.safetensors`` must hash to the record's sha256 and every committed entry
     (``meta.json``) must have all its shards intact and contiguous; an uncommitted entry must not
     be served (``FeatureStore.load`` returns None). Leftover temp files are counted (never served);
   * the features are byte-identical to the reference's (sha256 of the loaded arrays' bytes and of
     every shard file);
   * the fine-tuned weights are bit-identical: sha256 of the bundle's ``backbone.safetensors`` and
     ``head.safetensors``, and ``torch.equal`` over the model and EMA state dicts in
     ``checkpoints/last.pt`` and ``best.pt``; after every kill, every checkpoint present must load.

Workload (small, so the soak takes about 5-10 minutes on 2 busy cores): 384 seeded 32x32 RGB images
in 4 classes (a bright bar whose height gives the class), backbone ``timm:test_efficientnet@random``
at 32 px; extraction with shards of 16 rows and batches of 8 (24 shards); fine-tuning with the
``gradual`` strategy (each epoch unfreezes more), EMA 0.9, 10 epochs, batch 8, a checkpoint per epoch.

Usage (from the repository root; needs no network):
    .venv/bin/python benchmarks/kill_soak.py                  # prints the table
    .venv/bin/python benchmarks/kill_soak.py --write          # also writes "## Kill soak" in benchmarks/RESULTS.md
    .venv/bin/python benchmarks/kill_soak.py --seed 1 --kills 5 --keep /tmp/soak   # quick look, keep the files
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
SECTION = "## Kill soak (`benchmarks/kill_soak.py`)"

N_IMAGES = 384
SHARD_SIZE = 16
BATCH_EXTRACT = 8
DELAY = 0.05  # seconds of sleep after each extraction batch (kills land mid-shard)
FT_ARGS = ["--strategy", "gradual", "--epochs", "10", "--ema-decay", "0.9", "--batch-size", "8"]


# ----- the child: run a test helper with start/finish markers --------------------------------------


def child(kind: str, markers: Path, helper_args: list[str]) -> None:
    """Run ``tests/_kill_extract.py`` or ``tests/_ft_run.py`` with the work call wrapped by markers."""

    def wrap(function):
        def marked(*args, **kwargs):
            (markers / "started").write_text(repr(time.time()))
            result = function(*args, **kwargs)
            (markers / "finished").write_text(repr(time.time()))
            return result

        return marked

    if kind == "extract":
        import headstart.features

        headstart.features.extract = wrap(headstart.features.extract)
        script = TESTS / "_kill_extract.py"
    else:
        import headstart.finetune

        headstart.finetune.finetune = wrap(headstart.finetune.finetune)
        script = TESTS / "_ft_run.py"
    sys.argv = [str(script), *helper_args]
    runpy.run_path(str(script), run_name="__main__")


# ----- the parent -----------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One launch of a child: how it ended and what it left."""

    delay: float | None  # the kill moment (seconds after launch), None for a run left to finish
    killed: bool
    where: str  # "before", "mid", "after" (kills); "done" (ran to the end)
    seconds: float
    progress: str = ""
    round: int = 0
    wrap_up: bool = False  # a mid-work kill after the last shard / epoch was saved (commit, bundle, report)


@dataclass
class Soak:
    name: str
    attempts: list[Attempt] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)  # per completed round: its checks
    torn: int = 0  # torn shards/records/entries, or unreadable checkpoints, seen at any inspection
    served_bad: int = 0  # torn or uncommitted entries that the store would serve
    leftovers: set = field(default_factory=set)  # temp files left by kills (never served)
    stale: int = 0  # fine-tuning: kills that left best.pt holding another epoch than last.pt's kept epoch
    targeted: list[dict] = field(default_factory=list)  # fine-tuning: kills placed by _ft_run.py --kill-after-epoch
    torn_notes: list[str] = field(default_factory=list)

    @property
    def kills(self) -> list[Attempt]:
        return [a for a in self.attempts if a.killed]

    def count(self, where: str) -> int:
        return sum(1 for a in self.kills if a.where == where)


def child_env(cache: Path) -> dict[str, str]:
    import headstart

    env = dict(os.environ)
    src = str(Path(headstart.__file__).resolve().parent.parent)  # the headstart this script imports
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HEADSTART_CACHE"] = str(cache)  # never the user's store
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def launch(kind: str, helper_args: list[str], work: Path, delay: float | None, env: dict[str, str]) -> tuple[Attempt, str]:
    """Start a child; SIGKILL its process group ``delay`` seconds after launch (unless it ended first)."""
    markers = work / "markers"
    shutil.rmtree(markers, ignore_errors=True)
    markers.mkdir(parents=True)
    log = work / "child.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(markers), "--", *helper_args]
    with open(log, "wb") as handle:
        start = time.monotonic()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        killed = False
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the child's own session: it and its DataLoader workers
            killed = True
            process.wait()
        seconds = time.monotonic() - start
    output = log.read_text(errors="replace")
    if killed and process.returncode == 0:
        killed = False  # it exited between the timeout and the signal: a finished run, not a kill
    if not killed and process.returncode != 0:
        raise SystemExit(f"{kind} child failed (exit {process.returncode}):\n{output[-3000:]}")
    if killed and process.returncode != -signal.SIGKILL:
        raise SystemExit(f"{kind} child ended with {process.returncode} around its kill:\n{output[-3000:]}")
    started, finished = (markers / "started").exists(), (markers / "finished").exists()
    where = "done" if not killed else "after" if finished else "mid" if started else "before"
    return Attempt(delay, killed, where, seconds), output


def reference_window(kind: str, helper_args: list[str], work: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Run uninterrupted; return (work start, work end, total) in seconds after launch."""
    work.mkdir(parents=True, exist_ok=True)
    launched = time.time()
    attempt, _ = launch(kind, helper_args, work, None, env)
    markers = work / "markers"
    start = float((markers / "started").read_text()) - launched
    end = float((markers / "finished").read_text()) - launched
    return start, end, attempt.seconds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- extraction -----------------------------------------------------------------------------------


def inspect_store(root: Path, soak: Soak, context: str) -> tuple[int, bool]:
    """Check every shard record and commit record under ``root``; return (intact shards, committed)."""
    intact, committed = 0, False
    features = root / "features"
    for entry in sorted(features.iterdir()) if features.is_dir() else []:
        if not entry.is_dir():
            continue
        soak.leftovers.update(str(p) for p in entry.iterdir() if ".tmp" in p.name)
        good: dict[int, dict] = {}
        for record_path in sorted(entry.glob("shard-*.json")):
            try:
                record = json.loads(record_path.read_bytes())
                payload = (entry / record_path.name.replace(".json", ".safetensors")).read_bytes()
                ok = hashlib.sha256(payload).hexdigest() == record["sha256"] and record["index"] == int(record_path.name[6:11])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                ok, record = False, {"error": repr(exc)}
            if ok:
                good[record["index"]] = record
            else:
                soak.torn += 1
                soak.torn_notes.append(f"{context}: torn shard {entry.name[:12]}/{record_path.name}: {record}")
        intact += len(good)
        meta_path = entry / "meta.json"
        if not meta_path.exists():
            continue
        try:
            meta = json.loads(meta_path.read_bytes())
            n_shards, rows = meta["n_shards"], meta["shape"][0]
            starts = [good[i]["start"] for i in range(n_shards)]
            counts = [good[i]["rows"] for i in range(n_shards)]
            whole = starts == [sum(counts[:i]) for i in range(n_shards)] and sum(counts) == rows
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            whole = False
        if whole:
            committed = True
        else:
            soak.torn += 1
            soak.torn_notes.append(f"{context}: committed entry {entry.name[:12]} is not whole")
    return intact, committed


def uncommitted_served(root: Path) -> int:
    """Entries without a commit record that FeatureStore.load would still serve (must be 0)."""
    from headstart.features import FeatureStore

    store, served = FeatureStore(root), 0
    for entry in (root / "features").iterdir():
        if entry.is_dir() and not (entry / "meta.json").exists() and store.load(entry.name) is not None:
            served += 1
    return served


def store_digest(root: Path, key: str) -> dict:
    from headstart.features import FeatureStore

    loaded = FeatureStore(root).load(key)
    if loaded is None:
        return {"served": False}
    _, features, valid, errors = loaded
    entry = root / "features" / key
    return {
        "served": True,
        "arrays": hashlib.sha256(features.tobytes() + valid.tobytes()).hexdigest(),
        "shape": list(features.shape),
        "shards": [sha256(p) for p in sorted(entry.glob("shard-*.safetensors"))],
        "errors": errors,
    }


def soak_extract(data: Path, tmp: Path, kills: int, rng, env: dict[str, str]) -> tuple[Soak, dict]:
    def args(cache: Path, report: Path) -> list[str]:
        return [str(data), "--cache", str(cache), "--report", str(report), "--shard-size", str(SHARD_SIZE),
                "--batch-size", str(BATCH_EXTRACT), "--delay", str(DELAY)]

    soak = Soak("extraction")
    ref_dir = tmp / "extract-ref"
    window = reference_window("extract", args(ref_dir / "cache", ref_dir / "report.json"), ref_dir, env)
    key = json.loads((ref_dir / "report.json").read_text())["key"]
    reference = store_digest(ref_dir / "cache", key)
    print(f"extraction reference: work from {window[0]:.1f} s to {window[1]:.1f} s after launch "
          f"({window[2]:.1f} s in all), {len(reference['shards'])} shards", flush=True)

    round_no, sent = 0, 0
    while sent < kills or round_no == 0:
        round_no += 1
        work = tmp / f"extract-{round_no}"
        cache, report = work / "cache", work / "report.json"
        round_done = False
        while not round_done:
            delay = float(rng.uniform(window[0], window[1])) if sent < kills else None
            attempt, _ = launch("extract", args(cache, report), work, delay, env)
            intact, committed = inspect_store(cache, soak, f"round {round_no}, after launch {len(soak.attempts) + 1}")
            attempt.progress = f"{intact}/{len(reference['shards'])} shards{', committed' if committed else ''}"
            attempt.wrap_up = committed
            attempt.round = round_no
            soak.attempts.append(attempt)
            sent += attempt.killed
            round_done = not attempt.killed
            print(f"  extraction round {round_no}: {describe(attempt)}", flush=True)
        soak.served_bad += uncommitted_served(cache)
        digest = store_digest(cache, json.loads(report.read_text())["key"])
        soak.rounds.append({"identical": digest == reference, "digest": digest})
        if digest != reference:
            print(f"  round {round_no}: features DIFFER from the reference: {digest} vs {reference}", flush=True)
    return soak, {"window": window, "shards": len(reference["shards"]), "shape": reference["shape"]}


# ----- fine-tuning ------------------------------------------------------------------------------------


def checkpoint_epoch(out: Path, soak: Soak, context: str) -> int | None:
    """The epoch count in ``last.pt`` (None when absent); every checkpoint present must load."""
    from headstart.engine.checkpoint import CheckpointError, load_checkpoint

    epoch, loops = None, {}
    for name in ("last.pt", "best.pt"):
        path = out / "checkpoints" / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)  # what --resume reads; raises CheckpointError for a damaged file
        except CheckpointError as exc:
            soak.torn += 1
            soak.torn_notes.append(f"{context}: {name} does not load ({exc})")
            continue
        loops[name] = state["loop"]
        if name == "last.pt":
            epoch = state["loop"]["epoch"]
    # best.pt must hold the epoch that last.pt's loop state says is kept (a resume restores best.pt's weights)
    if "last.pt" in loops and loops["last.pt"]["best_epoch"] != loops.get("best.pt", {}).get("best_epoch"):
        soak.stale += 1
        soak.torn_notes.append(
            f"{context}: best.pt holds epoch {loops.get('best.pt', {}).get('best_epoch')}, "
            f"last.pt (after epoch {loops['last.pt']['epoch'] - 1}) says the kept epoch is {loops['last.pt']['best_epoch']}"
        )
    bundle = out / "bundle" / "bundle.json"
    if bundle.exists():  # bundle.json is written last: the backbone file beside it must be the one it names
        try:
            recorded = json.loads(bundle.read_bytes())["finetuned_backbone_sha256"]
            whole = recorded == sha256(out / "bundle" / "backbone.safetensors") and (out / "bundle" / "head.safetensors").exists()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            whole, recorded = False, repr(exc)
        if not whole:
            soak.torn += 1
            soak.torn_notes.append(f"{context}: bundle.json ({recorded}) does not match the files beside it")
    if out.is_dir():
        soak.leftovers.update(str(p) for p in out.rglob("*") if ".tmp" in p.name)
    return epoch


def weights_digest(out: Path) -> dict:
    import torch

    digest = {name: sha256(out / "bundle" / name) for name in ("backbone.safetensors", "head.safetensors")}
    for name in ("last.pt", "best.pt"):
        state = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)
        digest[name] = {part: state[part] for part in ("model", "ema")}
    return digest


def same_weights(a: dict, b: dict) -> tuple[bool, list[str]]:
    import torch

    differences = [n for n in ("backbone.safetensors", "head.safetensors") if a[n] != b[n]]
    for name in ("last.pt", "best.pt"):
        for part in ("model", "ema"):
            x, y = a[name][part], b[name][part]
            if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
                differences.append(f"{name}:{part}")
    return not differences, differences


def soak_finetune(data: Path, tmp: Path, kills: int, rng, env: dict[str, str]) -> tuple[Soak, dict]:
    soak = Soak("fine-tuning")
    ref_dir = tmp / "ft-ref"
    window = reference_window("finetune", [str(data), str(ref_dir / "out"), *FT_ARGS], ref_dir, env)
    reference = weights_digest(ref_dir / "out")
    epochs = int(FT_ARGS[FT_ARGS.index("--epochs") + 1])
    print(f"fine-tuning reference: work from {window[0]:.1f} s to {window[1]:.1f} s after launch ({window[2]:.1f} s in all)", flush=True)

    round_no, sent = 0, 0
    while sent < kills or round_no == 0:
        round_no += 1
        work = tmp / f"ft-{round_no}"
        out = work / "out"
        round_done = False
        while not round_done:
            resume = ["--resume"] if (out / "checkpoints" / "last.pt").exists() else []
            delay = float(rng.uniform(window[0], window[1])) if sent < kills else None
            attempt, _ = launch("finetune", [str(data), str(out), *FT_ARGS, *resume], work, delay, env)
            epoch = checkpoint_epoch(out, soak, f"round {round_no}, after launch {len(soak.attempts) + 1}")
            bundle = (out / "bundle" / "bundle.json").exists()
            attempt.progress = f"{'resumed, ' if resume else ''}{epoch or 0}/{epochs} epochs{', bundle' if bundle else ''}"
            attempt.wrap_up = epoch == epochs
            attempt.round = round_no
            soak.attempts.append(attempt)
            sent += attempt.killed
            round_done = not attempt.killed
            print(f"  fine-tuning round {round_no}: {describe(attempt)}", flush=True)
        identical, differences = same_weights(weights_digest(out), reference)
        soak.rounds.append({"identical": identical, "differences": differences + ([kept_epochs(out)] if not identical else [])})
        if not identical:
            print(f"  round {round_no}: weights DIFFER from the reference: {soak.rounds[-1]['differences']}", flush=True)

    # Targeted kills: _ft_run.py --kill-after-epoch K sends SIGKILL right after last.pt of epoch K is
    # written, before best.pt (of the same epoch) is; then resume. K in the middle and K = the last epoch.
    for k in (epochs // 2 - 1, epochs - 1):
        out = tmp / f"ft-targeted-{k}" / "out"
        run = subprocess.run([sys.executable, str(TESTS / "_ft_run.py"), str(data), str(out), *FT_ARGS, "--kill-after-epoch", str(k)],
                             capture_output=True, text=True, env=env, cwd=ROOT, check=False)
        if run.returncode != -signal.SIGKILL:
            raise SystemExit(f"--kill-after-epoch {k} ended with {run.returncode}:\n{run.stderr[-3000:]}")
        probe = Soak("targeted")
        checkpoint_epoch(out, probe, f"targeted kill after epoch {k}")
        launch("finetune", [str(data), str(out), *FT_ARGS, "--resume"], out.parent, None, env)
        identical, differences = same_weights(weights_digest(out), reference)
        soak.targeted.append({"after_epoch": k, "stale": probe.stale > 0, "torn": probe.torn, "identical": identical,
                              "differences": differences + ([kept_epochs(out)] if not identical else [])})
        print(f"  fine-tuning targeted kill after last.pt of epoch {k}: {'identical' if identical else 'DIFFERS'} {differences}", flush=True)
    return soak, {"window": window}


def kept_epochs(out: Path) -> str:
    """Which epoch each checkpoint and metrics.json call kept, for a round whose weights differ."""
    import torch

    loops = {n: torch.load(out / "checkpoints" / n, map_location="cpu", weights_only=True)["loop"] for n in ("last.pt", "best.pt")}
    metrics = json.loads((out / "metrics.json").read_text())
    return (f"metrics.json and last.pt keep epoch {metrics.get('best_epoch')} / {loops['last.pt']['best_epoch']}, "
            f"best.pt (whose weights the bundle holds) is from epoch {loops['best.pt']['epoch'] - 1}")


# ----- report -----------------------------------------------------------------------------------------


def describe(attempt: Attempt) -> str:
    if attempt.killed:
        return f"killed at {attempt.delay:.2f} s ({attempt.where} work{', wrap-up' if attempt.where == 'mid' and attempt.wrap_up else ''}) -> {attempt.progress}"
    return f"ran to the end in {attempt.seconds:.1f} s -> {attempt.progress}"


def machine() -> tuple[str, int]:
    from _results import cores, cpu_model

    return cpu_model(), cores()


def table(soaks: list[Soak]) -> str:
    def cell(s: Soak, row: str) -> str:
        identical = sum(r["identical"] for r in s.rounds)
        return {
            "kills (SIGKILL sent)": str(len(s.kills)),
            "kills that landed mid-work": str(s.count("mid")),
            "- of which before the last shard / epoch was saved": str(sum(1 for a in s.kills if a.where == "mid" and not a.wrap_up)),
            "- of which after the last shard / epoch was saved (commit, bundle, report)": str(sum(1 for a in s.kills if a.where == "mid" and a.wrap_up)),
            "kills before the work started (startup)": str(s.count("before")),
            "kills after the work had finished (exit)": str(s.count("after")),
            "resumes (launches after a kill)": str(len(s.attempts) - len(s.rounds)),
            "rounds (fresh store / run folder, resumed to the end)": str(len(s.rounds)),
            "torn entries found": str(s.torn),
            "kills that left best.pt holding another epoch than last.pt's kept epoch": str(s.stale) if s.name == "fine-tuning" else "n/a",
            "torn or uncommitted entries that would be served": str(s.served_bad) if s.name == "extraction" else "n/a",
            "temp files left by kills (never served)": str(len(s.leftovers)),
            "identical to the uninterrupted run": f"{'yes' if identical == len(s.rounds) else 'NO'} ({identical}/{len(s.rounds)} rounds)",
            "targeted kills (`_ft_run.py --kill-after-epoch K`, between last.pt and best.pt): identical after resume": "; ".join(
                f"K={t['after_epoch']}: {'yes' if t['identical'] else 'NO'}" for t in s.targeted) or "n/a",
        }[row]

    rows = ["kills (SIGKILL sent)", "kills that landed mid-work", "- of which before the last shard / epoch was saved",
            "- of which after the last shard / epoch was saved (commit, bundle, report)", "kills before the work started (startup)",
            "kills after the work had finished (exit)", "resumes (launches after a kill)",
            "rounds (fresh store / run folder, resumed to the end)", "torn entries found",
            "torn or uncommitted entries that would be served", "temp files left by kills (never served)",
            "kills that left best.pt holding another epoch than last.pt's kept epoch", "identical to the uninterrupted run",
            "targeted kills (`_ft_run.py --kill-after-epoch K`, between last.pt and best.pt): identical after resume"]
    lines = ["| | " + " | ".join(s.name for s in soaks) + " |", "|---|" + "---:|" * len(soaks)]
    lines += [f"| {row} | " + " | ".join(cell(s, row) for s in soaks) + " |" for row in rows]
    return "\n".join(lines)


def make_data(path: Path, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), N_IMAGES // 4)
    images = rng.integers(0, 60, size=(N_IMAGES, 32, 32, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 7 * int(label)
        images[i, top : top + 6, 4:28] = 220
    np.savez(path, x=images, y=labels)


def command_line() -> str:
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    for i, arg in enumerate(argv):  # paths relative to the repository root, as they would be typed there
        if os.path.isabs(arg) and arg.startswith(str(ROOT) + os.sep):
            argv[i] = os.path.relpath(arg, ROOT)
    prefix = ""
    if os.environ.get("PYTHONPATH"):
        value = os.environ["PYTHONPATH"].replace(str(ROOT), "$PWD")
        prefix = f"PYTHONPATH={value} "
    return prefix + " ".join(shlex.quote(a) for a in argv)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), sys.argv[5:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments and the data (default 0)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per workload (default 20)")
    parser.add_argument("--only", choices=["extract", "finetune"], default=None, help="soak one workload only")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--write", action="store_true", help="write the section in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import numpy as np

    rng = np.random.default_rng(args.seed)
    cpu, cores = machine()
    from _results import load

    load_before = load()
    began, clock = datetime.datetime.now().astimezone(), time.monotonic()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty: give a new folder (a soak must start from nothing)")
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="kill-soak-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        data = tmp / "data.npz"
        make_data(data, args.seed)
        env = child_env(tmp / "headstart-cache")
        soaks, notes = [], {}
        if args.only in (None, "extract"):
            soak, notes["extraction"] = soak_extract(data, tmp, args.kills, rng, env)
            soaks.append(soak)
        if args.only in (None, "finetune"):
            soak, notes["fine-tuning"] = soak_finetune(data, tmp, args.kills, rng, env)
            soaks.append(soak)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    minutes = (time.monotonic() - clock) / 60
    load_after = load()

    import torch

    details = []
    if "extraction" in notes:
        n = notes["extraction"]
        details.append(
            f"- extraction: `tests/_kill_extract.py`, {N_IMAGES} images 32x32, {n['shards']} shards of {SHARD_SIZE} rows, "
            f"batch {BATCH_EXTRACT}, {DELAY} s sleep after each batch; features {n['shape'][0]}x{n['shape'][1]} float32; "
            f"reference work window {n['window'][0]:.1f}-{n['window'][1]:.1f} s after launch"
        )
    if "fine-tuning" in notes:
        n = notes["fine-tuning"]
        details.append(
            f"- fine-tuning: `tests/_ft_run.py {' '.join(FT_ARGS)}` (1 thread, CPU, image size 32, seed 0), "
            f"relaunched with `--resume` once `checkpoints/last.pt` exists; reference work window {n['window'][0]:.1f}-{n['window'][1]:.1f} s after launch"
        )
    for s in soaks:
        for note in s.torn_notes[:8]:
            details.append(f"- {s.name}: {note}")
        for number, result in enumerate(s.rounds, 1):
            if not result["identical"]:
                kills = [describe(a) for a in s.attempts if a.round == number]
                details.append(f"- {s.name}, round {number}: not identical: {result.get('differences') or result.get('digest')}; its launches: {kills}")
        for t in s.targeted:
            details.append(f"- targeted kill after last.pt of epoch {t['after_epoch']}: best.pt left behind last.pt: {t['stale']}; "
                           f"after resume {'identical' if t['identical'] else 'not identical: ' + str(t['differences'])}")
    body = "\n".join(
        [
            SECTION,
            "",
            f"`{command_line()}`",
            "",
            "Each workload is killed with SIGKILL (the child's whole process group) at moments drawn by a seeded RNG",
            "uniformly inside the uninterrupted run's work window (from launch to the start and to the end of its",
            "`extract()` / `finetune()` call), relaunched until done, and compared with the uninterrupted run.",
            "A relaunch that ends before its kill moment completes a round; the next kill starts a fresh round.",
            "",
            table(soaks),
            "",
            "- torn entries: for extraction, a shard record whose `.safetensors` does not hash to it, or a committed entry",
            "  (`meta.json`) without all its shards intact and contiguous, checked after every kill and at the end of each",
            "  round; for fine-tuning, a checkpoint (`last.pt`, `best.pt`) that does not load, or a `bundle.json` whose",
            "  `finetuned_backbone_sha256` is not the sha256 of the `backbone.safetensors` beside it, checked after every kill",
            "- identical: extraction, sha256 of the served arrays' bytes and of every shard file; fine-tuning, sha256 of the",
            "  bundle's `backbone.safetensors` and `head.safetensors`, and `torch.equal` over every tensor of the model and",
            "  EMA state dicts in `checkpoints/last.pt` and `best.pt`",
            *details,
            f"- machine: {cpu}, {cores} cores, torch {torch.__version__}, Python {platform.python_version()}",
            f"- load average (1/5/15 min) before: {load_before}; after: {load_after}",
            f"- date: {began:%Y-%m-%d %H:%M %Z}; seed {args.seed}; {minutes:.1f} min in all",
        ]
    )
    print()
    print(body)
    if args.write:
        from _results import write_section

        write_section(body)
        print(f"\nwrote {SECTION} in benchmarks/RESULTS.md")
    bad = any(
        s.torn or s.served_bad or s.stale or not all(r["identical"] for r in s.rounds) or not all(t["identical"] for t in s.targeted)
        for s in soaks
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
