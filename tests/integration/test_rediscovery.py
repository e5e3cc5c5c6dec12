"""The durable rediscovery timer, on the fake clock: fires after `delay`, not before; retries while the
host is not up; survives a restart of the daemon."""

from __future__ import annotations

from pathlib import Path

from lab.main import LabSimulator
from monitor.core.clock import FakeClock
from tests.support.harness import DaemonFactory, LabControl, advance_to, monitor_config

DELAY = 600.0
# Power changes land before the next BMC read, so the flow never sleeps on the (fake) clock.
INSTANT = {"power_off_s": 0, "power_on_s": 0, "boot_s": 0}


async def test_rediscovery_fires_after_the_delay(lab: LabSimulator, lab_control: LabControl,
                                                 start_daemon: DaemonFactory, tmp_path: Path,
                                                 token: str) -> None:
    clock = FakeClock()
    await lab_control.call("PUT", "/lab/v1/latency", INSTANT)
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token,
                                          rediscovery={"delay": DELAY, "retries": 2,
                                                       "retry_interval": 300}), clock=clock)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "completed", job
    assert job["rediscovery"]["state"] == "scheduled"
    spare = job["spare"]
    due = clock.time() + DELAY
    await clock.advance(DELAY - 1)
    assert (await lab_control.server(spare))["host"] is None  # not yet
    assert h.jobs[job["job"]].rediscovery == job["rediscovery"]
    await advance_to(clock, due)
    await h.wait_for(lambda: (h.jobs[job["job"]].rediscovery or {}).get("state") == "done")
    red = h.jobs[job["job"]].rediscovery or {}
    assert red["attempts"] == 1 and "discovered as host11.lab.example" in red["detail"]
    assert (await lab_control.server(spare))["host"]["name"] == "host11.lab.example"


async def test_rediscovery_retries_while_the_host_is_not_up(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    clock = FakeClock()
    await lab_control.call("PUT", "/lab/v1/latency", INSTANT)
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token,
                                          rediscovery={"delay": DELAY, "retries": 1,
                                                       "retry_interval": 300}), clock=clock)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    spare = job["spare"]
    await lab_control.call("PUT", f"/lab/v1/servers/{spare}", {"power": "Off"})  # a slow boot
    due = clock.time() + DELAY
    await advance_to(clock, due)
    await h.wait_for(lambda: (h.jobs[job["job"]].rediscovery or {}).get("attempts") == 1)
    red = h.jobs[job["job"]].rediscovery or {}
    assert red["state"] == "scheduled" and "retry 1/1" in red["detail"]
    await lab_control.call("PUT", f"/lab/v1/servers/{spare}", {"power": "On"})
    await advance_to(clock, due + 300)
    await h.wait_for(lambda: (h.jobs[job["job"]].rediscovery or {}).get("state") == "done")
    assert (h.jobs[job["job"]].rediscovery or {})["attempts"] == 2


async def test_rediscovery_gives_up_and_says_so(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    clock = FakeClock()
    await lab_control.call("PUT", "/lab/v1/latency", INSTANT)
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token,
                                          rediscovery={"delay": DELAY, "retries": 0}), clock=clock)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    await lab_control.call("PUT", f"/lab/v1/servers/{job['spare']}", {"power": "Off"})
    await advance_to(clock, clock.time() + DELAY)
    await h.wait_for(lambda: (h.jobs[job["job"]].rediscovery or {}).get("state") == "failed")
    assert "rerun discovery" in (h.jobs[job["job"]].rediscovery or {})["detail"]


async def test_rediscovery_survives_a_restart(lab: LabSimulator, lab_control: LabControl,
                                              start_daemon: DaemonFactory, tmp_path: Path,
                                              token: str) -> None:
    clock = FakeClock()
    await lab_control.call("PUT", "/lab/v1/latency", INSTANT)
    cfg = monitor_config(lab.manager_url, tmp_path, token, rediscovery={"delay": DELAY})
    h = await start_daemon(cfg, clock=clock)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    # Stop the first daemon (as SIGTERM does) before the timer is due.
    h.daemon_stop()
    await h.stopped()
    later = FakeClock(start=clock.time() + DELAY + 5)
    h2 = await start_daemon(cfg, clock=later)

    def done() -> bool:
        j = h2.jobs.get(job["job"])
        return j is not None and (j.rediscovery or {}).get("state") == "done"

    await h2.wait_for(done)
    assert (await lab_control.server(job["spare"]))["host"] is not None
