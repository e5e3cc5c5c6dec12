#!/usr/bin/env python
"""SNMP trap ingest: how many traps per second `SnmpTrapReceiver` decodes and queues with no loss, and
whether a 20,000-trap burst is absorbed, against net-snmp's `snmptrapd` receiving the same packets in the
same run.

  a) sustained: a v2c trap datagram captured from net-snmp's `snmptrap` (5 varbinds) is blasted from a
     separate sender process (plain UDP socket, paced in 1 ms ticks) at stepped rates for a few seconds
     each; received (taken off the event queue / printed by snmptrapd) versus sent, and the lag between
     the sender's last packet and the last trap received. A step "keeps up" when nothing is lost and the
     backlog is gone within LAG_LIMIT of the sender stopping (a bigger socket buffer would otherwise hide
     a receiver that falls behind, for a while).
  b) burst: 20,000 traps sent as fast as one Python process can: loss, and the drain time (sender's
     first packet to the last trap received).

  c) `--v3` (instead of a and b): SNMPv3 authPriv TRAPs captured from `snmptrap -v 3 -l authPriv -e
     ENGINE` (SHA/AES-128 and SHA-256/AES-256, the same 5 varbinds), sustained steps into the fast path
     (`adapters/snmp/usm.py`), the same receiver on the pysnmp path, and snmptrapd with the same USM user.

Run: `.venv/bin/python bench/bench_traps.py [--quick] [--v3] [--json FILE]`. Loopback only (127.0.0.1, ports
picked by the kernel); needs net-snmp's `snmptrap` and `snmptrapd` (Debian packages `snmp`, `snmptrapd`).
Progress goes to stderr; a table, then the results as JSON on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.snmp.receiver import SnmpTrapReceiver  # noqa: E402
from monitor.core.clock import SystemClock  # noqa: E402
from monitor.core.config import SnmpConfig  # noqa: E402
from monitor.core.events import Event  # noqa: E402
from monitor.core.metrics import Metrics  # noqa: E402

LAG_LIMIT = 0.1
"""Seconds: a step keeps up when its backlog drains within this long after the sender stops."""
QUIET = 1.5
"""Seconds without a new trap after which a receiver is considered drained (the rest is lost)."""
DEFAULT_BUFFER = SnmpConfig().receive_buffer
SMALL_BUFFER = 4 << 20
"""The sustained steps and snmptrapd (which cannot pass net.core.rmem_max) use this; bursts also 32 MiB."""
BIG_BUFFER = 32 << 20

SENDER = r"""
import json, socket, sys, time
port, rate, count = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
data = bytes.fromhex(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", port))
send = s.send
sent = 0
t0 = time.monotonic()
if rate <= 0:
    for _ in range(count):
        send(data)
    sent = count
else:
    while sent < count:
        due = min(count, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            send(data)
            sent += 1
        if sent < count:
            time.sleep(0.0005)
t1 = time.monotonic()
print(json.dumps({"sent": sent, "t0": t0, "t1": t1}))
"""


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def udp_rcvbuf_errors() -> int:
    """System-wide UDP RcvbufErrors (datagrams the kernel dropped because a socket buffer was full)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("RcvbufErrors")])


TRAP_ARGS = [
    "", "1.3.6.1.4.1.232.0.22054",
    "1.3.6.1.2.1.1.5.0", "s", "oa-enc1",
    "1.3.6.1.4.1.232.11.2.11.1.0", "i", "16",
    "1.3.6.1.4.1.232.22.2.2.1.1.2.1", "s", "rack-01",
    "1.3.6.1.4.1.232.22.2.4.1.1.4.1.1.7", "s", "blade07",
    "1.3.6.1.4.1.232.22.2.4.1.1.24.1.1.7", "s", "fault",
]  # fmt: skip
"""snmptrap's arguments after the target: an HPE blade-critical trap with 5 varbinds."""


def _snmptrap_datagram(env: dict[str, str], options: list[str]) -> bytes:
    """The datagram net-snmp's snmptrap sends with `options` (version, security) and TRAP_ARGS."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        port = s.getsockname()[1]
        subprocess.run(["snmptrap", *options, f"127.0.0.1:{port}", *TRAP_ARGS],
                       env=env, check=True, timeout=30, capture_output=True)
        data, _ = s.recvfrom(65535)
    return data


def capture_trap(env: dict[str, str]) -> bytes:
    """One v2c trap (TRAP_ARGS) as net-snmp's snmptrap encodes it."""
    return _snmptrap_datagram(env, ["-v", "2c", "-c", "public"])


class Receiver(Protocol):
    name: str
    port: int
    received: int
    first: float | None
    last: float | None

    def cpu(self) -> float: ...


@dataclass
class Step:
    receiver: str
    rate: float
    """Traps/s asked of the sender; 0 = as fast as it can."""
    sent: int
    received: int
    lost: int
    loss_pct: float
    send_rate: float
    """Traps/s the sender achieved."""
    lag_s: float
    """Last trap received minus the sender's last packet."""
    drain_s: float
    """Last trap received minus the sender's first packet."""
    throughput: float
    """Traps/s received from the sender's first packet to the last trap received."""
    cpu_pct: float
    """Receiver CPU over the step (one core = 100)."""
    us_per_trap: float
    kernel_drops: int
    keeps_up: bool


async def send(port: int, rate: float, count: int, datagram: bytes) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, str(port), str(rate), str(count), datagram.hex(),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, "sender failed"
    result: dict[str, Any] = json.loads(out)
    return result


async def step(rx: Receiver, rate: float, count: int, datagram: bytes) -> Step:
    before, cpu0, drops0 = rx.received, rx.cpu(), udp_rcvbuf_errors()
    sender = await send(rx.port, rate, count, datagram)
    # wait until everything arrived, or nothing new for QUIET seconds
    seen, seen_at = rx.received, time.monotonic()
    while rx.received - before < sender["sent"]:
        await asyncio.sleep(0.05)
        if rx.received != seen:
            seen, seen_at = rx.received, time.monotonic()
        elif time.monotonic() - seen_at > QUIET:
            break
    cpu1 = rx.cpu()
    received = rx.received - before
    sent = int(sender["sent"])
    last = rx.last if rx.last is not None else sender["t1"]
    lag = max(0.0, last - sender["t1"])
    drain = max(1e-9, last - sender["t0"])
    lost = sent - received
    busy = max(drain, sender["t1"] - sender["t0"])
    return Step(
        receiver=rx.name, rate=rate, sent=sent, received=received, lost=lost,
        loss_pct=round(100.0 * lost / sent, 2),
        send_rate=round(sent / max(1e-9, sender["t1"] - sender["t0"])),
        lag_s=round(lag, 3), drain_s=round(drain, 3), throughput=round(received / drain),
        cpu_pct=round(100.0 * (cpu1 - cpu0) / busy, 1),
        us_per_trap=round(1e6 * (cpu1 - cpu0) / received, 1) if received else 0.0,
        kernel_drops=udp_rcvbuf_errors() - drops0, keeps_up=lost == 0 and lag <= LAG_LIMIT)  # fmt: skip


# --- the receivers ------------------------------------------------------------------------------------


class PysnmpReceiver:
    """`SnmpTrapReceiver` in this process; a consumer takes events off the queue (the rules' place).
    `fast_path=False`: every datagram through pysnmp (the receiver before `adapters.snmp.ber`)."""

    def __init__(self, buffer: int, fast_path: bool = True, users: list[dict[str, Any]] | None = None,
                 label: str = "") -> None:
        path = "" if fast_path else ", pysnmp path"
        self.name = f"SnmpTrapReceiver ({label}{buffer >> 20} MiB{path})"
        self.users = users or []
        self.buffer = buffer
        self.fast_path = fast_path
        self.received = 0
        self.first: float | None = None
        self.last: float | None = None
        self.port = 0
        self.metrics = Metrics()

    def cpu(self) -> float:
        return time.process_time()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PysnmpReceiver]:
        config = SnmpConfig.model_validate({"listen": "127.0.0.1:0", "communities": ["public"],
                                            "receive_buffer": self.buffer, "users": self.users})
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=config.queue_size)
        receiver = SnmpTrapReceiver(config=config, queue=queue, metrics=self.metrics, clock=SystemClock(),
                                    fast_path=self.fast_path)
        _, self.port = await receiver.start()
        stop = asyncio.Event()

        async def consume() -> None:
            while True:
                await queue.get()
                now = time.monotonic()
                if self.first is None:
                    self.first = now
                self.last = now
                self.received += 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(receiver.run(stop))
            consumer = tg.create_task(consume())
            try:
                yield self
            finally:
                stop.set()
                consumer.cancel()


class SnmptrapdReceiver:
    """net-snmp's snmptrapd printing one line per trap to a pipe; the lines are counted here."""

    def __init__(self, buffer: int, env: dict[str, str], workdir: Path,
                 conf: str = "disableAuthorization yes", label: str = "") -> None:
        self.name = f"snmptrapd ({label}{buffer >> 20} MiB)"
        self.conf = conf
        self.buffer = buffer
        self.env = env
        self.workdir = workdir
        self.received = 0
        self.first: float | None = None
        self.last: float | None = None
        self.port = 0
        self.pid = 0

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SnmptrapdReceiver]:
        conf = self.workdir / "snmptrapd.conf"
        # serverRecvBuf: SO_RCVBUF for its socket, as ours (snmptrapd cannot pass net.core.rmem_max)
        conf.write_text(f"{self.conf}\n[snmp] serverRecvBuf {self.buffer}\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            "snmptrapd", "-f", "-Lo", "-C", "-c", str(conf), "-n", "-On", "-m", "", "-F", "TRAP %B %v\n",
            f"udp:127.0.0.1:{self.port}", env=self.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdout is not None
        self.pid = proc.pid
        stdout = proc.stdout
        async with asyncio.timeout(10):
            banner = await stdout.readline()  # "NET-SNMP version 5.9.3": listening
        self.version = banner.decode().strip()

        async def count() -> None:
            tail = b""
            while chunk := await stdout.read(1 << 16):
                text = tail + chunk
                n = text.count(b"TRAP UDP:")
                if n:
                    now = time.monotonic()
                    if self.first is None:
                        self.first = now
                    self.last = now
                    self.received += n
                tail = text[-8:]

        counter = asyncio.create_task(count())
        try:
            yield self
        finally:
            proc.terminate()
            await proc.wait()
            await counter


# --- the run -------------------------------------------------------------------------------------------


async def sustained(rx: Any, rates: list[float], seconds: float, datagram: bytes,
                    stop_after_falling_behind: bool = True) -> list[Step]:
    steps: list[Step] = []
    async with rx.running():
        for rate in rates:
            s = await step(rx, rate, int(rate * seconds), datagram)
            progress(f"  {rx.name} {rate:>6g}/s: sent {s.sent}, lost {s.lost} ({s.loss_pct}%), "
                     f"lag {s.lag_s}s, cpu {s.cpu_pct}%, {s.us_per_trap} us/trap, "
                     f"kernel drops {s.kernel_drops}")
            steps.append(s)
            if stop_after_falling_behind and not s.keeps_up:
                break
    return steps


async def burst(rx: Any, count: int, datagram: bytes) -> Step:
    async with rx.running():
        s = await step(rx, 0, count, datagram)
    progress(f"  {rx.name} burst {count}: sent at {s.send_rate}/s, lost {s.lost} ({s.loss_pct}%), "
             f"drained in {s.drain_s}s ({s.throughput}/s), kernel drops {s.kernel_drops}")
    return s


def best(steps: list[Step]) -> float:
    return max((s.rate for s in steps if s.keeps_up), default=0.0)


def cpu_at(steps: list[Step], rate: float) -> float:
    """Receiver CPU per trap at `rate` (both receivers keep up there), else at the first step."""
    return next((s.us_per_trap for s in steps if s.rate == rate), steps[0].us_per_trap)


def capacity(steps: list[Step]) -> float:
    """Traps/s while saturated (the step that fell behind), else the highest throughput seen."""
    behind = [s.throughput for s in steps if not s.keeps_up]
    return max(behind) if behind else max((s.throughput for s in steps), default=0.0)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIBS": ""}
    rmem_max = read_int("/proc/sys/net/core/rmem_max")
    with tempfile.TemporaryDirectory(prefix="bench-traps-") as tmp:
        work = Path(tmp)
        env.update(HOME=tmp, SNMPCONFPATH=tmp, SNMP_PERSISTENT_DIR=tmp)
        datagram = capture_trap(env)
        progress(f"captured a {len(datagram)}-byte v2c trap from snmptrap")
        if args.quick:
            ours_rates, theirs_rates, seconds, burst_n = [1000.0, 2000.0, 5000.0], [1000.0, 5000.0], 1.5, 5000
            slow_rates = [1000.0, 2000.0]
        else:
            ours_rates = theirs_rates = [500.0, 1000.0, 2000.0, 3000.0, 5000.0, 10000.0, 20000.0, 30000.0]
            slow_rates = [500.0, 1000.0, 1500.0, 2000.0]
            seconds, burst_n = args.seconds, args.burst

        progress(f"a) sustained, {seconds:g} s per rate")
        ours = await sustained(PysnmpReceiver(SMALL_BUFFER), ours_rates, seconds, datagram)
        slow = await sustained(PysnmpReceiver(SMALL_BUFFER, fast_path=False), slow_rates, seconds, datagram)
        theirs_rx = SnmptrapdReceiver(SMALL_BUFFER, env, work)
        theirs = await sustained(theirs_rx, theirs_rates, seconds, datagram)

        progress(f"b) burst of {burst_n} at full speed")
        bursts = [
            await burst(PysnmpReceiver(SMALL_BUFFER), burst_n, datagram),
            await burst(PysnmpReceiver(BIG_BUFFER), burst_n, datagram),
            await burst(SnmptrapdReceiver(SMALL_BUFFER, env, work), burst_n, datagram),
        ]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "rmem_max": rmem_max},
        "config_default_receive_buffer": DEFAULT_BUFFER,
        "snmptrapd": getattr(theirs_rx, "version", ""),
        "datagram_bytes": len(datagram),
        "seconds_per_rate": seconds,
        "lag_limit_s": LAG_LIMIT,
        "sustained": {"ours": [asdict(s) for s in ours], "ours_pysnmp_path": [asdict(s) for s in slow],
                      "snmptrapd": [asdict(s) for s in theirs]},
        "burst": [asdict(s) for s in bursts],
        "summary": {
            "ours_no_loss_rate": best(ours), "snmptrapd_no_loss_rate": best(theirs),
            "ours_pysnmp_path_no_loss_rate": best(slow), "ours_pysnmp_path_us_per_trap": cpu_at(slow, 1000),
            "no_loss_rate_ratio": round(best(ours) / best(theirs), 3) if best(theirs) else None,
            "ours_capacity": capacity(ours), "snmptrapd_capacity": capacity(theirs),
            "ours_us_per_trap": cpu_at(ours, 1000), "snmptrapd_us_per_trap": cpu_at(theirs, 1000),
            "cpu_per_trap_ratio": round(cpu_at(ours, 1000) / cpu_at(theirs, 1000), 1)
            if cpu_at(theirs, 1000) else None,
        },
    }


ENGINE_ID = "0x8000000001020304"
V3_SUITES = {
    # name: (net-snmp -a, -x; our auth_protocol, priv_protocol)
    "SHA/AES-128": ("SHA", "AES", "SHA", "AES"),
    "SHA-256/AES-256": ("SHA-256", "AES-256", "SHA256", "AES256"),
}


def capture_v3_trap(env: dict[str, str], auth: str, priv: str) -> bytes:
    """The same trap as `capture_trap`, as snmptrap -v 3 -l authPriv sends it (the sender is the
    authoritative engine ENGINE_ID)."""
    return _snmptrap_datagram(env, ["-v", "3", "-e", ENGINE_ID, "-u", "failover", "-l", "authPriv",
                                    "-a", auth, "-A", "authpass123", "-x", priv, "-X", "privpass123"])


async def per_datagram_cost(users: list[dict[str, Any]], datagram: bytes, fast_path: bool, n: int) -> float:
    """CPU µs per datagram inside the receiver alone: `n` datagrams handed to its transport as the event
    loop would (no socket, no loop), each decoded, authenticated, decrypted and queued."""
    config = SnmpConfig.model_validate({"listen": "127.0.0.1:0", "users": users})
    queue: asyncio.Queue[Event] = asyncio.Queue()
    receiver = SnmpTrapReceiver(config=config, queue=queue, metrics=Metrics(), clock=SystemClock(),
                                fast_path=fast_path)
    await receiver.start()
    try:
        transport = receiver._transport
        transport.datagram_received(datagram, ("127.0.0.1", 9))  # keys localised here, not timed
        t0 = time.process_time()
        for _ in range(n):
            transport.datagram_received(datagram, ("127.0.0.1", 9))
        cost = (time.process_time() - t0) / n * 1e6
    finally:
        await receiver.close()
    assert queue.qsize() == n + 1, "not every datagram became an event"
    return round(cost, 1)


async def main_v3(args: argparse.Namespace) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIBS": ""}
    if args.quick:
        fast_rates, slow_rates, theirs_rates = [500.0, 5000.0], [250.0, 500.0], [500.0, 5000.0]
        seconds = 1.5
    else:
        fast_rates = [500.0, 1000.0, 2000.0, 3000.0, 5000.0, 7000.0, 10000.0, 15000.0]
        slow_rates = [250.0, 500.0, 750.0, 1000.0, 1500.0]
        theirs_rates = [500.0, 1000.0, 5000.0, 10000.0, 20000.0]
        seconds = args.seconds
    suites: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-traps-v3-") as tmp:
        work = Path(tmp)
        env.update(HOME=tmp, SNMPCONFPATH=tmp, SNMP_PERSISTENT_DIR=tmp)
        for name, (net_auth, net_priv, auth, priv) in V3_SUITES.items():
            datagram = capture_v3_trap(env, net_auth, net_priv)
            progress(f"{name}: captured a {len(datagram)}-byte SNMPv3 authPriv trap from snmptrap")
            users = [{"name": "failover", "auth_protocol": auth, "auth_key": "authpass123",
                      "priv_protocol": priv, "priv_key": "privpass123", "engine_ids": [ENGINE_ID]}]
            conf = (f"createUser -e {ENGINE_ID} failover {net_auth.replace('-', '')} authpass123 "
                    f"{net_priv.replace('-', '')} privpass123\nauthUser log failover priv")
            label = f"{name}, "
            cost_fast = await per_datagram_cost(users, datagram, True, 3000)
            cost_slow = await per_datagram_cost(users, datagram, False, 300)
            progress(f"  in-process cost per datagram: fast {cost_fast} us, pysnmp path {cost_slow} us")
            fast = await sustained(PysnmpReceiver(SMALL_BUFFER, users=users, label=label), fast_rates,
                                   seconds, datagram)
            slow = await sustained(PysnmpReceiver(SMALL_BUFFER, fast_path=False, users=users, label=label),
                                   slow_rates, seconds, datagram)
            theirs_rx = SnmptrapdReceiver(SMALL_BUFFER, env, work, conf=conf, label=label)
            theirs = await sustained(theirs_rx, theirs_rates, seconds, datagram)
            low = 500.0  # CPU per trap compared at a rate all three keep up with
            suites[name] = {
                "datagram_bytes": len(datagram),
                "snmptrapd": getattr(theirs_rx, "version", ""),
                "sustained": {"fast": [asdict(x) for x in fast], "pysnmp_path": [asdict(x) for x in slow],
                              "snmptrapd": [asdict(x) for x in theirs]},
                "summary": {
                    "in_process_us_fast": cost_fast, "in_process_us_pysnmp_path": cost_slow,
                    "in_process_ratio": round(cost_slow / cost_fast, 1),
                    "fast_no_loss_rate": best(fast), "pysnmp_path_no_loss_rate": best(slow),
                    "snmptrapd_no_loss_rate": best(theirs),
                    "fast_vs_pysnmp_no_loss_ratio": round(best(fast) / best(slow), 1) if best(slow) else None,
                    "fast_vs_snmptrapd_no_loss_ratio": round(best(fast) / best(theirs), 2)
                    if best(theirs) else None,
                    "fast_capacity": capacity(fast), "pysnmp_path_capacity": capacity(slow),
                    "snmptrapd_capacity": capacity(theirs),
                    "fast_us_per_trap": cpu_at(fast, low), "pysnmp_path_us_per_trap": cpu_at(slow, low),
                    "snmptrapd_us_per_trap": cpu_at(theirs, low),
                    "fast_us_per_trap_busiest": next((x.us_per_trap for x in reversed(fast) if x.keeps_up),
                                                     0.0),
                    "pysnmp_vs_fast_cpu_ratio": round(cpu_at(slow, low) / cpu_at(fast, low), 1)
                    if cpu_at(fast, low) else None,
                },
            }
    return {
        "mode": "v3",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "rmem_max": read_int("/proc/sys/net/core/rmem_max")},
        "seconds_per_rate": seconds,
        "lag_limit_s": LAG_LIMIT,
        "suites": suites,
    }


def table_v3(results: dict[str, Any]) -> str:
    rows = ["| receiver | rate asked | sent | lost | lag after sender | throughput | receiver CPU | CPU/trap "
            "| keeps up |", "|---|---|---|---|---|---|---|---|---|"]
    for suite in results["suites"].values():
        for kind in ("fast", "pysnmp_path", "snmptrapd"):
            for s in suite["sustained"][kind]:
                rows.append(f"| {s['receiver']} | {s['rate']:g}/s | {s['sent']} | {s['lost']} "
                            f"({s['loss_pct']}%) | {s['lag_s']} s | {s['throughput']}/s | {s['cpu_pct']}% "
                            f"| {s['us_per_trap']} us | {'yes' if s['keeps_up'] else 'no'} |")
    rows.append("")
    for name, suite in results["suites"].items():
        sm = suite["summary"]
        rows.append(f"{name}: no-loss rate fast {sm['fast_no_loss_rate']:g}/s, pysnmp path "
                    f"{sm['pysnmp_path_no_loss_rate']:g}/s (x{sm['fast_vs_pysnmp_no_loss_ratio']}), "
                    f"snmptrapd {sm['snmptrapd_no_loss_rate']:g}/s "
                    f"(x{sm['fast_vs_snmptrapd_no_loss_ratio']}); saturated fast {sm['fast_capacity']}/s, "
                    f"pysnmp {sm['pysnmp_path_capacity']}/s, snmptrapd {sm['snmptrapd_capacity']}/s; "
                    f"CPU/trap at 500/s fast {sm['fast_us_per_trap']} us, "
                    f"pysnmp {sm['pysnmp_path_us_per_trap']} us (x{sm['pysnmp_vs_fast_cpu_ratio']}), "
                    f"snmptrapd {sm['snmptrapd_us_per_trap']} us; fast at its busiest no-loss step "
                    f"{sm['fast_us_per_trap_busiest']} us; in the receiver alone fast "
                    f"{sm['in_process_us_fast']} us, pysnmp {sm['in_process_us_pysnmp_path']} us "
                    f"(x{sm['in_process_ratio']})")
    return "\n".join(rows)


def table(results: dict[str, Any]) -> str:
    rows = ["| receiver | rate asked | sent | lost | lag after sender | throughput | receiver CPU | CPU/trap "
            "| keeps up |", "|---|---|---|---|---|---|---|---|---|"]
    for kind in ("ours", "ours_pysnmp_path", "snmptrapd"):
        for s in results["sustained"][kind]:
            rows.append(f"| {s['receiver']} | {s['rate']:g}/s | {s['sent']} | {s['lost']} ({s['loss_pct']}%) "
                        f"| {s['lag_s']} s | {s['throughput']}/s | {s['cpu_pct']}% | {s['us_per_trap']} us "
                        f"| {'yes' if s['keeps_up'] else 'no'} |")
    rows += ["", "| burst | sent at | lost | drain time (first sent → last received) | throughput "
             "| kernel drops |", "|---|---|---|---|---|---|"]
    for s in results["burst"]:
        rows.append(f"| {s['receiver']}, {s['sent']} traps | {s['send_rate']}/s "
                    f"| {s['lost']} ({s['loss_pct']}%) | {s['drain_s']} s | {s['throughput']}/s "
                    f"| {s['kernel_drops']} |")
    sm = results["summary"]
    rows += ["", f"highest no-loss sustained rate: ours {sm['ours_no_loss_rate']:g}/s, snmptrapd "
             f"{sm['snmptrapd_no_loss_rate']:g}/s (ratio {sm['no_loss_rate_ratio']}); capacity when "
             f"saturated: ours {sm['ours_capacity']}/s, snmptrapd {sm['snmptrapd_capacity']}/s; CPU per "
             f"trap at 1000/s: ours {sm['ours_us_per_trap']} us, snmptrapd {sm['snmptrapd_us_per_trap']} us "
             f"(x{sm['cpu_per_trap_ratio']}); pysnmp path: {sm['ours_pysnmp_path_no_loss_rate']:g}/s "
             f"no loss, {sm['ours_pysnmp_path_us_per_trap']} us/trap at 1000/s"]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter steps and a 5,000 burst (~15 s)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per sustained rate (default 4)")
    parser.add_argument("--burst", type=int, default=20000, help="burst size (default 20000)")
    parser.add_argument("--v3", action="store_true",
                        help="SNMPv3 authPriv (SHA/AES-128, SHA-256/AES-256): fast, pysnmp path, snmptrapd")
    parser.add_argument("--json", type=Path, help="also write the results, indented, to this file")
    args = parser.parse_args()
    for tool in ("snmptrap", "snmptrapd"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install the Debian packages snmp and snmptrapd", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.v3:
        results = asyncio.run(main_v3(args))
        print(table_v3(results))
    else:
        results = asyncio.run(main_async(args))
        print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
