#!/usr/bin/env bash
# Create ./.venv (once) and install roxxel in it, editable, with its test extra.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    py=${PYTHON:-$(command -v python3.11 || command -v python3)}
    "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch first and pinned: anything unpinned would pull the newest CUDA build (gigabytes).
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,progress,torch,jax]"
