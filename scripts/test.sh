#!/usr/bin/env bash
# README command (b): set everything up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# setup.sh builds the C extension roxxel._cviews where a C compiler is at hand: there,
# its tests must run, not skip (without one, roxxel and the suite run the pure-Python twin).
if command -v "${CC:-cc}" >/dev/null 2>&1; then
    export ROXXEL_REQUIRE_CVIEWS=1
fi
exec .venv/bin/python -m pytest -q "$@"
