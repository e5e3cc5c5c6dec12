#!/usr/bin/env python
"""Datacenter scale: the daemon watching ~10,000 BMCs, against a bare aiohttp client polling the same BMCs
in the same run.

The lab runs as its own process (as in bench_jobs.py b: BMCs are other machines, so their TLS and JSON
work is not charged to the daemon's core) with `--enclosures` enclosures on 127.64.0.0/14 (the lab's
world puts a blade in about 14 of the 16 bays: 715 enclosures are ~10,000 BMCs). Then, in this process:

  baseline) a bare aiohttp client (one ClientSession, the daemon's connector limits: 128 connections,
     4 per host, 15 s keep-alive) reads every BMC's ComputerSystem with basic auth, `--concurrency` at
     once, as fast as it can: one resolving cycle (Systems collection, then the member), then
     `--baseline-cycles` steady ones (the member only). Run in a child process so its CPU and memory
     do not mix with the daemon's.
  daemon) the real Daemon (monitor.app.daemon) in this process, SQLite store, with the inventory from
     the lab's manager API (refreshed once), its real health poller (poll_interval `--interval`,
     poll_spread `--spread`, max_concurrency `--concurrency`), the subscription reconcile on every BMC
     at start and every `--subscription-check` seconds (default 300, the daemon's), the spare-pool check
     at start and every `--spare-check` seconds (default 300), and its SNMP receiver and rules; over
     `--cycles` poll cycles. During cycle `--storm-cycle` a trap storm: `--trap-rate` v2c traps/s for
     `--trap-seconds` from bench_traps.py's sender process (a coldStart trap encoded by lab.traps: no
     server matches it, so each one is decided `none` without acting).

Measured on the daemon side: each poll cycle's duration (redfish_health_poll_cycle_seconds) against the
interval, overruns, process CPU seconds per cycle (one core: cpu/wall), VmRSS/VmHWM, event-loop lag (a
ticker sleeping 50 ms records how late it wakes) p50/p99/max overall and during the storm, and traps
sent / decided / lost. Ratios: daemon CPU per steady cycle over the baseline's, memory over the
baseline's.

Run: `.venv/bin/python bench/bench_scale.py [--enclosures 715] [--interval 60] [--cycles 3] [--json F]`;
a short setup first: `--enclosures 40 --interval 10 --cycles 2 --trap-seconds 3`. Loopback only.
Progress goes to stderr; a table, then the results as JSON on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from bench_traps import SENDER  # noqa: E402

from lab.traps import encode_v2c_trap  # noqa: E402
from monitor.app.daemon import Daemon  # noqa: E402
from monitor.core.config import LoadedConfig, MonitorConfig  # noqa: E402
from monitor.core.metrics import Metrics  # noqa: E402

ZERO_LATENCY = {"bmc_ms": 0, "manager_ms": 0, "power_off_s": 0, "power_on_s": 0, "boot_s": 0}
BMC_NETWORK = "127.64.0.0/14"
TICK = 0.05
TARGET_RSS_MB = 500.0
TARGET_LAG_P99_MS = 100.0
COLD_START = "1.3.6.1.6.3.1.1.5.1"
DRAIN_LIMIT = 30.0
"""Seconds after the trap sender stops that the storm's backlog may take to be decided; the rest counts
as lost (still queued or dropped)."""


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pctl(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the lab as its own process ------------------------------------------------------------------------


@dataclass
class LabProc:
    manager_url: str
    pid: int
    start_s: float


@contextlib.asynccontextmanager
async def lab_process(enclosures: int) -> AsyncIterator[LabProc]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-lab-") as d:
        cfg, ready = Path(d) / "lab.yaml", Path(d) / "ready.json"
        cfg.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "enclosures": enclosures,
                                       "bmc_network": BMC_NETWORK, "latency": ZERO_LATENCY}))
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lab", "-c", str(cfg), "--ready-file", str(ready),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=str(ROOT))
        try:
            deadline = time.monotonic() + 600
            while not ready.exists():
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("the lab process did not start")
                await asyncio.sleep(0.1)
            info = json.loads(ready.read_text())
            yield LabProc(info["manager"], int(info["pid"]), time.monotonic() - t0)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


async def lab_bmcs(manager_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, \
            s.get(manager_url + "/api/v1/inventory", timeout=aiohttp.ClientTimeout(total=120)) as r:
        r.raise_for_status()
        data = await r.json()
    return [srv["bmc"] for srv in data["servers"] if srv.get("bmc") and srv.get("present", True)]


# --- the baseline: a bare aiohttp client (child process) -----------------------------------------------


async def baseline_child(manager_url: str, concurrency: int, cycles: int) -> dict[str, Any]:
    bmcs = await lab_bmcs(manager_url)
    base_rss = proc_status()
    connector = aiohttp.TCPConnector(limit=128, limit_per_host=4, keepalive_timeout=15.0)
    timeout = aiohttp.ClientTimeout(total=30)
    paths: dict[str, str] = {}
    errors = 0
    out: list[dict[str, float]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        slots = asyncio.Semaphore(concurrency)

        async def read(bmc: dict[str, Any]) -> None:
            nonlocal errors
            url = bmc["url"].rstrip("/")
            auth = aiohttp.BasicAuth(bmc["username"], bmc["password"])
            async with slots:
                try:
                    path = paths.get(url)
                    if path is None:
                        async with session.get(url + "/redfish/v1/Systems", auth=auth, ssl=False) as r:
                            path = (await r.json())["Members"][0]["@odata.id"]
                            paths[url] = path
                    async with session.get(url + path, auth=auth, ssl=False) as r:
                        body = await r.json()
                        _ = body["Status"]["Health"]
                except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                    errors += 1

        for _ in range(1 + cycles):
            c0, t0 = time.process_time(), time.monotonic()
            async with asyncio.TaskGroup() as tg:  # the bare client: a task per BMC, a semaphore
                for bmc in bmcs:
                    tg.create_task(read(bmc))
            out.append({"wall_s": time.monotonic() - t0, "cpu_s": time.process_time() - c0})
    st = proc_status()
    return {"bmcs": len(bmcs), "cycles": out, "errors": errors, "rss_kib": st["VmRSS"],
            "hwm_kib": st["VmHWM"], "rss_before_kib": base_rss["VmRSS"]}


def run_baseline(manager_url: str, concurrency: int, cycles: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child-baseline", manager_url,
         "--concurrency", str(concurrency), "--baseline-cycles", str(cycles)],
        capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline child failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- the daemon --------------------------------------------------------------------------------------


def monitor_config(args: argparse.Namespace, lab_url: str, store: Path) -> MonitorConfig:
    return MonitorConfig.model_validate({
        "instance": "bench-scale",
        "http": {"listen": "127.0.0.1:0"},
        "store": str(store),
        "inventory": {"source": "lab", "lab": {"url": lab_url, "timeout": 120}},
        "redfish": {"timeout": 10, "max_connections": args.max_connections},
        "redfish_events": {
            "poll_interval": args.interval, "poll_spread": args.spread,
            "max_concurrency": args.concurrency,
            # nothing listens on the discard port: the BMCs store the subscription, no push arrives
            "destination": "http://127.0.0.1:9/api/v1/events/redfish",
            "secret": "bench-scale-secret", "check_interval": args.subscription_check,
        },
        "spares": {"initial_delay": args.spare_delay, "jitter": 0, "check_interval": args.spare_check},
        "snmp": {"listen": "127.0.0.1:0", "communities": ["public"]},
    })


@dataclass
class Lag:
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(monotonic time, lateness in seconds)."""
    sampler: StallSampler | None = None

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.samples.append((time.monotonic(), max(0.0, loop.time() - due)))
            if self.sampler is not None:
                self.sampler.last_tick = time.monotonic()

    def stats(self, t0: float = -math.inf, t1: float = math.inf) -> dict[str, float]:
        lags = [lag * 1000 for t, lag in self.samples if t0 <= t <= t1]
        return {"n": len(lags), "p50_ms": round(pctl(lags, 50), 2), "p99_ms": round(pctl(lags, 99), 2),
                "max_ms": round(max(lags), 2) if lags else math.nan}


class StallSampler:
    """`--stalls`: a thread that, whenever the loop's ticker is over `threshold` late, samples the main
    thread's stack every `every` seconds; `top()` ranks the stacks (innermost `depth` frames) and the
    innermost frames by samples. What the loop was doing in its long iterations, at the cost of a
    thread waking every `every` seconds (its own CPU is charged to the run)."""

    def __init__(self, threshold: float = 0.1, every: float = 0.005, depth: int = 12) -> None:
        self.threshold, self.every, self.depth = threshold, every, depth
        self.last_tick = time.monotonic()
        self.stacks: Counter[str] = Counter()
        self.leaves: Counter[str] = Counter()
        self.samples = 0
        self._main = threading.main_thread().ident or 0
        self.ours: Counter[str] = Counter()
        """The innermost frame of the project's own code (not a library's)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if time.monotonic() - self.last_tick < TICK + self.threshold:
                continue
            frame = sys._current_frames().get(self._main)
            if frame is None:
                continue
            full = traceback.extract_stack(frame)
            stack = full[-self.depth:]
            own = [f for f in full if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename
                   and "/bench/" not in f.filename]
            if own:
                self.ours[f"{Path(own[-1].filename).relative_to(ROOT)}:{own[-1].lineno} {own[-1].name}"] += 1
            self.samples += 1
            self.stacks[" < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                   for f in reversed(stack))] += 1
            leaf = stack[-1]
            self.leaves[f"{leaf.filename}:{leaf.lineno} {leaf.name}"] += 1

    def top(self, n: int = 25) -> dict[str, Any]:
        return {"samples": self.samples, "every_s": self.every,
                "leaves": self.leaves.most_common(n),
                "ours": self.ours.most_common(n), "stacks": self.stacks.most_common(n)}


@dataclass
class GcPauses:
    """Every collection of the garbage collector in this process (the daemon's): (monotonic start,
    generation, seconds), through `gc.callbacks`."""

    pauses: list[tuple[float, int, float]] = field(default_factory=list)
    collected: list[int] = field(default_factory=list)
    """Objects freed by each full collection."""
    frozen: list[int] = field(default_factory=list)
    """`gc.get_freeze_count()` at each full collection's end."""
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((time.monotonic(), info["generation"],
                                time.perf_counter() - self._started))
            if info["generation"] == 2:
                self.collected.append(info["collected"])
                self.frozen.append(gc.get_freeze_count())

    def stats(self, lag: Lag, t0: float = -math.inf, t1: float = math.inf) -> dict[str, Any]:
        """Per generation: collections and their total / longest pause; and how many of the loop's
        late ticks (over 100 ms) had a collection of over 50 ms within their lateness."""
        mine = [(t, g, d) for t, g, d in self.pauses if t0 <= t <= t1]
        out: dict[str, Any] = {}
        for gen in (0, 1, 2):
            ds = [d * 1000 for _, g, d in mine if g == gen]
            out[f"gen{gen}"] = {"n": len(ds), "total_ms": round(sum(ds), 1),
                                "max_ms": round(max(ds), 1) if ds else 0.0}
        late = [(t, late) for t, late in lag.samples if t0 <= t <= t1 and late > 0.1]
        long = [(t, d) for t, _, d in mine if d > 0.05]
        out["late_ticks"] = len(late)
        out["late_ticks_with_gc"] = sum(
            1 for t, late_s in late if any(t - late_s - TICK <= end <= t for end, _ in long))
        return out


def counter_sum(metrics: Metrics, name: str) -> float:
    """One counter's total over its labels, read from that counter alone: `Metrics.series()` also
    collects the gauges, and the spare-capacity gauge walks the whole inventory (10,000 servers: tens of
    ms a call), which would charge the bench's own polling to the daemon's core."""
    counter = metrics._counters[name]
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def histogram_sum(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(metrics._prefix + name + "_sum")
    return value if value is not None else 0.0


PAGES = ("/healthz", "/", "/?state=spare", "/?q=bay16", "/api/v1/status", "/metrics")
"""What an operator's browser and Prometheus ask of the daemon; /healthz is the HTTP floor."""


async def page_times(daemon: Daemon, lag: Lag, repeat: int = 3) -> dict[str, dict[str, float]]:
    """Each of PAGES `repeat` times once the cycles are done (the polls still running): the median
    seconds to the whole answer, its size, and the loop's longest lateness meanwhile."""
    if daemon.http_address is None:
        return {}
    base = f"http://{daemon.http_address[0]}:{daemon.http_address[1]}"
    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for path in PAGES:
            took, size = [], 0
            t0 = time.monotonic()
            for _ in range(repeat):
                started = time.perf_counter()
                async with http.get(base + path) as r:
                    body = await r.read()
                    assert r.status == 200, (path, r.status)
                took.append(time.perf_counter() - started)
                size = len(body)
                await asyncio.sleep(TICK * 2)  # a tick between two asks, so each is seen alone
            out[path] = {"median_ms": round(pctl([t * 1000 for t in took], 50), 1), "bytes": size,
                         "lag_max_ms": lag.stats(t0, time.monotonic())["max_ms"]}
    return out


async def send_traps(port: int, rate: float, count: int, datagram: bytes) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, str(port), str(rate), str(count), datagram.hex(),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("the trap sender failed")
    result: dict[str, Any] = json.loads(out)
    return result


async def run_daemon(args: argparse.Namespace, lab: LabProc, n_bmcs: int, tmp: Path) -> dict[str, Any]:
    config = monitor_config(args, lab.manager_url, tmp / "store.db")
    sampler = StallSampler() if args.stalls else None
    lag = Lag(sampler=sampler)
    if sampler is not None:
        sampler.start()
    lag_stop = asyncio.Event()
    rss0 = proc_status()
    lag_task = asyncio.create_task(lag.run(lag_stop))
    collections = GcPauses()
    gc.callbacks.append(collections)
    daemon = Daemon(LoadedConfig(config, None))
    metrics = daemon.metrics
    stop = asyncio.Event()
    t0, c0, lab_c0 = time.monotonic(), time.process_time(), proc_cpu(lab.pid)
    task = asyncio.create_task(daemon.run(stop), name="bench-daemon")
    marks: dict[str, float] = {}
    cycles: list[dict[str, float]] = []
    storm: dict[str, Any] = {}
    storm_task: asyncio.Task[dict[str, Any]] | None = None
    decided_before = 0.0
    datagram = encode_v2c_trap("public", COLD_START, {})
    last_cycle_t, last_cycle_c, last_sum = t0, c0, 0.0
    try:
        while len(cycles) < args.cycles:
            if task.done():
                task.result()
                raise RuntimeError("the daemon stopped")
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if "inventory_s" not in marks and daemon.inventory_view.current() is not None:
                marks["inventory_s"] = now - t0
            reconciled = counter_sum(metrics, "redfish_subscriptions_total")
            if "subscriptions_s" not in marks and reconciled >= n_bmcs:
                marks["subscriptions_s"] = now - t0
            if "spares_s" not in marks and counter_sum(metrics, "spare_checks_total") >= 1:
                marks["spares_s"] = now - t0
            done = int(counter_sum(metrics, "redfish_health_poll_cycles_total"))
            if done > len(cycles):
                total = histogram_sum(metrics, "redfish_health_poll_cycle_seconds")
                cpu = time.process_time()
                cycles.append({"duration_s": round(total - last_sum, 2),
                               "cpu_s": round(cpu - last_cycle_c, 2),
                               "wall_s": round(now - last_cycle_t, 2),
                               "t_end": now})
                last_sum, last_cycle_t, last_cycle_c = total, now, cpu
                progress(f"daemon: cycle {len(cycles)} took {cycles[-1]['duration_s']} s "
                         f"(cpu {cycles[-1]['cpu_s']} s over {cycles[-1]['wall_s']} s)")
                if len(cycles) == args.storm_cycle - 1 and args.trap_rate > 0 and \
                        daemon.snmp_address is not None:
                    # the storm starts a little into its cycle, while the reads are going on
                    await asyncio.sleep(min(2.0, args.interval / 10))
                    decided_before = counter_sum(metrics, "decisions_total")
                    count = int(args.trap_rate * args.trap_seconds)
                    storm["t0"] = time.monotonic()
                    storm_task = asyncio.create_task(
                        send_traps(daemon.snmp_address[1], args.trap_rate, count, datagram))
            if storm_task is not None and storm_task.done() and "sent" not in storm:
                sent = storm_task.result()
                storm.update(sent=int(sent["sent"]), send_rate=round(sent["sent"] / max(1e-9, sent["t1"]
                                                                                    - sent["t0"])),
                             t1=time.monotonic())
                # drain: until every trap is decided or nothing new for 2 s
                last, seen = time.monotonic(), counter_sum(metrics, "decisions_total")
                while counter_sum(metrics, "decisions_total") - decided_before < storm["sent"]:
                    await asyncio.sleep(0.05)
                    value = counter_sum(metrics, "decisions_total")
                    if value != seen:
                        seen, last = value, time.monotonic()
                    elif time.monotonic() - last > 2.0 or time.monotonic() - storm["t1"] > DRAIN_LIMIT:
                        break  # nothing new for 2 s (the rest is lost), or still behind after DRAIN_LIMIT
                storm["decided"] = int(counter_sum(metrics, "decisions_total") - decided_before)
                storm["lost"] = storm["sent"] - storm["decided"]
                storm["lag_after_sender_s"] = round(last - storm["t1"], 3) if storm["lost"] == 0 else None
                storm["drained"] = time.monotonic()
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        lab_cpu = proc_cpu(lab.pid) - lab_c0
        pages = await page_times(daemon, lag)
        st = proc_status()
        polls = metrics.series().get("redfish_health_polls_total", {})
        subs = metrics.series().get("redfish_subscriptions_total", {})
        spare_readings = metrics.series().get("spare_readings_total", {})
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 120)
        lag_stop.set()
        await lag_task
        gc.callbacks.remove(collections)
        if sampler is not None:
            sampler.stop()
    storm_window = (storm.get("t0", math.inf), storm.get("drained", storm.get("t1", math.inf)))
    return {
        "cycles": [{k: v for k, v in c.items() if k != "t_end"} for c in cycles],
        "overruns": int(metrics.get("redfish_health_poll_overruns_total")),
        "marks": {k: round(v, 2) for k, v in marks.items()},
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "lab_cpu_s": round(lab_cpu, 2),
        "rss_kib": st["VmRSS"], "hwm_kib": st["VmHWM"], "rss_before_kib": rss0["VmRSS"],
        "lag": lag.stats(), "lag_storm": lag.stats(*storm_window),
        "lag_cycles": [lag.stats(a, b) for a, b in zip([t0] + [c["t_end"] for c in cycles],
                                                        [c["t_end"] for c in cycles], strict=False)],
        "gc_full": {"collected": collections.collected, "frozen": collections.frozen,
                    "refreezes": daemon.collector.refreezes,
                    "sweeps": daemon.collector.sweeps},
        "gc_cycles": [collections.stats(lag, a, b) for a, b in zip(
            [t0] + [c["t_end"] for c in cycles], [c["t_end"] for c in cycles], strict=False)],
        "polls": polls, "subscriptions": subs, "spare_readings": spare_readings,
        "storm": {k: v for k, v in storm.items() if k not in ("t0", "t1", "drained")},
        "pages": pages,
        **({"stalls": sampler.top()} if sampler is not None else {}),
    }


# --- report ------------------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    d, b = r["daemon"], r["baseline"]
    interval = r["args"]["interval"]
    steady_b = b["cycles"][1:] or b["cycles"]
    b_cpu = sum(c["cpu_s"] for c in steady_b) / len(steady_b)
    b_wall = sum(c["wall_s"] for c in steady_b) / len(steady_b)
    storm_i = r["args"]["storm_cycle"]
    steady_d = [c for i, c in enumerate(d["cycles"], 1) if i not in (1, storm_i)] or d["cycles"]
    d_cpu = sum(c["cpu_s"] for c in steady_d) / len(steady_d)
    rows = [
        f"BMCs: {r['bmcs']} ({r['args']['enclosures']} enclosures, lab start {r['lab_start_s']} s, "
        f"lab RSS {r['lab_rss_kib'] // 1024} MB)",
        "| measure | daemon | bare aiohttp baseline | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(d["cycles"], 1):
        what = "start: + inventory, subscriptions, spares" if i == 1 else \
            "+ trap storm" if i == storm_i and d["storm"] else "steady"
        lag = d["lag_cycles"][i - 1] if i <= len(d["lag_cycles"]) else {}
        rows.append(f"| cycle {i} ({what}): duration, CPU, loop lag p50/p99/max | {c['duration_s']} s, "
                    f"cpu {c['cpu_s']} s over {c['wall_s']} s, lag {lag.get('p50_ms')} / "
                    f"{lag.get('p99_ms')} / {lag.get('max_ms')} ms | "
                    f"{b['cycles'][min(i - 1, len(b['cycles']) - 1)]['wall_s']:.2f} s, cpu "
                    f"{b['cycles'][min(i - 1, len(b['cycles']) - 1)]['cpu_s']:.2f} s (unspread) | | "
                    f"≤ {interval:g} s |")
    for i, g in enumerate(d.get("gc_cycles", []), 1):
        rows.append(f"| cycle {i}: collections gen0/1/2 (total ms; gen2 longest) | "
                    f"{g['gen0']['n']} / {g['gen1']['n']} / {g['gen2']['n']} ({g['gen0']['total_ms']:g} / "
                    f"{g['gen1']['total_ms']:g} / {g['gen2']['total_ms']:g} ms; {g['gen2']['max_ms']:g} ms); "
                    f"ticks late > 100 ms: {g['late_ticks']}, {g['late_ticks_with_gc']} with a collection "
                    f"> 50 ms | | | |")
    rows.append(f"| CPU per steady cycle | {d_cpu:.2f} s | {b_cpu:.2f} s | x{d_cpu / max(1e-9, b_cpu):.2f} "
                f"| < {interval:g} s (one core) |")
    rows.append(f"| CPU share of one core, whole run | {d['cpu_s'] / d['wall_s']:.0%} | "
                f"{b_cpu / max(1e-9, b_wall):.0%} (flat out) | | < 100% |")
    rows.append(f"| VmRSS / VmHWM | {d['rss_kib'] // 1024} / {d['hwm_kib'] // 1024} MB | "
                f"{b['rss_kib'] // 1024} / {b['hwm_kib'] // 1024} MB | x{d['rss_kib'] / b['rss_kib']:.2f} | "
                f"< {TARGET_RSS_MB:g} MB |")
    for name, key in (("loop lag, whole run", "lag"), ("loop lag, during the trap storm", "lag_storm")):
        lag = d.get(key) or {}
        if lag.get("n"):
            rows.append(f"| {name} p50/p99/max | {lag['p50_ms']} / {lag['p99_ms']} / {lag['max_ms']} ms | "
                        f"| | p99 < {TARGET_LAG_P99_MS:g} ms |")
    s = d["storm"]
    if s:
        rows.append(f"| trap storm {r['args']['trap_rate']:g}/s x {r['args']['trap_seconds']:g} s | sent "
                    f"{s.get('sent')}, decided {s.get('decided')}, lost {s.get('lost')}, lag after sender "
                    f"{s.get('lag_after_sender_s')} s | | | no loss |")
    rows.append(f"| start: inventory / subscriptions on every BMC / spare check | "
                f"{d['marks'].get('inventory_s')} / {d['marks'].get('subscriptions_s')} / "
                f"{d['marks'].get('spares_s')} s | | | |")
    if d.get("spare_readings"):
        rows.append(f"| spare checks' readings (health poll / BMC read) | {d['spare_readings']} | | | |")
    floor = d.get("pages", {}).get("/healthz")
    for path, page in d.get("pages", {}).items():
        ratio = f"x{page['median_ms'] / floor['median_ms']:.1f}" if floor and floor["median_ms"] else ""
        rows.append(f"| GET {path}: median, size, loop lag max meanwhile | {page['median_ms']} ms, "
                    f"{page['bytes'] / 1024:,.0f} KB, {page['lag_max_ms']} ms | GET /healthz "
                    f"{floor['median_ms'] if floor else '?'} ms | {ratio} | |")
    rows.append(f"| overruns | {d['overruns']} | | | 0 |")
    rows.append(f"| health polls / subscriptions | {d['polls']} / {d['subscriptions']} | baseline errors "
                f"{b['errors']} | | |")
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    progress(f"starting the lab: {args.enclosures} enclosures")
    async with lab_process(args.enclosures) as lab:
        bmcs = await lab_bmcs(lab.manager_url)
        lab_rss = proc_status(lab.pid)["VmRSS"]
        progress(f"lab up in {lab.start_s:.1f} s: {len(bmcs)} BMCs, RSS {lab_rss // 1024} MB")
        progress("baseline: bare aiohttp client (child process)")
        baseline = await asyncio.to_thread(run_baseline, lab.manager_url, args.concurrency,
                                           args.baseline_cycles)
        progress(f"baseline: {baseline['cycles']}")
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
            progress(f"daemon: {args.cycles} cycles of {args.interval:g} s")
            daemon = await run_daemon(args, lab, len(bmcs), Path(d))
        lab_rss_end = proc_status(lab.pid)
    return {"bench": "scale", "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                     "load1": os.getloadavg()[0]},
            "args": vars(args), "bmcs": len(bmcs), "lab_start_s": round(lab.start_s, 1),
            "lab_rss_kib": lab_rss_end["VmRSS"], "baseline": baseline, "daemon": daemon}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--enclosures", type=int, default=715, help="lab enclosures (~14 BMCs each)")
    p.add_argument("--interval", type=float, default=60.0, help="redfish_events.poll_interval")
    p.add_argument("--spread", type=float, default=0.8, help="redfish_events.poll_spread")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64, help="redfish_events.max_concurrency")
    p.add_argument("--max-connections", type=int, default=128, help="redfish.max_connections")
    p.add_argument("--trap-rate", type=float, default=2000.0, help="traps/s during cycle 2 (0: none)")
    p.add_argument("--trap-seconds", type=float, default=10.0)
    p.add_argument("--storm-cycle", type=int, default=3, help="the cycle the trap storm runs in")
    p.add_argument("--baseline-cycles", type=int, default=1, help="steady baseline cycles")
    p.add_argument("--subscription-check", type=float, default=300.0,
                   help="redfish_events.check_interval (the daemon's default: every BMC's subscription "
                        "reconciled every 300 s; 86400: once, at start)")
    p.add_argument("--spare-delay", type=float, default=0.0,
                   help="spares.initial_delay (the daemon's default is 30; 0: the first check at start)")
    p.add_argument("--spare-check", type=float, default=300.0,
                   help="spares.check_interval (the daemon's default 300; the first check at start)")
    p.add_argument("--stalls", action="store_true",
                   help="sample the daemon's stack while the loop is over 100 ms late (a profile: its "
                        "sampling thread costs CPU; not for the figures)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child-baseline", metavar="MANAGER_URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_baseline:
        print(json.dumps(asyncio.run(baseline_child(args.child_baseline, args.concurrency,
                                                    args.baseline_cycles))))
        return 0
    results = asyncio.run(main_async(args))
    print(table(results))
    text = json.dumps(results)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
