#!/usr/bin/env bash
# The GPU measurement (issue 16) in one command, under 5 minutes on one H100:
#   1. the GPU tests: pytest -m gpu
#   2. benchmarks/gpu_extract.py --models resnet50             (eager)
#   3. benchmarks/gpu_extract.py --models resnet50 --compile
# Logs and numbers go to the folder given as $1, else $OUT (the device tool's), else benchmarks/_gpu_run:
# env.txt (card, driver, torch), pytest.log, eager.json/.log, compile.json/.log, section.md.
# Each step has its own time limit, and a step that fails does not stop the next one.
# Afterwards, on any machine with the folder: .venv/bin/python benchmarks/gpu_section.py --from FOLDER --write
#
#   bash benchmarks/gpu_run.sh [FOLDER]
#   GPU_RUN_DRY=1 bash benchmarks/gpu_run.sh /tmp/dry    # on a CPU: every step, tiny sizes, --device cpu
set -u
cd "$(dirname "$0")/.."
folder=${1:-${OUT:-benchmarks/_gpu_run}}
mkdir -p "$folder"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HEADSTART_OFFLINE=1
corpus=${GPU_RUN_CORPUS:-/tmp/headstart-gpu-corpus}
if [ -n "${GPU_RUN_DRY:-}" ]; then
    sizes=(--device cpu --n 16 --recipe-n 8 --batch-size 8 --steps 1 --workers 1)
    models=${GPU_RUN_MODELS:-resnet18}
    limits=(300 600 1500)
    section=(--dry-run-ok)
else
    section=()
    sizes=()
    models=${GPU_RUN_MODELS:-resnet50}
    limits=(55 95 140)
fi
started=$SECONDS

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "python: $PYTHON"
    "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda); print('card', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
    echo "cpu cores: $(nproc)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not available"
} > "$folder/env.txt" 2>&1
cat "$folder/env.txt"

echo "== 1/3 pytest -m gpu (limit ${limits[0]} s)"
timeout "${limits[0]}" "$PYTHON" -m pytest -q -m gpu tests -p no:cacheprovider > "$folder/pytest.log" 2>&1
echo "pytest exit status: $?" >> "$folder/pytest.log"
tail -n 5 "$folder/pytest.log"

echo "== 2/3 gpu_extract.py --models $models (limit ${limits[1]} s, at $((SECONDS - started)) s)"
timeout "${limits[1]}" "$PYTHON" benchmarks/gpu_extract.py --models "$models" --corpus "$corpus" "${sizes[@]}" \
    --json "$folder/eager.json" > "$folder/eager.log" 2>&1
echo "exit status: $?" >> "$folder/eager.log"
cat "$folder/eager.log"

echo "== 3/3 gpu_extract.py --models $models --compile (limit ${limits[2]} s, at $((SECONDS - started)) s)"
timeout "${limits[2]}" "$PYTHON" benchmarks/gpu_extract.py --models "$models" --corpus "$corpus" --compile "${sizes[@]}" \
    --json "$folder/compile.json" > "$folder/compile.log" 2>&1
echo "exit status: $?" >> "$folder/compile.log"
cat "$folder/compile.log"

"$PYTHON" benchmarks/gpu_section.py --from "$folder" "${section[@]}" > "$folder/section.md" 2>&1
echo "== done in $((SECONDS - started)) s; the section for RESULTS.md:"
cat "$folder/section.md"
