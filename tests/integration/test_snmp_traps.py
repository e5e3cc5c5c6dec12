"""SnmpTrapReceiver against real peers: net-snmp's `snmptrap`/`snmpinform` (v1, v2c, v3 USM), plus raw
UDP datagrams for the malformed cases. Every wait is on the queue or on a metric, with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.snmp import ber as snmp_ber
from adapters.snmp.receiver import SnmpTrapReceiver
from monitor.core.clock import SystemClock
from monitor.core.config import SnmpConfig
from monitor.core.errors import StartupError
from monitor.core.events import Event
from monitor.core.metrics import Metrics
from tests.support.packets import mutate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("snmptrap") is None, reason="net-snmp's snmptrap is not installed"),
]

WAIT = 10.0
ENGINE_ID = "0x8000000001020304"
AUTH_KEY = "authpass123"
PRIV_KEY = "privpass123"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
HO_TRAP_FLAGS = "1.3.6.1.4.1.232.11.2.11.1.0"
ALERT_MESSAGE_ID = "1.3.6.1.4.1.674.10892.5.3.1.1.0"
DELL_MEM_FAILURE = "1.3.6.1.4.1.674.10892.5.3.2.1.0.2265"
DELL_PSU_FAILURE = "1.3.6.1.4.1.674.10892.5.3.2.1.0.2185"

BASE_CONFIG: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "communities": ["public"],
    "users": [{"name": "failover", "auth_protocol": "SHA", "auth_key": AUTH_KEY, "priv_protocol": "AES",
               "priv_key": PRIV_KEY, "engine_ids": [ENGINE_ID]}],
}


class WatchedMetrics(Metrics):
    """Metrics that wake waiters on every change, so tests wait for a counter without sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        super().inc(name, value, **labels)
        self.changed.set()

    async def wait_for(self, name: str, value: float, **labels: str) -> None:
        async with asyncio.timeout(WAIT):
            while self.get(name, **labels) < value:
                self.changed.clear()
                await self.changed.wait()

    def dropped(self) -> dict[str, float]:
        prefix = "snmp_dropped_total"
        return {k: v for k, v in self.series().get(prefix, {}).items() if v}


@dataclass
class Peer:
    receiver: SnmpTrapReceiver
    queue: asyncio.Queue[Event]
    metrics: WatchedMetrics
    address: str
    port: int

    async def next_event(self) -> Event:
        async with asyncio.timeout(WAIT):
            return await self.queue.get()

    async def wait_dropped(self, reason: str, count: int = 1) -> None:
        await self.metrics.wait_for("snmp_dropped_total", count, reason=reason)


@pytest.fixture(scope="module")
def snmp_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """net-snmp with no MIBs loaded, no user snmp.conf, and its persistent state in a temp folder."""
    home = tmp_path_factory.mktemp("netsnmp")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIBS": "", "HOME": str(home),
            "SNMPCONFPATH": str(home), "SNMP_PERSISTENT_DIR": str(home)}


@pytest.fixture
def net_snmp(snmp_env: dict[str, str]) -> Any:
    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=snmp_env)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, err.decode(errors="replace")

    return run


@contextlib.asynccontextmanager
async def receiving(overrides: dict[str, Any] | None = None, maxsize: int = 0,
                    fast_path: bool = True) -> AsyncIterator[Peer]:
    config = SnmpConfig.model_validate({**BASE_CONFIG, **(overrides or {})})
    queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
    metrics = WatchedMetrics()
    receiver = SnmpTrapReceiver(config=config, queue=queue, metrics=metrics, clock=SystemClock(),
                                fast_path=fast_path)
    host, port = await receiver.start()
    assert receiver.bound == (host, port)
    stop = asyncio.Event()
    task = asyncio.create_task(receiver.run(stop))
    try:
        address = f"udp6:[{host}]:{port}" if ":" in host else f"{host}:{port}"
        yield Peer(receiver, queue, metrics, address, port)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await task
    assert receiver.bound is None


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async with receiving() as p:
        yield p


def v3_args(*, user: str = "failover", auth: str = "SHA", auth_key: str = AUTH_KEY, priv: str = "AES",
            priv_key: str = PRIV_KEY, level: str = "authPriv") -> list[str]:
    args = ["-v", "3", "-u", user, "-l", level]
    if level != "noAuthNoPriv":
        args += ["-a", auth, "-A", auth_key]
    if level == "authPriv":
        args += ["-x", priv, "-X", priv_key]
    return args


async def send_raw(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))


@pytest.fixture(scope="module")
def v2c_datagram(snmp_env: dict[str, str]) -> Iterator[bytes]:
    """One v2c trap as net-snmp encodes it, captured on a plain socket (for the raw-datagram tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(WAIT)
        port = s.getsockname()[1]
        subprocess.run(["snmptrap", "-v", "2c", "-c", "public", f"127.0.0.1:{port}", "",
                        "1.3.6.1.4.1.232.0.22054", SYS_NAME, "s", "raw-sentinel"],
                       env=snmp_env, check=True, timeout=30)
        data, _ = s.recvfrom(65535)
    yield data


# --- accepted notifications -----------------------------------------------------------------------------


async def test_v1_trap_mapped_per_rfc3584(peer: Peer, net_snmp: Any) -> None:
    rc, err = await net_snmp("snmptrap", "-v", "1", "-c", "public", peer.address, "1.3.6.1.4.1.232",
                             "127.0.0.9", "6", "6050", "", SYS_NAME, "s", "blade07", HO_TRAP_FLAGS, "i", "16")
    assert rc == 0, err
    ev = await peer.next_event()
    assert ev.source == "snmp"
    assert ev.trap_oid == "1.3.6.1.4.1.232.0.6050"
    assert ev.snmp_version == "1"
    assert ev.sender == "127.0.0.1"
    assert ev.attributes["agent_address"] == "127.0.0.9"
    assert ev.attributes["pdu"] == "trap"
    assert ev.varbinds[SYS_NAME] == "blade07"
    assert ev.varbinds[HO_TRAP_FLAGS] == "16"
    assert ev.varbinds["1.3.6.1.6.3.1.1.4.3.0"] == "1.3.6.1.4.1.232"  # snmpTrapEnterprise.0
    # sysUpTime.0 and snmpTrapOID.0 are not varbinds; snmpTrapCommunity.0 (the secret) is never kept
    assert not {"1.3.6.1.2.1.1.3.0", "1.3.6.1.6.3.1.1.4.1.0", "1.3.6.1.6.3.18.1.4.0"} & set(ev.varbinds)
    assert "public" not in ev.model_dump_json()
    assert ev.security_name == "community-1"
    assert peer.metrics.get("snmp_traps_received_total", version="1") == 1


async def test_v2c_trap(peer: Peer, net_snmp: Any) -> None:
    rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", peer.address, "",
                             "1.3.6.1.4.1.232.0.22054", SYS_NAME, "s", "oa-enc1")
    assert rc == 0, err
    ev = await peer.next_event()
    assert (ev.trap_oid, ev.snmp_version, ev.varbinds) == ("1.3.6.1.4.1.232.0.22054", "2c",
                                                           {SYS_NAME: "oa-enc1"})
    assert "agent_address" not in ev.attributes
    assert peer.metrics.get("snmp_traps_received_total", version="2c") == 1
    assert peer.metrics.dropped() == {}


async def test_v2c_inform_is_acknowledged(peer: Peer, net_snmp: Any) -> None:
    # snmpinform exits 0 only when the receiver answered
    rc, err = await net_snmp("snmpinform", "-v", "2c", "-c", "public", "-t", "2", "-r", "1", peer.address,
                             "", "1.3.6.1.4.1.232.0.6040", SYS_NAME, "s", "blade03")
    assert rc == 0, err
    ev = await peer.next_event()
    assert (ev.trap_oid, ev.snmp_version, ev.attributes["pdu"]) == ("1.3.6.1.4.1.232.0.6040", "2c", "inform")


async def test_v3_authpriv_trap_from_configured_engine(peer: Peer, net_snmp: Any) -> None:
    rc, err = await net_snmp("snmptrap", *v3_args(), "-e", ENGINE_ID, peer.address, "",
                             DELL_MEM_FAILURE, ALERT_MESSAGE_ID, "s", "MEM0001")
    assert rc == 0, err
    ev = await peer.next_event()
    assert (ev.trap_oid, ev.snmp_version, ev.security_name) == (DELL_MEM_FAILURE, "3", "failover")
    assert ev.varbinds == {ALERT_MESSAGE_ID: "MEM0001"}
    assert peer.metrics.get("snmp_traps_received_total", version="3") == 1


async def test_v3_authpriv_inform(peer: Peer, net_snmp: Any) -> None:
    rc, err = await net_snmp("snmpinform", *v3_args(), "-t", "2", "-r", "1", peer.address, "",
                             DELL_PSU_FAILURE, ALERT_MESSAGE_ID, "s", "PSU0003")
    assert rc == 0, err
    ev = await peer.next_event()
    assert (ev.trap_oid, ev.snmp_version, ev.attributes["pdu"]) == (DELL_PSU_FAILURE, "3", "inform")
    # the sender's engine-id discovery probe is answered, not counted as a drop
    assert peer.metrics.get("snmp_engine_discovery_total") >= 1
    assert peer.metrics.dropped() == {}


@pytest.mark.parametrize(("auth", "net_auth", "priv", "net_priv"), [
    ("MD5", "MD5", "DES", "DES"),
    ("SHA224", "SHA-224", "AES", "AES"),
    ("SHA256", "SHA-256", "AES192", "AES-192"),
    ("SHA384", "SHA-384", "AES256", "AES-256"),
    ("SHA512", "SHA-512", "AES256", "AES-256"),
    ("SHA256", "SHA-256", "none", ""),
])  # fmt: skip
async def test_v3_protocols(auth: str, net_auth: str, priv: str, net_priv: str, net_snmp: Any) -> None:
    user: dict[str, Any] = {"name": "u", "auth_protocol": auth, "auth_key": AUTH_KEY, "priv_protocol": priv,
                            "engine_ids": [ENGINE_ID]}
    if priv != "none":
        user["priv_key"] = PRIV_KEY
    level = "authPriv" if priv != "none" else "authNoPriv"
    async with receiving({"users": [user]}) as p:
        args = v3_args(user="u", auth=net_auth, priv=net_priv, level=level)
        rc, err = await net_snmp("snmpinform", *args, "-t", "2", "-r", "1", p.address, "", DELL_PSU_FAILURE)
        assert rc == 0, err
        assert (await p.next_event()).security_name == "u"
        rc, err = await net_snmp("snmptrap", *args, "-e", ENGINE_ID, p.address, "", DELL_MEM_FAILURE)
        assert rc == 0, err
        assert (await p.next_event()).trap_oid == DELL_MEM_FAILURE
        assert p.metrics.dropped() == {}


async def test_v3_no_auth_user(net_snmp: Any) -> None:
    user = {"name": "open", "auth_protocol": "none", "priv_protocol": "none", "engine_ids": [ENGINE_ID]}
    async with receiving({"users": [user]}) as p:
        rc, err = await net_snmp("snmptrap", *v3_args(user="open", level="noAuthNoPriv"), "-e", ENGINE_ID,
                                 p.address, "", DELL_MEM_FAILURE)
        assert rc == 0, err
        assert (await p.next_event()).security_name == "open"


async def test_ipv6_listen(net_snmp: Any) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        async with receiving({"listen": "[::1]:0"}) as p:
            rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", p.address, "",
                                     "1.3.6.1.4.1.232.0.22054")
            assert rc == 0, err
            ev = await p.next_event()
            assert ev.sender == "::1"
    except StartupError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")


# --- drops ------------------------------------------------------------------------------------------------


async def test_wrong_community_dropped_and_not_logged(peer: Peer, net_snmp: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters.snmp.receiver")
    rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "s3cr3t-typo", peer.address, "",
                             "1.3.6.1.4.1.232.0.22054")
    assert rc == 0, err
    await peer.wait_dropped("bad_community")
    assert peer.queue.empty()
    assert peer.metrics.dropped() == {'{reason="bad_community"}': 1}
    assert "bad_community" in caplog.text
    assert "s3cr3t" not in caplog.text and "public" not in caplog.text
    assert peer.metrics.get("snmp_datagrams_received_total") == 1


async def test_v3_wrong_auth_key(peer: Peer, net_snmp: Any) -> None:
    rc, err = await net_snmp("snmptrap", *v3_args(auth_key="wrongauth99"), "-e", ENGINE_ID, peer.address,
                             "", DELL_MEM_FAILURE)
    assert rc == 0, err
    await peer.wait_dropped("wrong_digest")
    assert peer.queue.empty()


async def test_v3_wrong_priv_key(peer: Peer, net_snmp: Any) -> None:
    rc, err = await net_snmp("snmptrap", *v3_args(priv_key="wrongpriv99"), "-e", ENGINE_ID, peer.address,
                             "", DELL_MEM_FAILURE)
    assert rc == 0, err
    await peer.wait_dropped("decryption_error")
    assert peer.queue.empty()


async def test_v3_unknown_user_and_unknown_engine(peer: Peer, net_snmp: Any) -> None:
    rc, err = await net_snmp("snmptrap", *v3_args(user="intruder"), "-e", ENGINE_ID, peer.address, "",
                             DELL_MEM_FAILURE)
    assert rc == 0, err
    await peer.wait_dropped("unknown_user")
    rc, err = await net_snmp("snmptrap", *v3_args(), "-e", "0x80000000010203ff", peer.address, "",
                             DELL_MEM_FAILURE)
    assert rc == 0, err
    await peer.wait_dropped("unknown_engine_id")
    assert peer.queue.empty()
    assert peer.metrics.dropped() == {'{reason="unknown_engine_id"}': 1, '{reason="unknown_user"}': 1}


async def test_v3_lower_security_level_than_configured(peer: Peer, net_snmp: Any) -> None:
    """pysnmp's notification receiver applies no access control: a noAuthNoPriv trap naming a configured
    authPriv user would otherwise be accepted. It must be dropped."""
    for level in ("noAuthNoPriv", "authNoPriv"):
        rc, err = await net_snmp("snmptrap", *v3_args(level=level), "-e", ENGINE_ID, peer.address, "",
                                 DELL_MEM_FAILURE)
        assert rc == 0, err
    await peer.wait_dropped("security_level_too_low", 2)
    assert peer.queue.empty()


async def test_malformed_datagrams_counted_then_still_serving(peer: Peer, net_snmp: Any,
                                                              v2c_datagram: bytes) -> None:
    rng = random.Random(7)
    bad_version = bytearray(v2c_datagram)
    at = bad_version.index(b"\x02\x01\x01")  # version INTEGER 1 (v2c)
    bad_version[at + 2] = 7
    await send_raw(
        peer.port,
        rng.randbytes(200),                                       # noise
        v2c_datagram[: len(v2c_datagram) // 2],                   # truncated BER
        b"\x30\x84\x7f\xff\xff\xff\x02\x01\x01\x04\x06public",    # a 2 GiB length
        b"",                                                      # empty datagram
        b"\x30\x03\x02\x01\x01",                                  # a version and nothing else
        bytes(bad_version),                                       # unsupported version
    )  # fmt: skip
    await peer.wait_dropped("bad_version")
    await peer.metrics.wait_for("snmp_datagrams_received_total", 6)
    drops = peer.metrics.dropped()
    assert drops == {'{reason="malformed"}': 5, '{reason="bad_version"}': 1}
    # still serving, and a raw copy of a good trap is accepted as well
    await send_raw(peer.port, v2c_datagram)
    assert (await peer.next_event()).varbinds[SYS_NAME] == "raw-sentinel"
    rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", peer.address, "", "1.3.6.1.4.1.232.0.1")
    assert rc == 0, err
    assert (await peer.next_event()).trap_oid == "1.3.6.1.4.1.232.0.1"


async def test_get_request_to_trap_port_counted(peer: Peer, net_snmp: Any) -> None:
    rc, _ = await net_snmp("snmpget", "-v", "2c", "-c", "public", "-t", "0.3", "-r", "0", peer.address,
                           SYS_NAME)
    assert rc != 0
    await peer.wait_dropped("unsupported_pdu")


async def test_v1_v2c_disabled(net_snmp: Any) -> None:
    async with receiving({"v1_v2c": False}) as p:
        rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", p.address, "", "1.3.6.1.4.1.232.0.1")
        assert rc == 0, err
        rc, err = await net_snmp("snmptrap", "-v", "1", "-c", "public", p.address, "1.3.6.1.4.1.232",
                                 "127.0.0.1", "6", "6050", "")
        assert rc == 0, err
        await p.wait_dropped("version_disabled", 2)
        assert p.queue.empty()
        # v3 still works
        rc, err = await net_snmp("snmptrap", *v3_args(), "-e", ENGINE_ID, p.address, "", DELL_MEM_FAILURE)
        assert rc == 0, err
        assert (await p.next_event()).snmp_version == "3"


async def test_no_communities_configured(net_snmp: Any) -> None:
    async with receiving({"communities": []}) as p:
        rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", p.address, "", "1.3.6.1.4.1.232.0.1")
        assert rc == 0, err
        await p.wait_dropped("bad_community")


async def test_queue_full_dropped_and_counted(net_snmp: Any) -> None:
    async with receiving(maxsize=1) as p:
        for n in (1, 2, 3):
            rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", p.address, "",
                                     f"1.3.6.1.4.1.232.0.{n}")
            assert rc == 0, err
        await p.wait_dropped("queue_full", 2)
        assert p.queue.qsize() == 1
        assert (await p.next_event()).trap_oid == "1.3.6.1.4.1.232.0.1"
        assert p.metrics.get("snmp_traps_received_total", version="2c") == 3
        # room again: the next one is queued
        rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", p.address, "", "1.3.6.1.4.1.232.0.4")
        assert rc == 0, err
        assert (await p.next_event()).trap_oid == "1.3.6.1.4.1.232.0.4"


async def test_callback_failure_is_counted_not_raised(net_snmp: Any, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    async with receiving() as p:
        def broken(event: Event) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(p.queue, "put_nowait", broken)
        rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", p.address, "", "1.3.6.1.4.1.232.0.1")
        assert rc == 0, err
        await p.wait_dropped("internal_error")
        monkeypatch.undo()
        rc, err = await net_snmp("snmptrap", "-v", "2c", "-c", "public", p.address, "", "1.3.6.1.4.1.232.0.2")
        assert rc == 0, err
        assert (await p.next_event()).trap_oid == "1.3.6.1.4.1.232.0.2"
    assert "Exception in callback" not in caplog.text


# --- lifecycle --------------------------------------------------------------------------------------------


async def test_port_in_use_is_a_startup_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = SnmpConfig.model_validate({**BASE_CONFIG, "listen": f"127.0.0.1:{port}"})
        receiver = SnmpTrapReceiver(config=config, queue=asyncio.Queue(), metrics=Metrics(),
                                    clock=SystemClock())
        with pytest.raises(StartupError, match=rf"cannot listen on snmp.listen 127.0.0.1:{port}: "
                                               r"address already in use"):
            await receiver.start()
        assert receiver.bound is None


async def test_stop_releases_the_port() -> None:
    async with receiving() as p:
        port = p.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # free again
    # and a receiver can be started on it again, then closed without serving
    config = SnmpConfig.model_validate({**BASE_CONFIG, "listen": f"127.0.0.1:{port}"})
    receiver = SnmpTrapReceiver(config=config, queue=asyncio.Queue(), metrics=Metrics(), clock=SystemClock())
    assert await receiver.start() == ("127.0.0.1", port)
    await receiver.close()
    assert receiver.bound is None


def _rcvbuf(peer: Peer) -> int:
    sock = peer.receiver._transport.transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


async def test_receive_buffer_is_set() -> None:
    async with receiving({"receive_buffer": 1 << 20}) as p:
        assert _rcvbuf(p) >= 1 << 20


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="SO_RCVBUFFORCE needs root")
async def test_receive_buffer_beyond_rmem_max_when_privileged() -> None:
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    async with receiving({"receive_buffer": 2 * rmem_max}) as p:
        assert _rcvbuf(p) >= 2 * rmem_max


# --- the fast path (adapters.snmp.ber) against the pysnmp path --------------------------------------------


ALL_TYPES = [SYS_NAME, "s", "blade07", "1.3.6.1.4.1.9.1", "i", "-16", "1.3.6.1.4.1.9.2", "u", "7",
             "1.3.6.1.4.1.9.3", "c", "4294967295", "1.3.6.1.4.1.9.4", "x", "00ff10", "1.3.6.1.4.1.9.5", "a",
             "10.1.2.3", "1.3.6.1.4.1.9.6", "o", "1.3.6.1.4", "1.3.6.1.4.1.9.7", "t", "12345",
             "1.3.6.1.4.1.9.8", "n", "", "1.3.6.1.4.1.9.9", "s", "", "1.3.6.1.4.1.9.10", "s", "tab\there",
             "1.3.6.1.4.1.9.11", "x", "68656c6c6f", "1.3.6.1.4.1.9.12", "b", "0 3 9",
             "1.3.6.1.4.1.9.13", "i", "2147483647", "1.3.6.1.4.1.9.14", "s", "h\u00e9llo",
             "1.3.6.1.4.1.9.15", "d", "1.2.3.4"]  # fmt: skip
SENDS = {
    "v2c all types": ["-v", "2c", "-c", "public", "", "1.3.6.1.4.1.232.0.22054", *ALL_TYPES],
    "v2c no varbinds": ["-v", "2c", "-c", "public", "", "1.3.6.1.4.1.232.0.1"],
    "v2c snmpTrapAddress": ["-v", "2c", "-c", "public", "", "1.3.6.1.4.1.232.0.2",
                            "1.3.6.1.6.3.18.1.3.0", "a", "192.0.2.5"],
    "v2c wrong community": ["-v", "2c", "-c", "s3cr3t-typo", "", "1.3.6.1.4.1.232.0.1", SYS_NAME, "s", "x"],
    "v1 enterprise-specific, all types": ["-v", "1", "-c", "public", "1.3.6.1.4.1.232", "127.0.0.9", "6",
                                          "6050", "", *ALL_TYPES],
    "v1 linkDown": ["-v", "1", "-c", "public", "1.3.6.1.4.1.9", "192.0.2.1", "2", "0", "",
                    "1.3.6.1.2.1.2.2.1.1.3", "i", "3"],
    "v1 coldStart, no varbinds": ["-v", "1", "-c", "public", "1.3.6.1.4.1.9", "192.0.2.1", "0", "0", ""],
    "v1 wrong community": ["-v", "1", "-c", "nope", "1.3.6.1.4.1.9", "192.0.2.1", "6", "1", ""],
    "v2c inform": ["-v", "2c", "-c", "public", "", "1.3.6.1.4.1.232.0.3", SYS_NAME, "s", "inform"],
}  # fmt: skip
"""snmptrap arguments without the target (inserted after `-c X`); an "inform" is sent with snmpinform."""


def capture_datagram(env: dict[str, str], args: list[str], inform: bool = False) -> bytes:
    """What snmptrap sends for `args` (`-v ... -c ...` first), captured on a plain socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(WAIT)
        target = f"127.0.0.1:{s.getsockname()[1]}"
        cmd = ["snmptrap", *args[:4], target, *args[4:]]
        if inform:
            cmd = ["snmpinform", "-t", "0.2", "-r", "0", *cmd[1:]]  # no answer comes: it times out
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            data, _ = s.recvfrom(65535)
        finally:
            proc.wait(timeout=30)
    return data


@dataclass
class Outcome:
    events: list[dict[str, Any]]
    counters: dict[str, float]


def feed(peer: Peer, datagram: bytes) -> Outcome:
    """Hand one datagram to the receiver as its transport would (synchronously, in this loop); what came
    out: the events queued (without id and time) and the counters that moved."""
    before = peer.metrics.series()
    transport = peer.receiver._transport
    transport.datagram_received(datagram, ("127.0.0.1", 40000))
    events = []
    while not peer.queue.empty():
        events.append(peer.queue.get_nowait().model_dump(exclude={"id", "time"}))
    moved = {f"{name}{labels}": value - before.get(name, {}).get(labels, 0.0)
             for name, series in peer.metrics.series().items() for labels, value in series.items()
             if value != before.get(name, {}).get(labels, 0.0)}
    return Outcome(events, moved)


@contextlib.asynccontextmanager
async def both_paths(overrides: dict[str, Any] | None = None) -> AsyncIterator[tuple[Peer, Peer]]:
    async with receiving(overrides) as fast, receiving(overrides, fast_path=False) as slow:
        assert fast.receiver._fast_path and not slow.receiver._fast_path
        yield fast, slow


@pytest.fixture(scope="module")
def captured(snmp_env: dict[str, str]) -> dict[str, bytes]:
    return {name: capture_datagram(snmp_env, args, inform="inform" in name) for name, args in SENDS.items()}


@pytest.mark.parametrize("name", list(SENDS))
async def test_fast_path_gives_identical_events(name: str, captured: dict[str, bytes],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    datagram = captured[name]
    decoded: list[bytes] = []
    real = snmp_ber.decode_trap

    def spy(data: bytes) -> snmp_ber.Trap:
        trap = real(data)
        decoded.append(data)
        return trap

    monkeypatch.setattr(snmp_ber, "decode_trap", spy)  # the receiver calls it through the module
    async with both_paths() as (fast, slow):
        a, b = feed(fast, datagram), feed(slow, datagram)
    assert a == b
    if "inform" in name:
        assert not decoded  # informs need a Response: pysnmp's
        assert a.events[0]["attributes"]["pdu"] == "inform"
    else:
        assert decoded == [datagram]  # the fast path took it
    if "wrong community" in name:
        assert a.counters == {"snmp_datagrams_received_total": 1,
                              'snmp_dropped_total{reason="bad_community"}': 1}
    else:
        assert len(a.events) == 1
        assert "public" not in str(a.events)
    if name == "v2c all types":
        assert a.events[0]["varbinds"] == {
            SYS_NAME: "blade07", "1.3.6.1.4.1.9.1": "-16", "1.3.6.1.4.1.9.2": "7",
            "1.3.6.1.4.1.9.3": "4294967295", "1.3.6.1.4.1.9.4": "0x00ff10", "1.3.6.1.4.1.9.5": "10.1.2.3",
            "1.3.6.1.4.1.9.6": "1.3.6.1.4", "1.3.6.1.4.1.9.7": "12345", "1.3.6.1.4.1.9.8": "",
            "1.3.6.1.4.1.9.9": "", "1.3.6.1.4.1.9.10": "0x7461620968657265", "1.3.6.1.4.1.9.11": "hello",
            "1.3.6.1.4.1.9.12": "0x9040", "1.3.6.1.4.1.9.13": "2147483647",
            "1.3.6.1.4.1.9.14": "0x68c3a96c6c6f", "1.3.6.1.4.1.9.15": "0x01020304"}  # fmt: skip


async def test_fast_path_communities_and_disabled(captured: dict[str, bytes]) -> None:
    """Several communities (the index of the matching one is the security name), none, a non-ASCII one
    (pysnmp matches its ISO 8859-1 octets), and v1/v2c disabled: the same on both paths."""
    latin = bytearray(captured["v2c no varbinds"])
    at = latin.index(b"public")
    latin[at: at + 6] = "pässw".encode("iso-8859-1") + b"d"  # same length: no length changes
    cases = [captured["v2c no varbinds"], captured["v1 coldStart, no varbinds"], bytes(latin)]
    overrides: dict[str, Any]
    for overrides in ({"communities": ["other", "public", "pässwd"]}, {"communities": []},
                      {"communities": ["pässwd"]}, {"v1_v2c": False}):
        async with both_paths(overrides) as (fast, slow):
            for datagram in cases:
                a, b = feed(fast, datagram), feed(slow, datagram)
                assert a == b, (overrides, datagram.hex())
    async with both_paths({"communities": ["other", "public"]}) as (fast, _):
        assert feed(fast, cases[0]).events[0]["security_name"] == "community-2"


def _strictness(datagram: bytes) -> bool:
    """BER the fast decoder refuses on purpose where pyasn1 is lenient or raises (adapters/snmp/ber.py)."""
    try:
        snmp_ber.decode_trap(datagram)
    except snmp_ber.BerError as exc:
        return any(w in str(exc) for w in ("non-minimal INTEGER", "empty INTEGER", "indefinite length"))
    return False


async def test_fast_path_and_pysnmp_agree_on_mutated_packets(captured: dict[str, bytes],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Random mutations of real packets through both paths: the same events and the same counters, but
    for the deliberate strictness (a non-minimal or empty INTEGER, an indefinite length: `malformed` on
    the fast path; pysnmp accepts the first two and raises on the last)."""
    rng = random.Random(162)
    bases = [d for name, d in captured.items() if "inform" not in name]
    caplog.set_level(logging.DEBUG, logger="adapters.snmp.receiver")
    strict = 0
    async with both_paths() as (fast, slow):
        for _ in range(3000):
            datagram = mutate(rng, rng.choice(bases))
            a, b = feed(fast, datagram), feed(slow, datagram)
            if a != b:
                assert _strictness(datagram), (datagram.hex(), a, b)
                assert a.counters.get('snmp_dropped_total{reason="malformed"}') == 1
                strict += 1
    assert strict < 100
    # internal_error drops do occur on both paths (pysnmp raises, e.g. on a v1 generic-trap 7, which the
    # fast path leaves to it): none is the fast path's own
    assert "raised in the fast path" not in caplog.text


async def test_fast_path_malformed_counted_and_still_serving(peer: Peer, v2c_datagram: bytes) -> None:
    rng = random.Random(3)
    garbage = [mutate(rng, v2c_datagram) for _ in range(2000)] + [rng.randbytes(100) for _ in range(200)]
    for datagram in garbage:
        feed(peer, datagram)
    drops = peer.metrics.dropped()
    assert set(drops) <= {'{reason="malformed"}', '{reason="bad_community"}', '{reason="bad_version"}',
                          '{reason="unsupported_pdu"}', '{reason="unknown_security_model"}',
                          '{reason="invalid_message"}', '{reason="internal_error"}'}
    assert peer.metrics.get("snmp_datagrams_received_total") == len(garbage)
    await send_raw(peer.port, v2c_datagram)
    while (await peer.next_event()).varbinds.get(SYS_NAME) != "raw-sentinel":
        pass
