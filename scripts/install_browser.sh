#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package) for the report's browser test and the
# docs screenshot. Never fatal: where it cannot install (not root, no apt-get, no network), it prints
# a note and exits 0, and tests/test_report.py skips its browser test with the reason.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: the report's browser test needs Debian's chromium ('apt-get install chromium' as root); it will be skipped."
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
        || echo "note: could not install Debian's chromium; the report's browser test will be skipped."
fi
command -v chromium >/dev/null 2>&1 && echo "chromium ready: $(chromium --version 2>/dev/null)"
exit 0
