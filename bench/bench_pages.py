#!/usr/bin/env python
"""What a page costs the daemon's event loop at datacenter scale: the dashboard's overview and the
/metrics exposition, built in a worker thread (as the daemon does) against the same work done on the
loop (the baseline: how it was before), in the same run.

The lab runs as its own process with `--enclosures` enclosures (715: 10,726 servers, 10,009 BMCs), the
real Daemon in this process (SQLite, the inventory from the lab's manager API, health polls off so that
nothing else runs on the loop). For each of the two pages, `--repeat` times each way: the seconds the
work takes and the loop's largest lateness meanwhile, seen by a ticker sleeping 2 ms.

Run: `.venv/bin/python bench/bench_pages.py [--enclosures 715] [--repeat 5] [--json F]` (~40 s).
Loopback only. A table, then the results as JSON on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from bench_scale import lab_process, progress  # noqa: E402

from monitor.app.daemon import Daemon  # noqa: E402
from monitor.core.config import LoadedConfig, MonitorConfig  # noqa: E402
from monitor.dashboard import render, web  # noqa: E402

TICK = 0.002


async def lag_during(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(seconds `work` took, the loop's largest lateness meanwhile)."""
    loop = asyncio.get_running_loop()
    worst, done = 0.0, False

    async def tick() -> None:
        nonlocal worst
        while not done:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            worst = max(worst, loop.time() - due)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(TICK * 5)
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    done = True
    await ticker
    return took, worst


async def run(args: argparse.Namespace) -> dict[str, Any]:
    progress(f"starting the lab: {args.enclosures} enclosures")
    async with lab_process(args.enclosures) as lab:
        with tempfile.TemporaryDirectory(prefix="bench-pages-") as d:
            config = MonitorConfig.model_validate({
                "instance": "bench-pages", "http": {"listen": "127.0.0.1:0"}, "store": str(Path(d) / "s.db"),
                "inventory": {"source": "lab", "lab": {"url": lab.manager_url, "timeout": 120}},
                "redfish_events": {"poll_interval": 0},
                "snmp": {"listen": "127.0.0.1:0", "communities": ["public"]},
            })
            daemon = Daemon(LoadedConfig(config, None))
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                await asyncio.wait_for(daemon.ready.wait(), 120)
                while daemon.inventory() is None:
                    await asyncio.sleep(0.1)
                inv = daemon.inventory()
                assert inv is not None and daemon.dashboard is not None
                dashboard, metrics = daemon.dashboard, daemon.metrics
                progress(f"daemon up: {len(inv.servers)} servers")

                def overview_on_loop_parts() -> tuple[str, int]:
                    # the dashboard's two worker-thread parts, run here on the loop as before
                    rows, counts, matched = web.server_page(inv, [], set(), web.ServerQuery(), web.PAGE_SIZE)
                    view["servers"], view["server_counts"], view["servers_matched"] = rows, counts, matched
                    return render.overview(view, token_required=True), len(rows)

                view = await dashboard.overview_view()  # the async parts (status, jobs, spares): shared
                html, _ = overview_on_loop_parts()
                text = metrics.render()

                async def overview_loop() -> None:
                    overview_on_loop_parts()

                async def overview_thread() -> None:
                    await asyncio.to_thread(overview_on_loop_parts)

                async def metrics_loop() -> None:
                    metrics.render()

                async def metrics_thread() -> None:
                    await asyncio.to_thread(metrics.render)

                results: dict[str, Any] = {"servers": len(inv.servers), "overview_bytes": len(html.encode()),
                                           "metrics_bytes": len(text.encode())}
                for name, on_loop, in_thread in (("overview", overview_loop, overview_thread),
                                                 ("metrics", metrics_loop, metrics_thread)):
                    for way, fn in (("loop", on_loop), ("thread", in_thread)):
                        runs = [await lag_during(fn) for _ in range(args.repeat)]
                        results[f"{name}_{way}"] = {
                            "took_ms": round(statistics.median(t for t, _ in runs) * 1000, 1),
                            "lag_max_ms": round(max(w for _, w in runs) * 1000, 1),
                            "lag_median_ms": round(statistics.median(w for _, w in runs) * 1000, 1)}
                        progress(f"{name} on the {way}: {results[f'{name}_{way}']}")
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)
    return results


def table(r: dict[str, Any]) -> str:
    rows = [f"{r['servers']:,} servers; the overview {r['overview_bytes'] / 1024:,.0f} KB, /metrics "
            f"{r['metrics_bytes'] / 1024:,.0f} KB",
            "| page | built | took (median) | loop lag, median / max of the runs | lag ratio (median) |",
            "|---|---|---|---|---|"]
    for name in ("overview", "metrics"):
        base = r[f"{name}_loop"]
        for way in ("loop", "thread"):
            m = r[f"{name}_{way}"]
            ratio = m["lag_median_ms"] / base["lag_median_ms"] if base["lag_median_ms"] else float("nan")
            built = "on the loop (baseline: before)" if way == "loop" else "worker thread"
            rows.append(f"| {name} | {built} | {m['took_ms']} ms | {m['lag_median_ms']} / "
                        f"{m['lag_max_ms']} ms | x{ratio:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--enclosures", type=int, default=715)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    results = asyncio.run(run(args))
    print(table(results))
    text = json.dumps(results)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
