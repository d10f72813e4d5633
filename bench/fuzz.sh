#!/usr/bin/env bash
# The fuzz tests, longer: N generated inputs per API (default 20,000; the suite runs 1,000).
#   bash bench/fuzz.sh [N]
# Same tests as the suite's, derandomised: a failure reproduces with the same N.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHENET_FUZZ_EXAMPLES="${1:-20000}" .venv/bin/python -m pytest -q \
    tests/edge_agent/test_fuzz.py tests/cloud_server/test_fuzz.py \
    tests/cachenet/core/test_fuzz_manifest.py tests/cachenet/fleet/test_fuzz_store.py
