"""The daemon's /metrics against Prometheus' own checker (promtool, Debian's `prometheus` package), the
example alert rules and the Grafana dashboard in config/ against the metrics the daemon exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CONTENT_TYPE_LATEST

from lab.main import LabSimulator
from monitor import __version__
from monitor.core.metrics import COUNTERS, HISTOGRAMS, PHASES
from tests.support.harness import DaemonFactory, Harness, monitor_config

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (./dev test installs it)"
    return found


async def run_promtool(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        promtool(), *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def scrape(h: Harness) -> str:
    async with h.http.get(h.base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return await r.text()


def samples(text: str) -> dict[str, float]:
    return {m.group(1) + (m.group(2) or ""): float(m.group(3)) for m in SAMPLE.finditer(text)}


async def test_metrics_pass_promtool_and_start_at_zero(lab: LabSimulator, start_daemon: DaemonFactory,
                                                       tmp_path: Path, token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    text = await scrape(h)
    rc, out = await run_promtool("check", "metrics", stdin=text.encode())
    assert rc == 0, out
    values = samples(text)
    for name in COUNTERS:  # every counter at 0 before any event
        full = f"failover_monitor_{name}"
        assert f"# HELP {full} " in text and f"# TYPE {full} counter" in text
        series = {k: v for k, v in values.items() if k == full or k.startswith(full + "{")}
        assert series, name
        if name not in ("api_rejected_total",):  # a scrape itself is never refused
            assert set(series.values()) == {0.0}, (name, series)
    assert values['failover_monitor_failover_jobs_finished_total{state="failed"}'] == 0
    assert values['failover_monitor_snmp_dropped_total{reason="bad_community"}'] == 0
    for name in HISTOGRAMS:
        assert f"# TYPE failover_monitor_{name} histogram" in text
    (build,) = [k for k in values if k.startswith("failover_monitor_build_info{")]
    assert f'version="{__version__}"' in build and 'python="3.' in build and values[build] == 1
    assert values["failover_monitor_failover_paused"] == 0
    spares = {k: v for k, v in values.items() if k.startswith("failover_monitor_spares{")}
    assert spares and sum(spares.values()) >= 1, spares
    assert all('domain_group="' in k and 'model="' in k for k in spares)
    assert not any("completed" in k.split("{")[0] or k[-12:] == "failed_total" for k in values)

    status, _ = await h.api("POST", "/api/v1/pause", {"reason": "change window"})
    assert status in (200, 201, 204)
    assert samples(await scrape(h))["failover_monitor_failover_paused"] == 1


async def test_a_scrape_is_formatted_off_the_loop(lab: LabSimulator, start_daemon: DaemonFactory,
                                                 tmp_path: Path, token: str) -> None:
    """At 10,000 servers the exposition is tens of ms of formatting: it runs in a worker thread, so a
    scrape does not stall the loop (a gauge's read tells where it ran)."""
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    ran_in: list[threading.Thread] = []

    def read() -> dict[Any, float]:
        ran_in.append(threading.current_thread())
        return {"": 1.0}

    h.daemon.metrics.gauge("probe", read, "where the scrape ran")
    assert samples(await scrape(h))["failover_monitor_probe"] == 1
    assert ran_in and all(t is not threading.main_thread() for t in ran_in), ran_in


async def test_a_failover_fills_the_histograms(lab: LabSimulator, start_daemon: DaemonFactory,
                                              tmp_path: Path, token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    before = samples(await scrape(h))
    assert before['failover_monitor_failover_job_duration_seconds_count{state="completed"}'] == 0
    job = await h.wait_job(await h.failover("enc1-bay1", "fan failure"))
    assert job["state"] == "completed", job
    # The spare the job used leaves the pool at the inventory view's next refresh (read it now).
    await h.daemon.inventory_view.refresh(h.daemon.adapters.manager)
    status, spare = await h.api("GET", f"/api/v1/servers/{job['spare']}")
    assert status == 200, spare
    key = f'failover_monitor_spares{{domain_group="{spare["domain_group"]}",model="{spare["model"]}"}}'
    assert before[key] >= 1, before
    text = await scrape(h)
    assert samples(text)[key] == before[key] - 1, key
    values = samples(text)
    assert values['failover_monitor_failover_jobs_finished_total{state="completed"}'] == 1
    assert values['failover_monitor_failover_jobs_created_total'] == 1
    assert values['failover_monitor_failover_job_duration_seconds_count{state="completed"}'] == 1
    assert values['failover_monitor_failover_job_duration_seconds_sum{state="completed"}'] > 0
    for phase, _, _ in PHASES:
        count = f"failover_monitor_failover_phase_duration_seconds_count{{phase=\"{phase}\"}}"
        assert values[count] == 1, phase
    assert values['failover_monitor_failover_job_duration_seconds_bucket{le="+Inf",state="completed"}'] == 1
    rc, out = await run_promtool("check", "metrics", stdin=text.encode())
    assert rc == 0, out


async def test_promtool_refuses_a_metric_without_help() -> None:
    """The check can fail: the same exposition with one HELP line removed is refused."""
    from monitor.core.metrics import Metrics

    text = Metrics().render()
    broken = re.sub(r"^# HELP failover_monitor_store_retries_total .*\n", "", text, flags=re.M)
    assert broken != text
    assert (await run_promtool("check", "metrics", stdin=text.encode()))[0] == 0
    rc, out = await run_promtool("check", "metrics", stdin=broken.encode())
    assert rc != 0 and "no help text" in out, out


async def test_alert_rules_pass_promtool() -> None:
    rc, out = await run_promtool("check", "rules", str(RULES))
    assert rc == 0 and "SUCCESS" in out, out


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


async def test_dashboard_and_rules_name_only_exported_metrics(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    text = await scrape(h)
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["panels"], list)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["type"] and p["title"] and set(p["gridPos"]) == {"x", "y", "w", "h"}
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
    used: set[str] = set()
    rules = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 8
    for expr in dashboard_exprs(dash) + rules:
        names = re.findall(r"\bfailover_monitor_[a-z_]+", expr)
        assert names or "up{" in expr, expr
        used |= {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}
    # The MQTT publisher's gauges exist when `mqtt:` is configured (this daemon has none).
    mqtt = {f"failover_monitor_{n}" for n in re.findall(r'gauge\("(mqtt_[a-z_]+)"',
                                                         (ROOT / "adapters" / "mqtt.py").read_text())}
    assert mqtt == {"failover_monitor_mqtt_buffered", "failover_monitor_mqtt_connected"}
    missing = used - exported - mqtt
    assert not missing, f"not exported by the daemon: {sorted(missing)}"
    assert {"failover_monitor_spares", "failover_monitor_failover_paused", "failover_monitor_build_info",
            "failover_monitor_failover_phase_duration_seconds"} <= used
