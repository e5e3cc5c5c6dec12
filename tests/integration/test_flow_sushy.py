"""The whole flow against a Redfish service nobody here wrote: sushy-tools' emulator (fake driver, TLS,
Basic auth), with a static inventory file. sushy applies a reset after a random 1-11 s: the flow polls."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.core.config import MonitorConfig
from monitor.core.model import STEPS, PowerState
from tests.peers.sushy import SushyPeer, start_sushy
from tests.support.harness import DaemonFactory

pytestmark = pytest.mark.slow

SOURCE, SPARE, WRONG_MODEL, MYSTERY = (str(uuid.UUID(int=i)) for i in (1, 2, 3, 4))


def inventory(peer: SushyPeer) -> dict[str, Any]:
    def bmc(system: str) -> dict[str, Any]:
        return {"url": peer.url, "username": peer.username, "password": peer.password,
                "verify_tls": False, "system": system}

    return {"domain_groups": [{"id": "dg1", "domains": [{"id": "vcd-enc1", "status": "ok", "enclosures": [
        {"id": "enc1", "servers": [
            {"bay": 1, "product": "ProLiant BL460c Gen8", "profile": "web01",
             "host": {"name": "web01.example", "ip": "192.0.2.1"}, "bmc": bmc(SOURCE)},
            {"bay": 2, "product": "ProLiant BL465c G7", "spare": True, "bmc": bmc(WRONG_MODEL)},
            {"bay": 9, "product": "ProLiant BL460c Gen10", "spare": True, "bmc": bmc(SPARE)},
        ]},
    ]}]}]}


def config(tmp_path: Path, inv: dict[str, Any], token: str) -> MonitorConfig:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inv))
    return MonitorConfig.model_validate({
        "http": {"listen": "127.0.0.1:0", "token": token},
        "store": str(tmp_path / "m.db"),
        "inventory": {"source": "static", "file": str(path)},
        "redfish": {"timeout": 10},
        "failover": {"poll_interval": 0.25, "power_off_timeout": 25, "power_on_timeout": 25,
                     "rediscovery": {"delay": 0}},
    })


SYSTEMS = [
    {"uuid": SOURCE, "name": "blade-src", "power_state": "On", "nics": [{"mac": "00:5c:52:31:3a:01"}]},
    {"uuid": SPARE, "name": "blade-spare", "power_state": "Off", "nics": [{"mac": "00:5c:52:31:3a:02"}]},
    {"uuid": WRONG_MODEL, "name": "blade-465", "power_state": "Off", "nics": [{"mac": "00:5c:52:31:3a:03"}]},
    {"uuid": MYSTERY, "name": "blade-x", "power_state": "On", "nics": [{"mac": "00:5c:52:31:3a:04"}]},
]


async def test_failover_against_sushy(tmp_path: Path, start_daemon: DaemonFactory, token: str) -> None:
    async with start_sushy(tmp_path, SYSTEMS) as peer:
        h = await start_daemon(config(tmp_path, inventory(peer), token))
        job = await h.wait_job(await h.failover("enc1-bay1", "sushy"), timeout=90)
        assert job["state"] == "completed", job
        assert job["spare"] == "enc1-bay9"  # Gen10 matches Gen8; the BL465c spare in bay 2 does not
        selected = job["steps"][STEPS.index("select_spare")]["detail"]
        assert "enc1-bay2: model ProLiant BL465c differs" in selected
        power = h.daemon.adapters.power  # the daemon's own Redfish adapter reads sushy
        status, servers = await h.api("GET", "/api/v1/servers/enc1-bay9")
        assert status == 200 and servers["profile"] == "web01" and servers["spare"] is False
        src = await h.daemon.adapters.manager.server("enc1-bay1")
        spare = await h.daemon.adapters.manager.server("enc1-bay9")
        assert await power.power_state(src) is PowerState.OFF
        assert await power.power_state(spare) is PowerState.ON
        assert src.profile is None and src.host is None
        # Rediscovery (delay 0) finds the spare, now On, as the profile's host.
        await h.wait_for(lambda: (h.jobs[job["job"]].rediscovery or {}).get("state") == "done", 30)
        spare = await h.daemon.adapters.manager.server("enc1-bay9")
        assert spare.host is not None and spare.host.name == "web01.example"


async def test_unidentified_product_exits(tmp_path: Path, start_daemon: DaemonFactory, token: str) -> None:
    async with start_sushy(tmp_path, SYSTEMS) as peer:
        inv = inventory(peer)
        servers = inv["domain_groups"][0]["domains"][0]["enclosures"][0]["servers"]
        servers.append({"bay": 5, "product": "Mystery Blade 9", "profile": "x1",
                        "bmc": {"url": peer.url, "username": peer.username, "password": peer.password,
                                "verify_tls": False, "system": MYSTERY}})
        h = await start_daemon(config(tmp_path, inv, token))
        job = await h.wait_job(await h.failover("enc1-bay5"), timeout=30)
        st = {s["step"]: s["state"] for s in job["steps"]}
        assert job["state"] == "failed"
        assert st["check_product"] == "failed"
        assert "'Mystery Blade 9' of enc1-bay5 is not identified" in job["error"]
        assert st["power_off_source"] == "skipped" and st["unlock_group"] == "done"
        mystery = await h.daemon.adapters.manager.server("enc1-bay5")
        assert await h.daemon.adapters.power.power_state(mystery) is PowerState.ON  # never touched
