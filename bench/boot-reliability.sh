#!/usr/bin/env bash
# Boots N guests in a row with `cella run -- true` (default 200), each with a hard timeout,
# and reports ok / hung / failed and the wall-time distribution. See bench/boot_reliability.py.
#
# Usage: bench/boot-reliability.sh [N] [--timeout SECS] [--report-dir DIR]
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/boot_reliability.py" "$@"
