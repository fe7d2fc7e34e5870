"""Shared helpers for the cella benchmark scripts (bench/*.py).

Each bench runs the freshly built `target/release/cella` (or $CELLA_BIN) against a fresh
temporary CELLA_HOME whose kernel/ and rootfs/default are symlinks into the asset home
($CELLA_ASSETS, default ~/.cella, where scripts/setup installed them), the same layout as
cella-testkit's TestHome. Nothing here asserts on time: the scripts print tables.
"""

import datetime
import math
import os
import platform
import shutil
import statistics
import subprocess
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.environ.get("CELLA_ASSETS", os.path.expanduser("~/.cella"))
CELLA = os.environ.get("CELLA_BIN", os.path.join(REPO, "target/release/cella"))


def check_prereqs():
    if not os.access(CELLA, os.X_OK):
        raise SystemExit(f"{CELLA} not found: run `cargo build --release -p cella-cli` first")
    if not os.path.isfile(os.path.join(ASSETS, "kernel/current.json")):
        raise SystemExit(f"no guest kernel under {ASSETS}/kernel: run scripts/setup first")
    if not os.path.isdir(os.path.join(ASSETS, "rootfs/default")):
        raise SystemExit(f"no default root under {ASSETS}/rootfs: run scripts/setup first")


class TempHome:
    """A fresh CELLA_HOME sharing the guest assets; removed on exit."""

    def __init__(self):
        # Short prefix under /tmp: sandbox sockets live in the home, and Unix socket paths are
        # limited to 108 bytes.
        self.path = tempfile.mkdtemp(prefix="cb", dir="/tmp")
        os.symlink(os.path.join(ASSETS, "kernel"), os.path.join(self.path, "kernel"))
        os.mkdir(os.path.join(self.path, "rootfs"))
        os.symlink(os.path.join(ASSETS, "rootfs/default"),
                   os.path.join(self.path, "rootfs/default"))

    def env(self):
        env = dict(os.environ)
        env["CELLA_HOME"] = self.path
        env.pop("CELLA_LOG", None)
        return env

    def cella(self, *args, **kw):
        """Runs `cella ARGS` to completion, output captured."""
        return subprocess.run([CELLA, *args], env=self.env(), capture_output=True, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(values):
    """(median, min, p90, max) of a non-empty list."""
    return statistics.median(values), min(values), percentile(values, 90), max(values)


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    qemu = qemu.stdout.splitlines()[0] if qemu.returncode == 0 else "qemu not found"
    kvm = "present" if os.path.exists("/dev/kvm") else "absent"
    if os.path.exists("/sys/module/kvm_pvm"):
        kvm += " (kvm_pvm: paravirtual, unusable for guests, so TCG)"
    return (f"{os.cpu_count()} cores ({cpu}), host kernel {platform.release()}, {qemu}, "
            f"/dev/kvm {kvm}")


def header(title):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {title}")
    print(f"date: {now}")
    print(f"machine: {machine()}")
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    print(f"cella: {CELLA} (built from {rev or '?'} plus uncommitted edits, if any)")
    print(f"assets: {ASSETS}")
    print(f"load average at start: {loadavg()}")


def ms(seconds):
    return f"{seconds * 1000:.0f}"
