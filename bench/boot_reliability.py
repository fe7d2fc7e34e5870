#!/usr/bin/env python3
"""Boot reliability: N ephemeral `cella run -- true` in a row, each with a hard timeout.

Usage: bench/boot-reliability.sh [N] [--timeout SECS]     (N defaults to 200, timeout to 60 s)

A run that has not exited when the timeout expires is counted as hung: its sandbox logs are
copied to the report directory, it gets SIGTERM (which cella forwards and then tears down),
and SIGKILL 10 s later if still there. A run that exits non-zero is counted as failed, with the
end of its stderr. Prints N, ok, hung, failed and the median/p90/max wall time of the runs
that completed (ok or failed), with the load average sampled after every run.
Each run is `cella run --name relNNNN -- true` so a hung one's logs can be found.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def one(home, name, timeout, keep_dir):
    t0 = time.monotonic()
    p = subprocess.Popen([bl.CELLA, "run", "--name", name, "--", "true"], env=home.env(),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        err = p.communicate(timeout=timeout)[1]
        return ("ok" if p.returncode == 0 else "failed", time.monotonic() - t0, p.returncode,
                err.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        logs = os.path.join(home.path, "sandboxes", name, "logs")
        shutil.copytree(logs, os.path.join(keep_dir, name), dirs_exist_ok=True)
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        return ("hung", time.monotonic() - t0, p.returncode, f"logs in {keep_dir}/{name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", type=int, nargs="?", default=200)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--report-dir", default="/tmp/cella-boot-reliability")
    opts = ap.parse_args()
    bl.check_prereqs()
    os.makedirs(opts.report_dir, exist_ok=True)
    bl.header(f"boot reliability (bench/boot-reliability.sh {opts.n})")
    print(f"hard timeout per run: {opts.timeout:.0f} s", flush=True)
    results, loads = [], []
    started = time.monotonic()
    with bl.TempHome() as home:
        for i in range(opts.n):
            r = one(home, f"rel{i:04d}", opts.timeout, opts.report_dir)
            results.append(r)
            loads.append(os.getloadavg()[0])
            if r[0] != "ok":
                print(f"run {i}: {r[0]} rc={r[2]} after {r[1]:.1f} s: {r[3].strip()[-400:]}",
                      flush=True)
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{opts.n} done, load {bl.loadavg()}", file=sys.stderr,
                      flush=True)
        leftover = sorted(os.listdir(os.path.join(home.path, "sandboxes"))) \
            if os.path.isdir(os.path.join(home.path, "sandboxes")) else []
    count = {k: sum(1 for r in results if r[0] == k) for k in ("ok", "hung", "failed")}
    walls = [r[1] for r in results if r[0] != "hung"]
    print()
    print("| N | ok | hung | failed | median s | p90 s | max s | 1-min load min/median/max |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    med, _lo, p90, hi = bl.summary(walls) if walls else (float("nan"),) * 4
    print(f"| {opts.n} | {count['ok']} | {count['hung']} | {count['failed']} | {med:.2f} | "
          f"{p90:.2f} | {hi:.2f} | {min(loads):.2f} / {statistics.median(loads):.2f} / "
          f"{max(loads):.2f} |")
    print()
    print(f"total {time.monotonic() - started:.0f} s; sandbox dirs left behind: "
          f"{len(leftover)} {leftover[:5]}")
    print(f"load average at end: {bl.loadavg()}")
    return 0 if count["ok"] == opts.n else 1


if __name__ == "__main__":
    sys.exit(main())
