#!/usr/bin/env bash
# README command (b): set everything up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# setup.sh builds the C extension roxxel._cviews: its tests must run, not skip.
export ROXXEL_REQUIRE_CVIEWS=1
exec .venv/bin/python -m pytest -q "$@"
