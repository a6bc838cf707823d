"""Time headstart's text feature extraction beside ``SentenceTransformer.encode``, on the same sentences.

The sentences: the first ``--n`` (default 2,000) of ``builtin:vader-tweets`` (VADER ground truth,
installed by ``make setup``). Model: all-MiniLM-L6-v2, the packaged offline copy (sha256-checked),
on the CPU.

* sentence-transformers: ``SentenceTransformer(folder).encode(sentences, batch_size=B)``; it sorts by
  character length, tokenises each batch and pads it.
* headstart: ``extract("st:sentence-transformers/all-MiniLM-L6-v2", dataset, batch_size=B,
  store=FeatureStore(fresh tmp))``: tokenise once, sort by token count, pad per batch, commit the
  features to the store. A fresh store each run, so nothing is read back; the cached re-read is timed
  separately.

Both run in one process, alternating ``--repeats`` times after a warm-up. Each run records wall time
and the process's CPU time (all threads); the fastest run of each counts. On a shared, loaded
machine wall time mostly measures the other jobs, so the CPU-time ratio is the one to trust there
(the script prints both, and the load average). It checks that the embeddings agree (largest
absolute difference, goal <= 1e-5) and prints a Markdown table, the ratios (goal >= 1.0x) and the
machine.

Usage:
    .venv/bin/python benchmarks/text_extract.py
    .venv/bin/python benchmarks/text_extract.py --n 500 --repeats 1      # quick look
    .venv/bin/python benchmarks/text_extract.py --write                  # also record it in RESULTS.md ("## Text")
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch
from _results import write_subsection

BACKBONE = "st:sentence-transformers/all-MiniLM-L6-v2"
SECTION = "## Text"
TITLE = "Extraction speed vs SentenceTransformer.encode (benchmarks/text_extract.py)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="Sentences (from builtin:vader-tweets).")
    parser.add_argument("--batch-size", type=int, default=32, help="Batch size of both sides (sentence-transformers' default is 32).")
    parser.add_argument("--repeats", type=int, default=2, help="Alternating timed runs of each side; the fastest counts.")
    parser.add_argument("--write", action="store_true", help="Replace this benchmark's part of '## Text' in benchmarks/RESULTS.md.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HEADSTART_OFFLINE", "1")

    from sentence_transformers import SentenceTransformer

    from headstart.backbones import load_backbone
    from headstart.backbones.folders import packaged_folder
    from headstart.data.builtin import load_builtin
    from headstart.features import FeatureStore, extract

    data = load_builtin("builtin:vader-tweets")
    data = data.subset(np.arange(min(args.n, len(data))))
    sentences = list(data.items)
    folder = packaged_folder(BACKBONE)
    reference = SentenceTransformer(str(folder), device="cpu")
    backbone = load_backbone(BACKBONE)

    def run_st() -> np.ndarray:
        return reference.encode(sentences, batch_size=args.batch_size, convert_to_numpy=True)

    def run_headstart() -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return extract(backbone, data, batch_size=args.batch_size, device="cpu", store=FeatureStore(tmp), quiet=True).X

    # warm-up: first calls allocate and initialise kernels
    reference.encode(sentences[:64], batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        extract(backbone, data.subset(np.arange(64)), batch_size=args.batch_size, device="cpu", store=FeatureStore(tmp), quiet=True)

    times: dict[str, list[float]] = {"sentence-transformers": [], "headstart": []}
    cpu: dict[str, list[float]] = {"sentence-transformers": [], "headstart": []}
    outputs: dict[str, np.ndarray] = {}
    runs = (("sentence-transformers", run_st), ("headstart", run_headstart))
    for repeat in range(args.repeats):
        for name, run in runs if repeat % 2 == 0 else runs[::-1]:
            started, cpu_started = time.perf_counter(), time.process_time()
            outputs[name] = run()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
            print(f"{name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU, load {os.getloadavg()[0]:.1f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(tmp)
        extract(backbone, data, batch_size=args.batch_size, device="cpu", store=store, quiet=True)
        started = time.perf_counter()
        cached = extract(backbone, data, batch_size=args.batch_size, device="cpu", store=store, quiet=True)
        cached_seconds = time.perf_counter() - started
        assert cached.hit

    difference = float(np.abs(outputs["headstart"] - outputs["sentence-transformers"]).max())
    best = {name: min(values) for name, values in times.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    ratio = best["sentence-transformers"] / best["headstart"]
    cpu_ratio = best_cpu["sentence-transformers"] / best_cpu["headstart"]
    n = len(sentences)
    load = os.getloadavg()
    lines = [
        f"| pipeline | wall, best of {args.repeats} (s) | sentences/s (wall) | CPU, best of {args.repeats} (s) | sentences per CPU-s |",
        "|---|---|---|---|---|",
    ]
    for name in ("sentence-transformers", "headstart"):
        label = f"{name} `{'encode' if name != 'headstart' else 'extract'}` (batch {args.batch_size})"
        lines.append(f"| {label} | {best[name]:.2f} | {n / best[name]:.0f} | {best_cpu[name]:.2f} | {n / best_cpu[name]:.0f} |")
    lines.append(f"| headstart, cached re-read | {cached_seconds:.3f} | {n / cached_seconds:.0f} | | |")
    lines += [
        "",
        f"Speed-up: {ratio:.2f}x by wall time, {cpu_ratio:.2f}x by CPU time (goal >= 1.0x); "
        f"largest |difference| of the embeddings: {difference:.2e} (goal <= 1e-5).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; {n} VADER tweets, all-MiniLM-L6-v2.",
    ]
    print()
    print("\n".join(lines))
    if args.write:
        write_subsection(SECTION, TITLE, "\n".join(lines))




if __name__ == "__main__":
    main()
