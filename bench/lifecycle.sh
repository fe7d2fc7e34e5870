#!/usr/bin/env bash
# Lifecycle bench (issue 4): create + start to Running, stop, and `cella ls` with 1,000
# sandbox rows. See bench/lifecycle.py. The startup-maintenance figure is a criterion bench:
#   cargo bench -p cella-runtime --bench maintenance
#
# Usage: bench/lifecycle.sh [--starts N] [--rows N] [--ls-runs N]
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/lifecycle.py" "$@"
