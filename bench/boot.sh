#!/usr/bin/env bash
# Boot bench: `cella run -- true` wall time and time to first output byte, next to the floor
# (QEMU with cella's exact command line booting the same kernel and initramfs to an /init that
# powers off at once). Prints markdown tables; see bench/boot.py and docs/benchmarks.md.
#
# Usage: bench/boot.sh [--runs N] [--traced N] [--guest-steps N]
# Uses target/release/cella (or $CELLA_BIN) and the assets scripts/setup installed in ~/.cella
# (or $CELLA_ASSETS), in a fresh temporary CELLA_HOME.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export FLOOR_INIT="${FLOOR_INIT:-/tmp/cella-floor-init}"
gcc -static -O2 -o "$FLOOR_INIT" "$here/floor-init.c"
exec python3 "$here/boot.py" "$@"
