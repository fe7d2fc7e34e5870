#!/usr/bin/env python3
"""Boot the real cella-agent in QEMU and speak the host protocol to it.

A smoke test of the guest side, independent of the Rust host runtime: builds a throw-away
initramfs with the given agent as /init (scripts/build-initramfs --output, so current.json is
not touched), boots it on the microvm machine with a read-only virtio-9p root, then over the
virtio-console port: Hello -> HelloAck -> a few ExecStart sessions (output, exit code, stderr,
spawn failure, a write that must land in the overlay, not the host root, the mounts, a tty,
loopback, orphan reaping) -> Shutdown ->
Goodbye -> GoodbyeAck, and checks that QEMU exits (the guest powered off).

Usage: scripts/agent-smoke.py [--agent BIN] [--root DIR] [--kernel-dir DIR] [--debug]
                              [--timeout SECS] [--runs N] [--keep] [--bench CMD]...
                              [--upper-disk]
--bench runs each CMD (a shell command line) three times in the guest after the checks and
prints the wall time of each run as seen by the host (exec round trip included).
--upper-disk boots with a fresh ext4 disk as the writable layer (cella.upper=blk:/dev/vda, the
persistent-sandbox layout) and checks with debugfs that the guest's write landed on it.
Defaults: the static release agent in target/, $CELLA_HOME/rootfs/default, $CELLA_HOME/kernel.
Exit status 0 when every run passed.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLA_HOME = os.environ.get("CELLA_HOME", os.path.expanduser("~/.cella"))

# Wire format, mirrored from crates/cella-protocol/src/frame.rs.
HEADER = struct.Struct("<IBBHQ")  # len, kind, flags, reserved, stream id
KINDS = dict(Hello=1, HelloAck=2, ExecStart=3, ExecStarted=4, Stdin=5, StdinClose=6, Stdout=7,
             Stderr=8, Signal=9, Resize=10, Exited=11, Credit=12, Shutdown=13, Goodbye=14,
             GoodbyeAck=15, Heartbeat=16, Error=17, Welcome=18)
NAMES = {v: k for k, v in KINDS.items()}
PROTOCOL_VERSION = 1


class SmokeError(Exception):
    pass


class Conn:
    """Framed connection to the agent over QEMU's chardev socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def send(self, kind, stream, payload=b""):
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        self.sock.sendall(HEADER.pack(len(payload), KINDS[kind], 0, 0, stream) + payload)

    def recv(self):
        while True:
            if len(self.buf) >= HEADER.size:
                length, kind, _flags, _res, stream = HEADER.unpack_from(self.buf)
                if len(self.buf) >= HEADER.size + length:
                    payload = self.buf[HEADER.size:HEADER.size + length]
                    self.buf = self.buf[HEADER.size + length:]
                    name = NAMES.get(kind)
                    if name is None:
                        raise SmokeError(f"unknown frame kind {kind}")
                    if name not in ("Stdout", "Stderr", "Stdin"):
                        payload = json.loads(payload) if payload else None
                    return name, stream, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SmokeError("agent closed the connection")
            self.buf += chunk

    def expect(self, kind, stream=0):
        name, got_stream, payload = self.recv()
        if (name, got_stream) != (kind, stream):
            raise SmokeError(f"expected {kind} on stream {stream}, got {name} on {got_stream}: "
                             f"{payload!r}")
        return payload

    def exec(self, stream, argv, **extra):
        req = dict(argv=argv, env=[], cwd=None, user=None, tty=None)
        req.update(extra)
        self.send("ExecStart", stream, req)
        out, err, started = bytearray(), bytearray(), None
        while True:
            name, got, payload = self.recv()
            if got != stream:
                continue
            if name == "ExecStarted":
                started = payload["pid"]
            elif name in ("Stdout", "Stderr"):
                if name == "Stdout":
                    out += payload
                else:
                    err += payload
                credit = dict(stream=name.lower(), bytes=len(payload))
                self.send("Credit", stream, credit)
            elif name == "Exited":
                return started, bytes(out), bytes(err), payload
            elif name == "Error":
                raise SmokeError(f"agent refused stream {stream}: {payload}")


def check(cond, what):
    if not cond:
        raise SmokeError(what)


def host_cpu_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    raise SmokeError("no 'cpu MHz' in /proc/cpuinfo")


def build_initramfs(agent, kdir, out):
    subprocess.run([os.path.join(REPO, "scripts/build-initramfs"), "--output", out, agent, kdir],
                   check=True, stdout=subprocess.DEVNULL)


def bench(conn, commands):
    """Runs each shell command three times; returns [(command, [seconds...])]."""
    results, stream = [], 100
    for command in commands:
        times = []
        for _ in range(3):
            t = time.monotonic()
            _, out, err, exited = conn.exec(stream, ["sh", "-c", command])
            times.append(time.monotonic() - t)
            check(exited == {"code": {"code": 0}}, f"bench {command!r}: {exited} {err!r}")
            stream += 1
        results.append((command, times))
    return results


def converse(conn, root, t0, bench_commands):
    """The protocol script; returns timing facts."""
    hello = conn.expect("Hello")
    t_hello = time.monotonic() - t0
    check(hello["protocol_version"] == PROTOCOL_VERSION, f"protocol version {hello}")
    check("exec" in hello["capabilities"], f"capabilities {hello}")
    conn.send("HelloAck", 0, dict(protocol_version=PROTOCOL_VERSION, heartbeat_interval_ms=0))

    t = time.monotonic()
    pid, out, err, exited = conn.exec(1, ["echo", "hi"])
    t_echo = time.monotonic() - t
    check(out == b"hi\n" and exited == {"code": {"code": 0}}, f"echo hi: {out!r} {exited}")

    _, out, err, exited = conn.exec(2, ["sh", "-c", "echo oops >&2; exit 7"])
    check(err == b"oops\n" and exited == {"code": {"code": 7}}, f"stderr/exit: {err!r} {exited}")

    _, _, _, exited = conn.exec(3, ["no-such-command-cella"])
    check(exited.get("spawn_failed", {}).get("reason") == "not_found", f"not found: {exited}")

    marker = "/.cella-smoke-written"
    _, out, _, exited = conn.exec(4, ["sh", "-c", f"echo x > {marker} && cat {marker} && "
                                      "hostname && cat /proc/mounts | cut -d' ' -f2,3 | tr '\\n' ' '"])
    check(exited == {"code": {"code": 0}}, f"overlay write: {exited} {out!r}")
    check(not os.path.exists(root + marker), "a guest write reached the host root!")
    mounts = out.decode(errors="replace")
    for needed in ("/ overlay", "/proc proc", "/dev devtmpfs", "/dev/pts devpts", "/tmp tmpfs"):
        check(needed in mounts, f"missing mount {needed!r} in {mounts!r}")

    _, out, _, exited = conn.exec(5, ["sh", "-c", "tty; test -t 0 && echo is-a-tty"],
                                  tty=dict(rows=24, cols=80))
    check(b"/dev/pts/" in out and b"is-a-tty" in out, f"tty session: {out!r} {exited}")

    # Orphans are reaped by PID 1: no zombie may remain once the background sleep ends.
    conn.exec(6, ["sh", "-c", "sleep 0.2 & exit 0"])
    _, out, _, _ = conn.exec(7, ["sh", "-c", "sleep 1; cat /sys/class/net/lo/flags; "
                                 "grep -l 'State:.*Z' /proc/[0-9]*/status | wc -l"])
    flags, zombies = out.split()
    check(int(flags, 16) & 1, f"loopback is not up (flags {flags!r})")
    check(zombies == b"0", f"{zombies!r} zombie(s) left")

    _, out, _, exited = conn.exec(8, ["sh", "-c", "id -u; id -g; echo $HOME"], user="4242")
    check(out == b"4242\n4242\n/\n", f"numeric user: {out!r} {exited}")

    benches = bench(conn, bench_commands)

    conn.send("Shutdown", 0, dict(grace_ms=2000))
    goodbye = conn.expect("Goodbye")
    check(goodbye == {"killed_sessions": 0}, f"goodbye {goodbye}")
    conn.send("GoodbyeAck", 0)
    return t_hello, t_echo, benches


def run_once(args, initrd, cmdline, work, i):
    sock_path = os.path.join(work, "agent.sock")
    console = os.path.join(work, f"console-{i}.log")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    vmlinux = os.path.join(args.kernel_dir, args.current["vmlinux"])
    disk = []
    if args.upper_disk:
        image = os.path.join(work, f"upper-{i}.ext4")
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        disk = ["-drive", f"file={image},if=none,id=d0,format=raw",
                "-device", "virtio-blk-device,drive=d0"]
    argv = ["qemu-system-x86_64", "-M", "microvm,accel=tcg,pit=on,pic=on,rtc=on", "-cpu", "max",
            "-m", "256", "-nodefaults", "-no-reboot", "-nographic",
            "-serial", f"file:{console}", "-kernel", vmlinux, "-initrd", initrd,
            "-append", cmdline, "-device", "virtio-serial-device",
            "-chardev", f"socket,id=c0,path={sock_path}",
            "-device", "virtserialport,chardev=c0,name=cella.agent",
            "-fsdev", f"local,id=fs0,path={args.root},security_model=none,readonly=on",
            "-device", "virtio-9p-device,fsdev=fs0,mount_tag=rootfs"] + disk
    t0 = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        srv.settimeout(args.timeout)
        sock, _ = srv.accept()
        sock.settimeout(args.timeout)
        t_hello, t_echo, benches = converse(Conn(sock), args.root, t0, args.bench)
        qemu.wait(timeout=args.timeout)
        t_exit = time.monotonic() - t0
        if args.upper_disk:
            out = subprocess.run(["debugfs", "-R", "cat /upper/.cella-smoke-written", image],
                                 capture_output=True, check=True).stdout
            check(out == b"x\n", f"write not persisted on the upper disk: {out!r}")
        return dict(hello=t_hello, echo=t_echo, exit=t_exit, benches=benches)
    except (socket.timeout, subprocess.TimeoutExpired) as e:
        raise SmokeError(f"timed out ({e})") from None
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        srv.close()
        if qemu.returncode not in (0, None):
            print(f"  qemu exit {qemu.returncode}: {qemu.stderr.read().decode(errors='replace')}",
                  file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agent",
                   default=os.path.join(REPO, "target/x86_64-unknown-linux-gnu/release/cella-agent"))
    p.add_argument("--root", default=os.path.join(CELLA_HOME, "rootfs/default"))
    p.add_argument("--kernel-dir", default=os.path.join(CELLA_HOME, "kernel"))
    p.add_argument("--debug", action="store_true", help="boot with cella.debug")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the work dir (console logs)")
    p.add_argument("--upper-disk", action="store_true",
                   help="use an ext4 disk as the writable layer and check the write persisted")
    p.add_argument("--bench", action="append", default=[], metavar="CMD",
                   help="time a shell command in the guest (repeatable)")
    args = p.parse_args()
    with open(os.path.join(args.kernel_dir, "current.json")) as f:
        args.current = json.load(f)
    args.root = os.path.abspath(args.root)

    khz = host_cpu_khz()
    cmdline = (f"console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check tsc_early_khz={khz} "
               f"lpj={khz * 1000 // 250} cella.root=9p:rootfs cella.hostname=smoke")
    if args.debug:
        cmdline += " cella.debug"
    if args.upper_disk:
        cmdline += " cella.upper=blk:/dev/vda"

    work = tempfile.mkdtemp(prefix="cella-agent-smoke.")
    failures, results = 0, []
    try:
        initrd = os.path.join(work, "initramfs.cpio")
        build_initramfs(args.agent, args.kernel_dir, initrd)
        for i in range(1, args.runs + 1):
            try:
                r = run_once(args, initrd, cmdline, work, i)
                results.append(r)
                print(f"run {i}: ok: Hello after {r['hello']:.2f} s, `echo hi` round trip "
                      f"{r['echo'] * 1000:.0f} ms, qemu exited after {r['exit']:.2f} s",
                      file=sys.stderr)
                for command, times in r["benches"]:
                    shown = " ".join(f"{t * 1000:.0f}" for t in times)
                    print(f"  bench {command!r}: {shown} ms", file=sys.stderr)
            except SmokeError as e:
                failures += 1
                print(f"run {i}: FAILED: {e}", file=sys.stderr)
                try:
                    with open(os.path.join(work, f"console-{i}.log"), errors="replace") as f:
                        tail = f.read().splitlines()[-30:]
                    print("  console:\n    " + "\n    ".join(tail), file=sys.stderr)
                except OSError:
                    pass
        if results:
            hellos = [r["hello"] for r in results]
            print(f"summary: {len(results)}/{args.runs} ok; Hello wall s: min {min(hellos):.2f} "
                  f"median {statistics.median(hellos):.2f} max {max(hellos):.2f}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
