"""Events through the whole daemon: Redfish pushes per second through the listener, traps per second
decoded, decided and recorded with no loss, and the latency from a trap's arrival to its job starting.

Each figure has a baseline measured in the same run:
- Redfish: a bare aiohttp handler that reads the JSON body and answers 204 (the HTTP floor);
- traps: the same datagrams counted by a bare asyncio DatagramProtocol (the Python UDP floor);
- latency: a UDP datagram's travel to a bare DatagramProtocol.

    .venv/bin/python bench/bench_events.py [--quick] [--json FILE]
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from adapters.redfish.listener import bmc_token
from lab.config import LabConfig
from lab.main import LabSimulator
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


async def post_rate(url: str, headers: dict[str, str], body: bytes, seconds: float, conc: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as s:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with s.post(url, data=body, headers=headers) as r:
                    assert r.status == 204, r.status
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
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
    """Send from a separate process (so the sender does not take the receiver's GIL); seconds taken."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--blast", str(port), data.hex(), str(count),
        str(rate), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return float(out.decode().strip())


def blast(port: int, data: bytes, count: int, rate: float) -> float:
    """Send `count` datagrams at `rate`/s; returns the seconds it took."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.perf_counter()
        for i in range(count):
            target = t0 + i / rate
            while time.perf_counter() < target:
                pass
            s.sendto(data, ("127.0.0.1", port))
        return time.perf_counter() - t0


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.n = 0
        self.times: list[float] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.n += 1
        self.times.append(time.perf_counter())


async def trap_rates(daemon: Daemon, port: int, rates: list[int], seconds: float) -> list[dict[str, Any]]:
    assert daemon.pipeline is not None
    data = encode_v2c_trap("public", "1.3.6.1.4.1.232.0.6015", {"1.3.6.1.2.1.1.5.0": "host11.lab.example"})
    out = []
    for rate in rates:
        before = daemon.pipeline.processed
        count = int(rate * seconds)
        t0 = time.perf_counter()
        sent_s = await blast_process(port, data, count, rate)
        deadline = time.perf_counter() + 30
        while daemon.pipeline.processed - before < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
            if daemon.pipeline.processed - before >= count:
                break
            if time.perf_counter() - t0 > sent_s + 5 and daemon.events.qsize() == 0:
                break
        got = daemon.pipeline.processed - before
        await daemon.pipeline.flush()
        out.append({"rate": rate, "sent": count, "decided": got, "lost": count - got,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "lag_s": round(time.perf_counter() - t0 - sent_s, 2)})
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
            await blast_process(port, data, count, rate)
            await asyncio.sleep(0.2)
            out.append({"rate": rate, "sent": count, "received": proto.n - before})
    finally:
        transport.close()
    return out


async def trap_latency(daemon: Daemon, port: int, servers: list[tuple[str, str]]) -> list[float]:
    """Seconds from sending a CPU-failure trap to its job being created, one server at a time."""
    assert daemon.runner is not None
    created: dict[str, float] = {}
    seen = asyncio.Event()

    async def on_job(job: Job) -> None:
        if job.server not in created:
            created[job.server] = time.perf_counter()
            seen.set()

    daemon.runner.add_listener(on_job)
    out = []
    for sid, addr in servers:
        data = encode_v2c_trap("public", "1.3.6.1.4.1.232.0.1026",
                               {"1.3.6.1.4.1.232.11.2.11.1.0": 16, "1.3.6.1.2.1.1.5.0": "x"})
        seen.clear()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((addr, 0))
            t0 = time.perf_counter()
            s.sendto(data, ("127.0.0.1", port))
        await asyncio.wait_for(seen.wait(), 10)
        out.append(created[sid] - t0)
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


def free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main_async(quick: bool) -> dict[str, Any]:
    seconds = 1.0 if quick else 3.0
    rates = [1000, 2000] if quick else [1000, 2000, 4000, 6000, 8000]
    res: dict[str, Any] = {}
    lab_cfg = LabConfig.model_validate({"listen": "127.0.0.1:0", "latency": ZERO, "enclosures": 4})
    async with LabSimulator(lab_cfg) as lab:
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
                res["redfish_per_s"] = await post_rate(f"{base}/api/v1/events/redfish",
                                                       {"Authorization": f"Bearer {token}"}, body,
                                                       seconds, 16)
                res["redfish_bare_per_s"] = await bare_http_rate(seconds, 16)
                res["traps"] = await trap_rates(daemon, snmp_port, rates, seconds)
                res["traps_bare"] = await bare_udp_rate(rates, seconds)
                targets = [(s.id, s.management_addresses[0]) for s in inv.servers.values()
                           if s.profile and s.management_addresses and s.id.startswith(("enc3", "enc4"))]
                lat = await trap_latency(daemon, snmp_port, targets[: 5 if quick else 12])
                res["latency_ms"] = {"median": statistics.median(lat) * 1000, "max": max(lat) * 1000,
                                     "n": len(lat)}
                floor = await bare_latency(200)
                res["latency_bare_ms"] = {"median": statistics.median(floor) * 1000}
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
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = asyncio.run(main_async(args.quick))
    print("bench_events (daemon in-process with the lab; SQLite synchronous=full; built-in rule packs)")
    r, b = res["redfish_per_s"], res["redfish_bare_per_s"]
    print(f"  Redfish pushes through the listener: {r:,.0f}/s   bare aiohttp handler: {b:,.0f}/s   "
          f"ratio x{r / b:.2f}")
    for t, bare in zip(res["traps"], res["traps_bare"], strict=True):
        print(f"  traps at {t['rate']:>5}/s for the run: sent {t['sent']:>6}, decided and recorded "
              f"{t['decided']:>6}, lost {t['lost']:>5}, lag after the last {t['lag_s']:.2f} s   "
              f"(bare UDP received {bare['received']}/{bare['sent']})")
    lat, floor = res["latency_ms"], res["latency_bare_ms"]
    print(f"  trap arrival -> job created: median {lat['median']:.1f} ms, max {lat['max']:.1f} ms "
          f"(n={lat['n']})   bare UDP delivery: {floor['median']:.3f} ms   "
          f"ratio x{lat['median'] / floor['median']:.0f}")
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
