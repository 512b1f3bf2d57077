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
# Every install below keeps the pins of scripts/constraints.txt.
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
# torch first and pinned: anything unpinned would pull the newest CUDA build (gigabytes).
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,progress,torch,jax]"
# MosaicML's library writes the MDS files of the import tests. Without --no-deps it pins
# numpy<2.2 and pulls transformers, matplotlib, azure, oci and paramiko; what its writer
# needs is in the test extra. Its version is the one the tests were checked with.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "mosaicml-streaming==0.13.0"
# The released Roxxel 0.3.0 (the format and API users have data in), unpacked where the
# compatibility tests run it in subprocesses: never installed into .venv, since its
# package is also named roxxel. Fetched once, pinned by hash, unpacked under a temporary
# name and renamed into place, so an interrupted run leaves nothing half-made.
compat=.venv/compat/roxxel-0.3.0
if [ ! -f "$compat/roxxel.py" ]; then
    tmp=$(mktemp -d .venv/compat-tmp.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    echo "roxxel==0.3.0 --hash=sha256:66f3fa5d3cb549b5779596209e5e215efc5139465f3984343f76f7aaa5cb0af7" >"$tmp/req.txt"
    .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --require-hashes -r "$tmp/req.txt" -d "$tmp/wheel"
    .venv/bin/python -m zipfile -e "$tmp"/wheel/roxxel-0.3.0-py3-none-any.whl "$tmp/unpacked"
    mkdir -p .venv/compat
    rm -rf "$compat"
    mv "$tmp/unpacked" "$compat"
    rm -rf "$tmp"
    trap - EXIT
fi
# Last: PyPI's torchvision (pulled by litdata) is built against CUDA torch and does not
# load next to the CPU torch; the tests stub the two names `import streaming` needs
# (tests/peer_stubs.py).
.venv/bin/python -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
