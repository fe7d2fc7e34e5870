#!/usr/bin/env python3
"""Boot bench: `cella run` against the floor, QEMU with cella's exact command line.

Usage: bench/boot.py [--runs N] [--traced N] [--guest-steps N]
       (bench/boot.sh builds the floor init first)

Prints, for N interleaved iterations (default 10, after one untimed warm-up of each):
  - wall time of `cella run -- true` (spawn of the CLI until it exited);
  - time to first output byte of `cella run -- echo x` (spawn until the first stdout byte
    arrives on a pipe; time.monotonic), and that command's total wall time;
  - the floor: QEMU started with the argv the runtime logged for an ephemeral `cella run`
    (the qemu backend logs it at info level, "qemu command line", in the sandbox's
    logs/runtime.log), booting the same kernel and a copy of the same initramfs whose /init is
    replaced by bench/floor-init.c (prints the guest uptime, then reboot(RB_POWER_OFF)).
Then --traced N more ephemeral runs (default 3) whose runtime log and console are read while
they run, for a breakdown of where the time goes. The traced runs poll for the log files every
2 ms and are not part of the headline figures. Last, --guest-steps N boots (default 3) of
cella's argv with `cella.debug` appended and the real initramfs, up to the agent's Hello, for
the agent's own step timestamps (guest uptime) on the console.

What differs in the floor from cella's argv (printed in full): -initrd (the copy), the console
file path (a temp file) and the port socket path (a listener this script binds and accepts on,
as the sandbox process does; nothing is ever sent on it). The floor has no sandbox process,
no database, no agent handshake and no command.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

FLOOR_INIT = os.environ.get("FLOOR_INIT", "/tmp/cella-floor-init")
TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def parse_ts(line):
    """Seconds since the epoch of a tracing line's UTC timestamp."""
    import datetime
    m = TS.match(line)
    if not m:
        return None
    dt = datetime.datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def argv_from_log(text):
    for line in text.splitlines():
        if "qemu command line" in line and "argv=" in line:
            # Rust's Debug of a Vec<&OsStr>: a JSON-compatible list for these ASCII paths.
            return json.loads(line.split("argv=", 1)[1])
    return None


def probe_keep_argv(home):
    """The argv logged by `cella run --name benchprobe --keep -- true` (persistent layout)."""
    r = home.cella("run", "--name", "benchprobe", "--keep", "--", "true")
    if r.returncode != 0:
        raise SystemExit(f"probe run failed ({r.returncode}): {r.stderr.decode()}")
    with open(os.path.join(home.path, "sandboxes/benchprobe/logs/runtime.log")) as f:
        text = f.read()
    home.cella("rm", "benchprobe")
    argv = argv_from_log(text)
    if argv is None:
        raise SystemExit("no `qemu command line` in the probe's runtime.log: is the binary "
                         "built with the argv log line in backend/qemu.rs?")
    return argv


def traced_run(home, name, cmd):
    """An ephemeral `cella run --name NAME -- CMD` whose runtime log and console are opened
    while it runs (they are deleted when it ends) and read afterwards."""
    logs = os.path.join(home.path, "sandboxes", name, "logs")
    want = {"runtime.log": None, "console.log": None}
    t_wall = time.time()
    t0 = time.monotonic()
    p = subprocess.Popen([bl.CELLA, "run", "--name", name, "--", *cmd], env=home.env(),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    while p.poll() is None and not all(want.values()):
        for f in want:
            if want[f] is None:
                try:
                    want[f] = open(os.path.join(logs, f))
                except FileNotFoundError:
                    pass
        time.sleep(0.002)
    err = p.communicate()[1]
    wall = time.monotonic() - t0
    texts = {f: (h.read() if h else "") for f, h in want.items()}
    for h in want.values():
        if h:
            h.close()
    out = {"rc": p.returncode, "wall": wall, "stderr": err.decode(errors="replace"),
           "argv": argv_from_log(texts["runtime.log"])}
    marks = {}
    for line in texts["runtime.log"].splitlines():
        for key, needle in (("qemu", "qemu command line"), ("up", "guest is up"),
                            ("stopped", "sandbox stopped")):
            if needle in line:
                marks[key] = parse_ts(line) - t_wall
        m = re.search(r"boot_ms=(\d+)", line)
        if m:
            out["boot_ms"] = int(m.group(1)) / 1000
    out["marks"] = marks
    m = re.findall(r"\[\s*([\d.]+)\] reboot: Power down", texts["console.log"])
    out["guest_poweroff_uptime"] = float(m[-1]) if m else None
    return out


def build_floor_initramfs(initramfs, workdir):
    """A copy of cella's initramfs with a second cpio archive appended holding /init."""
    stage = os.path.join(workdir, "stage")
    os.makedirs(stage)
    shutil.copy(FLOOR_INIT, os.path.join(stage, "init"))
    os.chmod(os.path.join(stage, "init"), 0o755)
    extra = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=stage,
                           input=b"init\n", capture_output=True, check=True).stdout
    out = os.path.join(workdir, "floor-initramfs.cpio")
    with open(out, "wb") as dst, open(initramfs, "rb") as src:
        shutil.copyfileobj(src, dst)
        dst.write(extra)
    return out


def floor_argv(argv, initrd, console, port):
    """cella's argv with the initramfs, console file and port socket replaced."""
    args = list(argv)
    args[args.index("-initrd") + 1] = initrd
    for i, a in enumerate(args):
        if a.startswith("file,id=con0,path="):
            args[i] = f"file,id=con0,path={console},append=on"
        elif a.startswith("socket,id=agent,path="):
            args[i] = f"socket,id=agent,path={port}"
    return args


def floor_once(args, workdir, console, port):
    """One floor boot: wall time from spawn until QEMU exited, and the guest's uptime at init."""
    for path in (console, port):
        if os.path.exists(path):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(port)
    listener.listen(1)
    held = []

    def accept():
        try:
            held.append(listener.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    with open(os.path.join(workdir, "floor-vmm.log"), "wb") as log:
        t0 = time.monotonic()
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "hung"
        wall = time.monotonic() - t0
    listener.close()
    for s in held:
        s.close()
    with open(console, errors="replace") as f:
        text = f.read()
    m = re.search(r"floor-init uptime ([\d.]+)", text)
    return {"rc": rc, "wall": wall, "uptime": float(m.group(1)) if m else None}


def guest_steps(argv, workdir):
    """cella's ephemeral argv with `cella.debug` added and the real initramfs: the agent logs
    each boot step with its uptime on the console. Runs until the agent's first frame (its
    Hello) arrives on the port, then kills QEMU. Returns {step: guest uptime in s}."""
    args = list(argv)
    args[args.index("-append") + 1] += " cella.debug"
    console = os.path.join(workdir, "steps-console.log")
    port = os.path.join(workdir, "s.sock")
    args = floor_argv(args, argv[argv.index("-initrd") + 1], console, port)
    for path in (console, port):
        if os.path.exists(path):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(port)
    listener.listen(1)
    listener.settimeout(30)
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        conn = listener.accept()[0]
        conn.settimeout(120)
        conn.recv(1)
        hello = time.monotonic() - t0
        conn.close()
    finally:
        p.kill()
        p.wait()
        listener.close()
    with open(console, errors="replace") as f:
        text = f.read()
    steps = {"host: QEMU spawn -> first agent byte (wall, debug console on)": hello}
    for key, needle in (("agent starts (/init)", "booting:"),
                        ("kernel modules loaded", "modules:"),
                        ("root mounted (9p)", "root mounted"),
                        ("overlay assembled", "overlay root assembled"),
                        ("switched root", "switched root"),
                        ("serving on the port (Hello next)", "serving on")):
        m = re.search(r"\[\s*([\d.]+)\] cella-agent \w+: [^\n]*" + re.escape(needle), text)
        if m:
            steps[key] = float(m.group(1))
    return steps


def cella_true(home):
    t0 = time.monotonic()
    r = subprocess.run([bl.CELLA, "run", "--", "true"], env=home.env(),
                       stdin=subprocess.DEVNULL, capture_output=True)
    return {"rc": r.returncode, "wall": time.monotonic() - t0, "stderr": r.stderr}


def cella_echo(home):
    t0 = time.monotonic()
    p = subprocess.Popen([bl.CELLA, "run", "--", "echo", "x"], env=home.env(),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    first = os.read(p.stdout.fileno(), 1)
    t1 = time.monotonic()
    rest = p.stdout.read()
    rc = p.wait()
    t2 = time.monotonic()
    return {"rc": rc, "ttfb": t1 - t0, "wall": t2 - t0, "out": first + rest}


def row(label, values, unit="ms"):
    med, lo, p90, hi = bl.summary(values)
    return f"| {label} | {bl.ms(med)} | {bl.ms(lo)} | {bl.ms(p90)} | {bl.ms(hi)} | {len(values)} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--traced", type=int, default=3)
    ap.add_argument("--guest-steps", type=int, default=3)
    opts = ap.parse_args()
    bl.check_prereqs()
    if not os.access(FLOOR_INIT, os.X_OK):
        raise SystemExit(f"{FLOOR_INIT} missing: run bench/boot.sh (it builds it)")

    bl.header("boot bench (bench/boot.py)")
    loads = [bl.loadavg()]
    with bl.TempHome() as home:
        work = os.path.join(home.path, "floor")
        os.makedirs(work)
        keep_argv = probe_keep_argv(home)
        # The ephemeral layout (what `cella run -- true` boots): read from a traced run.
        first = traced_run(home, "benchtrace0", ["true"])
        if first["rc"] != 0 or not first["argv"]:
            raise SystemExit(f"traced run failed: rc={first['rc']} {first['stderr']}")
        argv = first["argv"]
        accel = re.search(r"accel=(\w+)", " ".join(argv)).group(1)
        extra = [a.replace(home.path, "$CELLA_HOME") for a in keep_argv
                 if a not in argv and "benchprobe" not in a or a.startswith("file=")]
        print(f"accelerator: {accel}")
        print("cella's QEMU argv (ephemeral `cella run`, from runtime.log):")
        print("  " + " ".join(json.dumps(a) if " " in a else a for a in argv))
        print(f"the persistent layout (--keep probe) adds: {' '.join(extra)} "
              "and cella.upper=blk:/dev/vda")

        initrd = argv[argv.index("-initrd") + 1]
        floor_initrd = build_floor_initramfs(initrd, work)
        console = os.path.join(work, "console.log")
        port = os.path.join(work, "p.sock")
        fargs = floor_argv(argv, floor_initrd, console, port)

        # Warm-up, untimed.
        floor_once(fargs, work, console, port)
        cella_true(home)
        cella_echo(home)

        floors, trues, ttfbs, echo_walls, uptimes = [], [], [], [], []
        failures = []
        for i in range(opts.runs):
            f = floor_once(fargs, work, console, port)
            if f["rc"] == 0:
                floors.append(f["wall"])
            else:
                failures.append(("floor", f))
            if f["uptime"] is not None:
                uptimes.append(f["uptime"])
            t = cella_true(home)
            if t["rc"] == 0:
                trues.append(t["wall"])
            else:
                failures.append(("true", t))
            e = cella_echo(home)
            if e["rc"] == 0 and e["out"] == b"x\n":
                ttfbs.append(e["ttfb"])
                echo_walls.append(e["wall"])
            else:
                failures.append(("echo", e))
            loads.append(bl.loadavg())

        traced = [first] + [traced_run(home, f"benchtrace{i}", ["true"])
                            for i in range(1, opts.traced)]
        steps = [guest_steps(argv, work) for _ in range(opts.guest_steps)]
        loads.append(bl.loadavg())

    print()
    print("| measurement | median ms | min ms | p90 ms | max ms | n |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("floor: QEMU, cella's argv, /init powers off at once", floors))
    print(row("`cella run -- true` wall", trues))
    print(row("`cella run -- echo x` first stdout byte", ttfbs))
    print(row("`cella run -- echo x` wall", echo_walls))
    if uptimes:
        print(row("floor: guest uptime at /init (guest clock)", uptimes))
    if floors and trues:
        mf, mt, me = (statistics.median(x) for x in (floors, trues, ttfbs or [float("nan")]))
        print()
        print(f"ratio `cella run -- true` / floor (medians): {mt / mf:.2f}x "
              f"(+{bl.ms(mt - mf)} ms); first byte / floor: {me / mf:.2f}x")
    if failures:
        print(f"\nFAILURES: {len(failures)}")
        for what, r in failures:
            print(f"  {what}: rc={r['rc']} {r.get('stderr', b'')[-300:]!r}")

    ok = [t for t in traced if t["rc"] == 0 and {"qemu", "up", "stopped"} <= t["marks"].keys()]
    if ok:
        med = lambda f: statistics.median(f(t) for t in ok)  # noqa: E731
        print()
        print(f"breakdown, median of {len(ok)} traced ephemeral `cella run -- true` "
              "(host clock; runtime.log timestamps):")
        print("| phase | ms |")
        print("|---|---:|")
        print(f"| CLI spawn -> QEMU spawned (CLI, sandbox process, DB, launch) | "
              f"{bl.ms(med(lambda t: t['marks']['qemu']))} |")
        print(f"| QEMU spawned -> agent Hello (guest boot, module load, mounts) | "
              f"{bl.ms(med(lambda t: t['marks']['up'] - t['marks']['qemu']))} |")
        print(f"| runtime boot_ms (boot() start -> Hello, as logged) | "
              f"{bl.ms(med(lambda t: t['boot_ms']))} |")
        print(f"| Hello -> sandbox stopped (exec `true`, Goodbye, power-off, QEMU exit) | "
              f"{bl.ms(med(lambda t: t['marks']['stopped'] - t['marks']['up']))} |")
        print(f"| sandbox stopped -> CLI exited (teardown, ephemeral cleanup) | "
              f"{bl.ms(med(lambda t: t['wall'] - t['marks']['stopped']))} |")
        print(f"| total wall | {bl.ms(med(lambda t: t['wall']))} |")
        ups = [t["guest_poweroff_uptime"] for t in ok if t["guest_poweroff_uptime"]]
        if ups:
            print(f"| guest uptime at `reboot: Power down` (guest clock) | "
                  f"{bl.ms(statistics.median(ups))} |")
    if steps:
        print()
        print(f"guest boot steps, median of {len(steps)} boots of cella's argv plus `cella.debug` "
              "(agent console timestamps, guest uptime):")
        print("| step | s |")
        print("|---|---:|")
        for key in steps[0]:
            vals = [st[key] for st in steps if key in st]
            print(f"| {key} | {statistics.median(vals):.2f} |")
    print()
    print(f"load average: start {loads[0]}; during {loads[len(loads) // 2]}; end {loads[-1]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
