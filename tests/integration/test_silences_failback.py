"""Operator maintenance through the daemon and the lab: stored silences stop a failover (an alert
instead, naming the silence) until they expire on the fake clock, and are shared by two monitors on one
store; the guards' state shown and reset with an author; return to service (`spare`) refused for a blade
that reads On or unhealthy at its BMC, accepted when Off and healthy; a failback runs the full flow back
with fencing, and the lab's oracle sees no violation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lab.main import LabSimulator
from monitor.app.cli import main
from monitor.core.clock import FakeClock
from monitor.core.model import JobState
from tests.integration.test_pipeline import CPU, config, crash, decisions, post_event, trap, wait_decisions
from tests.support.harness import DaemonFactory, Harness, LabControl


async def cli(argv: list[str]) -> int:
    """The command line, in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, argv)


INSTANT = {"power_off_s": 0, "power_on_s": 0, "boot_s": 0}
BAY1 = "127.77.1.1"  # enc1-bay1's BMC address


async def silence(h: Harness, **body: object) -> dict[str, object]:
    status, data = await h.api("POST", "/api/v1/silences", {"author": "alice", **body})
    assert status == 201, data
    return dict(data)


async def test_a_silence_stops_a_failover_and_expires_on_the_fake_clock(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    clock = FakeClock()
    await lab_control.call("PUT", "/lab/v1/latency", INSTANT)
    h = await start_daemon(config(lab, tmp_path, token), clock=clock)
    assert (await h.api("POST", "/api/v1/silences", {"author": "a", "kind": "server",
                                                      "target": "enc1-bay1", "duration": "1h"},
                        token=None))[0] == 401
    bad = await h.api("POST", "/api/v1/silences", {"author": "a", "kind": "server", "target": "nope",
                                                    "duration": "1h"})
    assert bad[0] == 404 and "unknown server nope" in bad[1]["error"]
    assert (await h.api("POST", "/api/v1/silences", {"author": "a", "kind": "server",
                                                      "target": "enc1-bay1"}))[0] == 400  # no expiry
    s = await silence(h, kind="enclosure", target="enc1", comment="PSU swap", duration="10m")
    await crash(lab_control, "enc1-bay1")
    await post_event(h, trap(BAY1, CPU))
    await wait_decisions(h, 1)
    (d,) = await decisions(h, "enc1-bay1")
    assert d["action"] == "alert" and d["job"] is None
    assert d["guard"].startswith(f"silenced by maintenance silence {s['id']} (enclosure enc1, by alice: "
                                 "PSU swap; until ")
    assert h.jobs == {}
    status, listed = await h.api("GET", "/api/v1/silences")
    assert status == 200 and [x["id"] for x in listed] == [s["id"]] and listed[0]["state"] == "active"
    _, guards = await h.api("GET", "/api/v1/guards")
    assert guards["cooldowns"] == []  # a silenced decision gives its cooldown back
    await clock.advance(601)  # the silence is over
    assert (await h.api("GET", "/api/v1/silences"))[1] == []
    assert (await h.api("GET", "/api/v1/silences?all=1"))[1][0]["state"] == "expired"
    await post_event(h, trap(BAY1, CPU))
    await h.wait_for(lambda: any(not j.state.active for j in h.jobs.values()))
    (job,) = h.jobs.values()
    assert job.server == "enc1-bay1" and job.state.value == "completed"
    assert (await decisions(h, "enc1-bay1"))[0]["action"] == "failover"
    assert await lab_control.violations() == []


async def test_a_silenced_failover_drops_its_bmc_reading_and_opens_no_decline(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    """The confirmation's BMC read starts while the silences are read; when the decision is silenced,
    that reading is dropped: the blade reads healthy (a confirmation would decline), yet the decision
    says silenced, and no decline window is opened."""
    await lab_control.call("PUT", "/lab/v1/latency", {**INSTANT, "bmc_ms": 50})
    h = await start_daemon(config(lab, tmp_path, token))
    s = await silence(h, kind="server", target="enc1-bay1", comment="DIMM swap", duration="10m")
    await post_event(h, trap(BAY1, CPU))  # no crash: the BMC reads healthy
    await wait_decisions(h, 1)
    (d,) = await decisions(h, "enc1-bay1")
    assert d["action"] == "alert" and d["guard"].startswith(f"silenced by maintenance silence {s['id']}")
    assert "confirmation" not in d or d["confirmation"] is None
    _, guards = await h.api("GET", "/api/v1/guards")
    assert guards["declined"] == [] and guards["cooldowns"] == []
    assert h.jobs == {}


async def test_silences_are_shared_by_two_monitors_and_expire_from_the_cli(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(lab, tmp_path, token)
    a = await start_daemon(cfg)
    b = await start_daemon(cfg.model_copy(update={"instance": "test-2"}))
    api = ["--api", a.base]
    monkeypatch.setenv("FAILOVER_API_TOKEN", token)
    assert await cli(["silence", "add", "--group", "dg1", "--author", "bob", "--comment", "firmware",
                      "--duration", "2h", *api]) == 0
    status, on_b = await b.api("GET", "/api/v1/silences")
    assert status == 200
    assert [(x["kind"], x["target"], x["author"]) for x in on_b] == [("group", "dg1", "bob")]
    await crash(lab_control, "enc1-bay1")
    await post_event(b, trap(BAY1, CPU))  # the other monitor hears the trap
    await wait_decisions(b, 1)
    (d,) = await decisions(b, "enc1-bay1")
    assert d["action"] == "alert"
    assert f"maintenance silence {on_b[0]['id']} (group dg1, by bob: firmware" in d["guard"]
    assert a.jobs == {} and b.jobs == {}
    assert await cli(["silence", "expire", str(on_b[0]["id"]), "--author", "carol", *api]) == 0
    assert (await b.api("GET", "/api/v1/silences"))[1] == []
    assert await cli(["silence", "list", "--all", *api]) == 0


async def test_guards_are_shown_and_reset_with_an_author(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    await crash(lab_control, "enc1-bay1")
    await post_event(h, trap(BAY1, CPU))
    await h.wait_for(lambda: any(not j.state.active for j in h.jobs.values()))
    _, guards = await h.api("GET", "/api/v1/guards")
    assert [c["server"] for c in guards["cooldowns"]] == ["enc1-bay1"]
    assert guards["cooldowns"][0]["remaining"] > 3000
    assert (await h.api("POST", "/api/v1/guards/reset", {"server": "enc1-bay1"}))[0] == 400  # no author
    assert (await h.api("POST", "/api/v1/guards/reset", {"server": "enc1-bay1", "group": "dg1",
                                                         "author": "x"}))[0] == 400
    status, body = await h.api("POST", "/api/v1/guards/reset", {"server": "enc1-bay1", "author": "dave"})
    assert status == 200 and body["reset"]["cooldown"] is True and body["guards"]["cooldowns"] == []
    _, audit = await h.api("GET", "/api/v1/audit")
    assert (audit[0]["author"], audit[0]["action"], audit[0]["target"]) == \
        ("dave", "guards_reset", "enc1-bay1")
    monkeypatch.setenv("FAILOVER_API_TOKEN", token)
    assert await cli(["guards", "--api", h.base]) == 0
    assert await cli(["guards", "reset", "--group", "dg1", "--author", "dave", "--api", h.base]) == 0
    assert await cli(["guards", "reset", "--group", "nope", "--author", "dave", "--api", h.base]) == 1
    assert (await h.api("GET", "/api/v1/audit"))[1][0]["target"] == "dg1"


async def test_spare_is_checked_at_the_bmc_and_failback_runs_the_flow_back(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    first = await h.wait_job(await h.failover("enc1-bay1"))
    assert first["state"] == "completed", first
    spare, profile = first["spare"], first["profile"]
    assert await lab_control.profile_holders(profile) == [spare]
    # the failed blade is repaired: first it still reads On, then unhealthy, then Off and healthy
    await lab_control.call("PUT", "/lab/v1/servers/enc1-bay1", {"power": "On", "health": "OK"})
    assert (await h.api("POST", "/api/v1/servers/enc1-bay1/spare", {"author": "erin"}, token=None))[0] == 401
    unauthenticated = await h.api("POST", "/api/v1/failbacks", {"job": first["job"], "author": "e"},
                                  token=None)
    assert unauthenticated[0] == 401
    assert (await h.api("POST", "/api/v1/failbacks", {"job": 999, "author": "erin"}))[0] == 404
    status, body = await h.api("POST", "/api/v1/servers/enc1-bay1/spare", {"author": "erin"})
    assert status == 409 and "reads On at its BMC, not Off" in body["error"], body
    await lab_control.call("PUT", "/lab/v1/servers/enc1-bay1", {"power": "Off", "health": "Critical"})
    status, body = await h.api("POST", "/api/v1/servers/enc1-bay1/spare", {"author": "erin"})
    assert status == 409 and "health Critical" in body["error"], body
    assert (await lab_control.server("enc1-bay1"))["spare"] is False
    # a failback to a server that is not a designated spare is refused before any job: nothing touched
    status, body = await h.api("POST", "/api/v1/failbacks", {"job": first["job"], "author": "erin"})
    assert status == 409 and "target enc1-bay1 does not qualify: not a designated spare" in body["error"]
    assert await lab_control.profile_holders(profile) == [spare]
    assert (await lab_control.server(spare))["power"] == "On" and len(h.jobs) == 1
    await lab_control.call("PUT", "/lab/v1/servers/enc1-bay1", {"health": "OK"})
    status, body = await h.api("POST", "/api/v1/servers/enc1-bay1/spare", {"author": "erin",
                                                                           "comment": "DIMM replaced"})
    assert status == 200 and body["power"] == "Off" and body["health"] == "OK", body
    assert (await lab_control.server("enc1-bay1"))["spare"] is True
    status, body = await h.api("POST", "/api/v1/failbacks", {"job": first["job"], "author": "erin"})
    assert status == 202 and body["source"] == spare and body["target"] == "enc1-bay1", body
    back = await h.wait_job(int(body["job"]))
    assert back["state"] == "completed", back
    assert back["server"] == spare and back["spare"] == "enc1-bay1" and back["trigger"]["kind"] == "failback"
    assert await lab_control.profile_holders(profile) == ["enc1-bay1"]
    assert (await lab_control.server(spare))["power"] == "Off"  # fenced before the move
    assert (await lab_control.server("enc1-bay1"))["power"] == "On"
    mine = [(e["kind"], e["server"]) for e in await lab_control.log()
            if e.get("job") == back["job"] and e["accepted"]]
    # every outside action of the failback carried its fencing token: fence, spare flag, move, boot
    assert mine == [("reset", spare), ("spare", "enc1-bay1"), ("move", spare), ("reset", "enc1-bay1")], mine
    assert await lab_control.violations() == []
    _, audit = await h.api("GET", "/api/v1/audit")
    assert [a["action"] for a in audit[:2]] == ["failback", "spare"]
    # while a job is active on the server or its group, `spare` is refused; then accepted (CLI)
    runner = h.daemon.runner
    assert runner is not None
    busy = await runner.store.create_job(spare, h.jobs[back["job"]].group, {"kind": "test"},
                                         h.daemon.clock.now(), owner=runner.instance,
                                         token=runner.membership.token)
    status, body = await h.api("POST", f"/api/v1/servers/{spare}/spare", {"author": "erin"})
    assert status == 409 and f"job {busy.id} ({spare}) is active" in body["error"], body
    busy.state, busy.finished = JobState.FAILED, h.daemon.clock.now()
    await runner.store.save_job(busy)
    monkeypatch.setenv("FAILOVER_API_TOKEN", h.token)
    assert await cli(["spare", spare, "--author", "erin", "--api", h.base]) == 0
    assert (await lab_control.server(spare))["spare"] is True


async def test_failback_takes_its_named_target_not_the_first_spare(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    one = await h.wait_job(await h.failover("enc1-bay1"))
    two = await h.wait_job(await h.failover("enc1-bay2"))
    assert one["state"] == two["state"] == "completed", (one, two)
    for sid in ("enc1-bay1", "enc1-bay2"):  # both repaired and spares again: enc1-bay1 comes first
        status, body = await h.api("POST", f"/api/v1/servers/{sid}/spare", {"author": "erin"})
        assert status == 200, body
    status, body = await h.api("POST", "/api/v1/failbacks", {"job": two["job"], "author": "erin"})
    assert status == 202, body
    back = await h.wait_job(int(body["job"]))
    assert back["state"] == "completed" and back["spare"] == "enc1-bay2", back
    assert await lab_control.profile_holders(two["profile"]) == ["enc1-bay2"]
    assert (await lab_control.server("enc1-bay1"))["spare"] is True  # untouched
    assert await lab_control.violations() == []
