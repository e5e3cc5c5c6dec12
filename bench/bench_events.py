"""Events through the whole daemon (the lab as its own process): Redfish pushes per second through the
listener, traps per second decoded, decided and recorded with no loss, and the latency from a trap's
arrival to its job starting.

Each figure has a baseline measured in the same run:
- Redfish: a bare aiohttp handler that reads the JSON body and answers 204 (the HTTP floor);
- traps: the same datagrams counted by a bare asyncio DatagramProtocol (the Python UDP floor);
- latency: a UDP datagram's travel to a bare DatagramProtocol. Measured twice: for BMCs the daemon has
  not talked to (a full TLS handshake, the system path looked up), and for BMCs read once before, as
  the health poller leaves them (path known, connection closed since, TLS session resumed).

    .venv/bin/python bench/bench_events.py [--quick] [--latency-n N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web
from bench_jobs import lab_process

from adapters.redfish.listener import bmc_token
from lab.traps import encode_v2c_trap
from monitor.app.daemon import Daemon
from monitor.core.config import LoadedConfig, MonitorConfig
from monitor.core.model import Job

ZERO = {"bmc_ms": 0, "manager_ms": 0, "power_off_s": 0, "power_on_s": 0, "boot_s": 0}
SECRET = "bench-secret"
EVENT = {"@odata.type": "#Event.v1_7_0.Event", "Id": "1", "Name": "Event", "Events": [{
    "MemberId": "0", "EventType": "Alert", "MessageId": "iLOEvents.2.3.FanRedundancyLost",
    "MessageSeverity": "Warning", "Message": "Fan redundancy lost", "OriginOfCondition":
    {"@odata.id": "/redfish/v1/Chassis/1"}}]}


def config(lab_url: str, tmp: Path, snmp_port: int) -> MonitorConfig:
    site = tmp / "site.yaml"  # many failovers in a row: the storm guard and rate limit would stop them
    site.write_text("guards: {storm: null, rate_limit: null}\n")
    return MonitorConfig.model_validate({
        "instance": "bench", "http": {"listen": "127.0.0.1:0"}, "store": str(tmp / "m.db"),
        "sqlite": {"synchronous": "full"},
        "inventory": {"source": "lab", "lab": {"url": lab_url}},
        "snmp": {"listen": f"127.0.0.1:{snmp_port}", "communities": ["public"], "queue_size": 100_000},
        "redfish_events": {"secret": SECRET, "poll_interval": 0},
        "failover": {"poll_interval": 0.01},
        "rules": {"files": [str(site)]},
    })


async def post_rate(url: str, headers: dict[str, str], body: bytes, seconds: float, conc: int,
                    decided: Callable[[], int] | None = None) -> float:
    """Pushes per second from `conc` clients for `seconds`. With `decided` (the daemon's count of
    decided events), the clock stops only when every accepted push has also been decided: a listener
    that only queued quickly would not look faster than the daemon is."""
    done = 0
    deadline = time.perf_counter() + seconds
    before = decided() if decided else 0
    async with aiohttp.ClientSession() as s:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with s.post(url, data=body, headers=headers) as r:
                    assert r.status == 204, r.status
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        while decided is not None and decided() - before < done:
            await asyncio.sleep(0.001)
        return done / (time.perf_counter() - t0)


async def bare_http_rate(seconds: float, conc: int) -> float:
    async def handle(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/e", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await post_rate(f"http://127.0.0.1:{port}/e", {}, json.dumps(EVENT).encode(), seconds, conc)
    finally:
        await runner.cleanup()


async def blast_process(port: int, data: bytes, count: int, rate: float) -> float:
    """Send from a separate process (so the sender does not take the receiver's GIL); returns the
    `time.perf_counter()` of its last datagram (CLOCK_MONOTONIC: one clock for every process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--blast", str(port), data.hex(), str(count),
        str(rate), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return float(out.decode().strip())


def blast(port: int, data: bytes, count: int, rate: float) -> float:
    """Send `count` datagrams at `rate`/s; returns the perf_counter of the last one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.perf_counter()
        for i in range(count):
            target = t0 + i / rate
            while time.perf_counter() < target:
                pass
            s.sendto(data, ("127.0.0.1", port))
        return time.perf_counter()


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.n = 0
        self.times: list[float] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.n += 1
        self.times.append(time.perf_counter())


class Stored:
    """Counts the decisions the pipeline stores (rows given to the store's add_decisions) and when the
    last batch came back committed: the bench's probe, wrapped around the daemon's store."""

    def __init__(self, daemon: Daemon) -> None:
        store = daemon.store
        assert store is not None
        self.rows = 0
        self.last = 0.0
        inner = store.add_decisions

        async def add_decisions(rows: Any, *args: Any, **kw: Any) -> Any:
            ids = await inner(rows, *args, **kw)
            self.rows += len(rows)
            self.last = time.perf_counter()
            return ids

        store.add_decisions = add_decisions  # type: ignore[method-assign]


async def trap_rates(daemon: Daemon, stored: Stored, port: int, rates: list[int],
                     seconds: float) -> list[dict[str, Any]]:
    """Each rate for `seconds`: how many decided and stored, and the lag after the sender's last
    datagram until the last was decided and until it was stored (committed)."""
    assert daemon.pipeline is not None
    pipeline = daemon.pipeline
    data = encode_v2c_trap("public", "1.3.6.1.4.1.232.0.6015", {"1.3.6.1.2.1.1.5.0": "host11.lab.example"})
    out = []
    for rate in rates:
        await asyncio.sleep(0.5)  # the previous step's stragglers are stored
        before, rows_before = pipeline.processed, stored.rows
        count = int(rate * seconds)
        sender = asyncio.create_task(blast_process(port, data, count, rate))
        decided_at = stored_at = 0.0
        while True:  # a 1 ms probe: when the last was decided, when it was stored
            await asyncio.sleep(0.001)
            if not decided_at and pipeline.processed - before >= count:
                decided_at = time.perf_counter()
            if not stored_at and stored.rows - rows_before >= count:
                stored_at = stored.last
            if decided_at and stored_at:
                break
            if sender.done() and time.perf_counter() - sender.result() > 30:
                break  # some were lost
        last_sent = await sender
        got, rows = pipeline.processed - before, stored.rows - rows_before
        out.append({"rate": rate, "sent": count, "decided": got, "stored": rows, "lost": count - rows,
                    "lag_decided_ms": round((decided_at - last_sent) * 1000, 1) if decided_at else None,
                    "lag_stored_ms": round((stored_at - last_sent) * 1000, 1) if stored_at else None})
    return out


async def bare_udp_rate(rates: list[int], seconds: float) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)  # as the daemon's receiver
    sock.bind(("127.0.0.1", 0))
    transport, proto = await loop.create_datagram_endpoint(Counter, sock=sock)
    port = transport.get_extra_info("sockname")[1]
    data = encode_v2c_trap("public", "1.3.6.1.4.1.232.0.6015", {"1.3.6.1.2.1.1.5.0": "x"})
    out = []
    try:
        for rate in rates:
            before = proto.n
            count = int(rate * seconds)
            last_sent = await blast_process(port, data, count, rate)
            await asyncio.sleep(0.2)
            got = proto.n - before
            lag = (proto.times[-1] - last_sent) * 1000 if got else None
            out.append({"rate": rate, "sent": count, "received": got,
                        "lag_ms": round(lag, 2) if lag is not None else None})
    finally:
        transport.close()
    return out


async def trap_latency(daemon: Daemon, lab_url: str, port: int,
                       servers: list[tuple[str, str]]) -> list[float]:
    """Seconds from sending a CPU-failure trap to its failover job being created, one server at a time
    (its blade set Critical in the lab first, so the BMC confirms the fault; each job is let finish
    before the next trap)."""
    assert daemon.runner is not None
    created: dict[str, float] = {}
    seen = asyncio.Event()
    ended = asyncio.Event()

    async def on_job(job: Job) -> None:
        if job.server not in created:
            created[job.server] = time.perf_counter()
            seen.set()
        if not job.state.active:
            ended.set()

    daemon.runner.add_listener(on_job)
    data = encode_v2c_trap("public", "1.3.6.1.4.1.232.0.1026",
                           {"1.3.6.1.4.1.232.11.2.11.1.0": 16, "1.3.6.1.2.1.1.5.0": "x"})
    out = []
    async with aiohttp.ClientSession() as http:
        for sid, addr in servers:
            async with http.put(f"{lab_url}/lab/v1/servers/{sid}", json={"health": "Critical"}) as r:
                assert r.status == 200, await r.text()
            seen.clear()
            ended.clear()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((addr, 0))
                t0 = time.perf_counter()
                s.sendto(data, ("127.0.0.1", port))
            await asyncio.wait_for(seen.wait(), 10)
            out.append(created[sid] - t0)
            await asyncio.wait_for(ended.wait(), 30)
    return out


async def bare_latency(n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Counter, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    out = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(n):
                before = proto.n
                t0 = time.perf_counter()
                s.sendto(b"x" * 100, ("127.0.0.1", port))
                while proto.n == before:
                    await asyncio.sleep(0)
                out.append(proto.times[-1] - t0)
    finally:
        transport.close()
    return out


def close_idle(power: Any) -> None:
    """Close the idle keep-alive connections to BMCs, as aiohttp's cleanup does after 15 s (private
    attributes: the bench only; the TLS sessions, in the contexts, stay)."""
    connector = power._conns.http().connector
    for idle in list(connector._conns.values()):
        for protocol, _ in idle:
            protocol.close()
    connector._conns.clear()


def summary(seconds: list[float]) -> dict[str, float]:
    return {"median": statistics.median(seconds) * 1000, "p99": pct(seconds, 0.99) * 1000,
            "max": max(seconds) * 1000, "n": len(seconds)}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main_async(quick: bool, latency_n: int) -> dict[str, Any]:
    seconds = 1.0 if quick else 3.0
    rates = [1000, 5000] if quick else [1000, 2000, 4000, 5000, 6000, 8000]
    res: dict[str, Any] = {}
    # 32 enclosures: enough production blades for the latency samples, each failed over once. The lab
    # runs as its own process (BMCs are other machines): the daemon is measured without their TLS and
    # JSON work on its core.
    async with lab_process(32, 2) as lab:
        with tempfile.TemporaryDirectory() as d:
            snmp_port = free_udp()
            daemon = Daemon(LoadedConfig(config(lab.manager_url, Path(d), snmp_port), None))
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            await asyncio.wait_for(daemon.ready.wait(), 30)
            while daemon.inventory() is None:
                await asyncio.sleep(0.05)
            try:
                assert daemon.http_address is not None
                base = f"http://{daemon.http_address[0]}:{daemon.http_address[1]}"
                inv = daemon.inventory()
                assert inv is not None
                bmc = inv.servers["enc1-bay2"].bmc
                assert bmc is not None
                token = bmc_token(SECRET, bmc.url)
                body = json.dumps(EVENT).encode()
                await post_rate(f"{base}/api/v1/events/redfish", {"Authorization": f"Bearer {token}"},
                                body, 1.0, 16)  # warm-up: first requests, first decisions of a kind
                assert daemon.pipeline is not None
                pipeline = daemon.pipeline
                res["redfish_per_s"] = await post_rate(f"{base}/api/v1/events/redfish",
                                                       {"Authorization": f"Bearer {token}"}, body,
                                                       seconds, 16, lambda: pipeline.processed)
                await bare_http_rate(1.0, 16)  # the same warm-up
                res["redfish_bare_per_s"] = await bare_http_rate(seconds, 16)
                stored = Stored(daemon)
                res["traps"] = await trap_rates(daemon, stored, snmp_port, rates, seconds)
                res["traps_bare"] = await bare_udp_rate(rates, seconds)
                targets = [(s.id, s.management_addresses[0]) for s in inv.servers.values()
                           if s.profile and s.management_addresses and not s.id.startswith("enc1-")]
                n = 10 if quick else latency_n
                cold, polled = targets[:n], targets[n: 2 * n]
                lat = await trap_latency(daemon, lab.manager_url, snmp_port, cold)
                res["latency_ms"] = summary(lat)
                # As the health poller leaves a BMC: read once (its system path known, its TLS session
                # kept), the connection closed since (a poll interval is longer than the keep-alive).
                power = daemon.adapters.power
                for sid, _ in polled:
                    await power.health(inv.servers[sid])
                close_idle(power)
                lat = await trap_latency(daemon, lab.manager_url, snmp_port, polled)
                res["latency_polled_ms"] = summary(lat)
                floor = await bare_latency(200)
                res["latency_bare_ms"] = {"median": statistics.median(floor) * 1000,
                                          "p99": pct(floor, 0.99) * 1000}
            finally:
                stop.set()
                await task
    return res


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--blast":
        print(blast(int(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latency-n", type=int, default=120, help="trap -> job samples (one failover each)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = asyncio.run(main_async(args.quick, args.latency_n))
    print("bench_events (daemon in-process, the lab its own process; SQLite synchronous=full; "
          "built-in packs)")
    r, b = res["redfish_per_s"], res["redfish_bare_per_s"]
    print(f"  Redfish pushes through the listener: {r:,.0f}/s   bare aiohttp handler: {b:,.0f}/s   "
          f"ratio x{r / b:.2f} (target >= x0.8)")
    for t, bare in zip(res["traps"], res["traps_bare"], strict=True):
        print(f"  traps at {t['rate']:>5}/s: sent {t['sent']:>6}, decided {t['decided']:>6}, stored "
              f"{t['stored']:>6}, lost {t['lost']:>5}; after the sender's last: decided "
              f"+{t['lag_decided_ms']} ms, stored +{t['lag_stored_ms']} ms   "
              f"(bare UDP: {bare['received']}/{bare['sent']}, last +{bare['lag_ms']} ms)")
    floor = res["latency_bare_ms"]
    for key, what in (("latency_ms", "BMC not read before"), ("latency_polled_ms", "BMC polled before")):
        lat = res[key]
        print(f"  trap arrival -> job created, {what}: median {lat['median']:.1f} ms, p99 {lat['p99']:.1f} "
              f"ms, max {lat['max']:.1f} ms (n={lat['n']}; target p99 < 20 ms)")
    print(f"  bare UDP delivery: median {floor['median']:.3f} ms, p99 {floor['p99']:.3f} ms")
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
