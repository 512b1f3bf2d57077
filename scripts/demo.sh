#!/usr/bin/env bash
# README command (a): set everything up, then run the main job end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
