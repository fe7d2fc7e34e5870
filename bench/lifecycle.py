#!/usr/bin/env python3
"""Lifecycle bench (issue 4): create + start to Running, and `cella ls` with 1,000 rows.

Usage: bench/lifecycle.sh [--starts N] [--rows N] [--ls-runs N]
  (defaults: 5 create+start cycles, 1,000 rows, 10 timed runs of each ls form)

1. N times, in a fresh CELLA_HOME: `cella create lcN`, then `cella start lcN` (returns once the
   guest answered and the sandbox is Running); wall time of each and of both, then `cella stop`
   (timed too) and `cella rm`.
2. 1,000 `cella create rowNNNN` in a row (one process and one insert each; their mean is
   printed), then `cella ls --all` and `cella ls --all --json`, each timed 10 times (after one
   untimed warm-up), output checked for 1,000 entries.
The third figure of the issue, startup maintenance with the lease held, is a criterion bench:
`cargo bench -p cella-runtime --bench maintenance`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def timed(home, *args):
    t0 = time.monotonic()
    r = home.cella(*args, stdin=subprocess.DEVNULL)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"cella {' '.join(args)} failed ({r.returncode}): "
                         f"{r.stderr.decode(errors='replace')}")
    return dt, r.stdout


def row(label, values):
    med, lo, p90, hi = bl.summary(values)
    return f"| {label} | {bl.ms(med)} | {bl.ms(lo)} | {bl.ms(p90)} | {bl.ms(hi)} | {len(values)} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--ls-runs", type=int, default=10)
    opts = ap.parse_args()
    bl.check_prereqs()
    bl.header("lifecycle bench (bench/lifecycle.py)")
    loads = [bl.loadavg()]

    creates, starts, both, stops = [], [], [], []
    with bl.TempHome() as home:
        for i in range(opts.starts):
            name = f"lc{i}"
            c, _ = timed(home, "create", name)
            s, _ = timed(home, "start", name)
            _, out = timed(home, "ls", "--all", "--json")
            status = {e["name"]: e["status"] for e in json.loads(out)}[name]
            if status != "Running":
                raise SystemExit(f"{name} is {status} after start, not Running")
            st, _ = timed(home, "stop", name)
            timed(home, "rm", name)
            creates.append(c)
            starts.append(s)
            both.append(c + s)
            stops.append(st)
        loads.append(bl.loadavg())

    with bl.TempHome() as home:
        t0 = time.monotonic()
        for i in range(opts.rows):
            timed(home, "create", f"row{i:04d}")
        fill = time.monotonic() - t0
        loads.append(bl.loadavg())
        ls_text, ls_json = [], []
        for args, into in ((("ls", "--all"), ls_text), (("ls", "--all", "--json"), ls_json)):
            _, out = timed(home, *args)
            if args[-1] == "--json":
                n = len(json.loads(out))
            else:
                n = len(out.decode().splitlines()) - 1  # a header line
            if n != opts.rows:
                raise SystemExit(f"cella {' '.join(args)} listed {n} sandboxes, not {opts.rows}")
            for _ in range(opts.ls_runs):
                into.append(timed(home, *args)[0])
        _, out = timed(home, "ls")
        active = len(out.decode().splitlines()) - 1  # a header line
        ls_plain = [timed(home, "ls")[0] for _ in range(opts.ls_runs)]
        db_size = os.path.getsize(os.path.join(home.path, "db/cella.db"))
        loads.append(bl.loadavg())

    print()
    print("| measurement | median ms | min ms | p90 ms | max ms | n |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("`cella create NAME`", creates))
    print(row("`cella start NAME` (returns when Running)", starts))
    print(row("create + start to Running", both))
    print(row("`cella stop NAME` (orderly)", stops))
    print(row(f"`cella ls --all`, {opts.rows} rows", ls_text))
    print(row(f"`cella ls --all --json`, {opts.rows} rows", ls_json))
    print(row(f"`cella ls` (active only: {active} listed), {opts.rows} rows", ls_plain))
    print()
    print(f"filling {opts.rows} rows with `cella create`: {fill:.1f} s "
          f"({fill / opts.rows * 1000:.1f} ms per create); db file {db_size // 1024} KiB")
    print(f"load average: start {loads[0]}; after starts {loads[1]}; after fill {loads[2]}; "
          f"end {loads[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
