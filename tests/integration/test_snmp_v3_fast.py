"""SNMPv3 on the receiver's fast path (`adapters/snmp/usm.py`, `ber.decode_v3`): packets built by pysnmp
for every auth/priv combination and sent by net-snmp's `snmptrap` give the same events and counters on
the fast path as on pysnmp's; net-snmp's `snmptrapd` receives the same packets and logs the same
varbinds (and an authentication failure for a forged one); wrong keys, engines, levels, tampering and
truncation are dropped and counted while the receiver keeps serving."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pysnmp.entity import config as snmp_config
from pysnmp.hlapi.v3arch.asyncio import (
    ContextData,
    NotificationType,
    ObjectIdentity,
    OctetString,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    send_notification,
)

from adapters.snmp import ber as snmp_ber
from adapters.snmp import usm as snmp_usm
from adapters.snmp.receiver import SnmpTrapReceiver
from monitor.core.clock import FakeClock
from monitor.core.config import SnmpConfig
from monitor.core.events import Event
from tests.integration.test_snmp_traps import (  # noqa: F401  (fixtures)
    ALERT_MESSAGE_ID,
    AUTH_KEY,
    DELL_MEM_FAILURE,
    ENGINE_ID,
    PRIV_KEY,
    SYS_NAME,
    WAIT,
    Outcome,
    Peer,
    WatchedMetrics,
    feed,
    net_snmp,
    receiving,
    snmp_env,
)
from tests.support.packets import mutate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("snmptrap") is None, reason="net-snmp's snmptrap is not installed"),
]

AUTHS = {"MD5": snmp_config.USM_AUTH_HMAC96_MD5, "SHA": snmp_config.USM_AUTH_HMAC96_SHA,
         "SHA224": snmp_config.USM_AUTH_HMAC128_SHA224, "SHA256": snmp_config.USM_AUTH_HMAC192_SHA256,
         "SHA384": snmp_config.USM_AUTH_HMAC256_SHA384, "SHA512": snmp_config.USM_AUTH_HMAC384_SHA512}
PRIVS = {"none": snmp_config.USM_PRIV_NONE, "DES": snmp_config.USM_PRIV_CBC56_DES,
         "3DES": snmp_config.USM_PRIV_CBC168_3DES, "AES": snmp_config.USM_PRIV_CFB128_AES,
         "AES192": snmp_config.USM_PRIV_CFB192_AES_BLUMENTHAL,
         "AES256": snmp_config.USM_PRIV_CFB256_AES_BLUMENTHAL}
COMBOS = [("none", "none")] + [(a, p) for a in AUTHS for p in PRIVS]
"""Every (auth, priv) pair the config offers; privacy needs authentication."""
VARBINDS = [(ALERT_MESSAGE_ID, OctetString("MEM0001")), (SYS_NAME, OctetString("r640-07")),
            ("1.3.6.1.4.1.674.10892.5.3.1.8.0", OctetString(hexValue="00ff10"))]


def user_name(auth: str, priv: str) -> str:
    return f"u-{auth}-{priv}"


def user_config(auth: str, priv: str, name: str | None = None) -> dict[str, Any]:
    user: dict[str, Any] = {"name": name or user_name(auth, priv), "auth_protocol": auth,
                            "priv_protocol": priv, "engine_ids": [ENGINE_ID]}
    if auth != "none":
        user["auth_key"] = AUTH_KEY
    if priv != "none":
        user["priv_key"] = PRIV_KEY
    return user


ALL_USERS: dict[str, Any] = {"users": [user_config(a, p) for a, p in COMBOS]}


async def pysnmp_traps(combos: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """One TRAP per (auth, priv) sent by a pysnmp engine whose id is ENGINE_ID, captured on a socket."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        with warnings.catch_warnings():  # pysnmp reads its boots file without closing it
            warnings.simplefilter("ignore", ResourceWarning)
            eng = SnmpEngine(snmpEngineID=OctetString(hexValue=ENGINE_ID[2:]))
        out: dict[tuple[str, str], bytes] = {}
        try:
            for auth, priv in combos:
                data = UsmUserData(user_name(auth, priv), AUTH_KEY if auth != "none" else None,
                                   PRIV_KEY if priv != "none" else None,
                                   authProtocol=AUTHS.get(auth, snmp_config.USM_AUTH_NONE),
                                   privProtocol=PRIVS[priv])
                notification = NotificationType(ObjectIdentity(DELL_MEM_FAILURE)).add_varbinds(*VARBINDS)
                target = await UdpTransportTarget.create(s.getsockname())
                error, *_ = await send_notification(eng, data, target, ContextData(), "trap", notification)
                assert error is None, error
                async with asyncio.timeout(WAIT):
                    out[(auth, priv)] = await loop.sock_recv(s, 65535)
        finally:
            eng.close_dispatcher()
    return out


@pytest.fixture(scope="module")
def pysnmp_packets() -> dict[tuple[str, str], bytes]:
    return asyncio.run(pysnmp_traps(COMBOS))


def capture(env: dict[str, str], *args: str) -> bytes:
    """What `snmptrap -v 3 ARGS` sends (a Dell memory-failure trap), captured on a plain socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(WAIT)
        subprocess.run(["snmptrap", "-v", "3", *args, f"127.0.0.1:{s.getsockname()[1]}", "", DELL_MEM_FAILURE,
                        ALERT_MESSAGE_ID, "s", "MEM0001", SYS_NAME, "s", "r640-07"],
                       env=env, check=True, timeout=30, capture_output=True)
        data, _ = s.recvfrom(65535)
    return data


def net_snmp_args(*, auth: str = "SHA", priv: str = "AES", level: str = "authPriv", user: str = "failover",
                  auth_key: str = AUTH_KEY, priv_key: str = PRIV_KEY, engine: str = ENGINE_ID) -> list[str]:
    args = ["-e", engine, "-u", user, "-l", level]
    if level != "noAuthNoPriv":
        args += ["-a", auth, "-A", auth_key]
    if level == "authPriv":
        args += ["-x", priv, "-X", priv_key]
    return args


@pytest.fixture(scope="module")
def net_snmp_packets(snmp_env: dict[str, str]) -> dict[str, bytes]:  # noqa: F811
    return {
        "SHA/AES": capture(snmp_env, *net_snmp_args()),
        "SHA-256/AES-256": capture(snmp_env, *net_snmp_args(auth="SHA-256", priv="AES-256")),
        "MD5/DES": capture(snmp_env, *net_snmp_args(auth="MD5", priv="DES")),
        "SHA-512/AES-192": capture(snmp_env, *net_snmp_args(auth="SHA-512", priv="AES-192")),
        "wrong auth password": capture(snmp_env, *net_snmp_args(auth_key="wrongauth99")),
        "wrong priv password": capture(snmp_env, *net_snmp_args(priv_key="wrongpriv99")),
        "wrong engine": capture(snmp_env, *net_snmp_args(engine="0x80000000010203ff")),
        "unknown user": capture(snmp_env, *net_snmp_args(user="intruder")),
        "authNoPriv": capture(snmp_env, *net_snmp_args(level="authNoPriv")),
        "noAuthNoPriv": capture(snmp_env, *net_snmp_args(level="noAuthNoPriv")),
        "boots 7 time 1000": capture(snmp_env, "-Z", "7,1000", *net_snmp_args()),
        "boots 7 time 900": capture(snmp_env, "-Z", "7,900", *net_snmp_args()),
        "boots 7 time 800": capture(snmp_env, "-Z", "7,800", *net_snmp_args()),
        "boots 6 time 5000": capture(snmp_env, "-Z", "6,5000", *net_snmp_args()),
    }


NET_SNMP_USERS: dict[str, Any] = {"users": [
    user_config("SHA", "AES", "failover"),
    {**user_config("SHA256", "AES256", "informer"), "engine_ids": []},  # INFORMs only
]}


def net_snmp_users(kind: str) -> dict[str, Any]:
    auth, priv = {"SHA-256/AES-256": ("SHA256", "AES256"), "MD5/DES": ("MD5", "DES"),
                  "SHA-512/AES-192": ("SHA512", "AES192")}.get(kind, ("SHA", "AES"))
    return {"users": [user_config(auth, priv, "failover")]}


@pytest.fixture
def pysnmp_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Security names of the notifications pysnmp's callback delivered (the fast path bypasses it)."""
    calls: list[str] = []
    real = SnmpTrapReceiver._on_notification

    def spy(self: SnmpTrapReceiver, eng: Any, *args: Any) -> None:
        calls.append("pysnmp")
        real(self, eng, *args)

    monkeypatch.setattr(SnmpTrapReceiver, "_on_notification", spy)
    return calls


@pytest.fixture
async def paths(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Peer, Peer]]:
    overrides = getattr(request, "param", ALL_USERS)
    async with receiving(overrides) as fast, receiving(overrides, fast_path=False) as slow:
        yield fast, slow


def same_on_both(fast: Peer, slow: Peer, datagram: bytes) -> Outcome:
    a, b = feed(fast, datagram), feed(slow, datagram)
    assert a == b, (datagram.hex(), a, b)
    return a


# --- accepted ----------------------------------------------------------------------------------------


async def test_pysnmp_packets_every_combination(pysnmp_packets: dict[tuple[str, str], bytes],
                                                pysnmp_calls: list[str],
                                                paths: tuple[Peer, Peer]) -> None:
    fast, slow = paths
    for (auth, priv), datagram in pysnmp_packets.items():
        before = len(pysnmp_calls)
        out = same_on_both(fast, slow, datagram)
        assert len(pysnmp_calls) == before + 1, "pysnmp's path delivers; the fast path did not call it"
        assert len(out.events) == 1, (auth, priv, out)
        event = out.events[0]
        assert (event["trap_oid"], event["snmp_version"], event["security_name"]) == (
            DELL_MEM_FAILURE, "3", user_name(auth, priv))
        assert event["varbinds"] == {ALERT_MESSAGE_ID: "MEM0001", SYS_NAME: "r640-07",
                                     "1.3.6.1.4.1.674.10892.5.3.1.8.0": "0x00ff10"}
        assert out.counters == {"snmp_datagrams_received_total": 1,
                                'snmp_traps_received_total{version="3"}': 1}


async def test_net_snmp_packets_accepted(net_snmp_packets: dict[str, bytes], pysnmp_calls: list[str]) -> None:
    for kind in ("SHA/AES", "SHA-256/AES-256", "MD5/DES", "SHA-512/AES-192"):
        async with receiving(net_snmp_users(kind)) as fast, \
                receiving(net_snmp_users(kind), fast_path=False) as slow:
            calls = len(pysnmp_calls)
            out = same_on_both(fast, slow, net_snmp_packets[kind])
            assert len(pysnmp_calls) == calls + 1
            assert len(out.events) == 1, (kind, out)
            assert out.events[0]["varbinds"] == {ALERT_MESSAGE_ID: "MEM0001", SYS_NAME: "r640-07"}


async def test_informs_and_discovery_left_to_pysnmp(pysnmp_calls: list[str], peer_v3: Peer,
                                                    net_snmp: Any) -> None:  # noqa: F811
    """An INFORM (this engine is authoritative: discovery, Response) goes through pysnmp, acknowledged."""
    rc, err = await net_snmp("snmpinform", "-v", "3", "-u", "failover", "-l", "authPriv", "-a", "SHA", "-A",
                             AUTH_KEY, "-x", "AES", "-X", PRIV_KEY, "-t", "2", "-r", "1", peer_v3.address, "",
                             DELL_MEM_FAILURE)
    assert rc == 0, err
    event = await peer_v3.next_event()
    assert event.attributes["pdu"] == "inform" and pysnmp_calls == ["pysnmp"]


@pytest.fixture
async def peer_v3() -> AsyncIterator[Peer]:
    async with receiving(NET_SNMP_USERS) as p:
        yield p


# --- dropped and counted -----------------------------------------------------------------------------


DROPS = {
    "wrong auth password": "wrong_digest",
    "wrong priv password": "decryption_error",
    "wrong engine": "unknown_engine_id",
    "unknown user": "unknown_user",
    "authNoPriv": "security_level_too_low",
    "noAuthNoPriv": "security_level_too_low",
}


@pytest.mark.parametrize("paths", [NET_SNMP_USERS], indirect=True)
async def test_drops_same_reason_on_both_paths(net_snmp_packets: dict[str, bytes],
                                               paths: tuple[Peer, Peer]) -> None:
    fast, slow = paths
    good = net_snmp_packets["SHA/AES"]
    tampered = bytearray(good)
    tampered[-3] ^= 0x01  # in the encrypted PDU: the MAC no longer matches
    mac = bytearray(good)
    at = mac.index(bytes.fromhex("040c"), 30) + 2  # msgAuthenticationParameters, 12 octets
    mac[at] ^= 0x80
    cases = {name: net_snmp_packets[name] for name in DROPS} | {
        "tampered ciphertext": bytes(tampered), "forged MAC": bytes(mac)}
    expected = DROPS | {"tampered ciphertext": "wrong_digest", "forged MAC": "wrong_digest"}
    for name, datagram in cases.items():
        out = same_on_both(fast, slow, datagram)
        assert out.events == [], name
        assert out.counters == {"snmp_datagrams_received_total": 1,
                                f'snmp_dropped_total{{reason="{expected[name]}"}}': 1}, name
    # still serving
    assert len(same_on_both(fast, slow, good).events) == 1


@pytest.mark.parametrize("paths", [NET_SNMP_USERS], indirect=True)
async def test_truncated_and_garbled_left_to_pysnmp_counted_alike(net_snmp_packets: dict[str, bytes],
                                                                  paths: tuple[Peer, Peer]) -> None:
    fast, slow = paths
    good = net_snmp_packets["SHA/AES"]
    for cut in (1, 5, 20, len(good) // 2, len(good) - 10):
        out = same_on_both(fast, slow, good[:-cut])
        assert out.events == [] and any(k.startswith("snmp_dropped_total") for k in out.counters), cut
    garbled = bytearray(good)
    garbled[1] ^= 0x40  # the message length
    same_on_both(fast, slow, bytes(garbled))
    assert len(same_on_both(fast, slow, good).events) == 1


async def test_time_window(net_snmp_packets: dict[str, bytes]) -> None:
    """RFC 3414 3.2.7b on the fast path, on the fake clock: once boots 7 / time 1000 is seen, time 900 is
    inside the 150 s window, time 800 and an earlier boot are not (replays); 100 s later still not; after
    5 minutes without a newer message the notion is forgotten and the sender heard again. (pysnmp resets
    its notion from every message first, so it accepts all: where the two paths differ on purpose.)"""
    clock = FakeClock()
    config = SnmpConfig.model_validate({"listen": "127.0.0.1:0", **NET_SNMP_USERS})
    queue: asyncio.Queue[Event] = asyncio.Queue()
    receiver = SnmpTrapReceiver(config=config, queue=queue, metrics=WatchedMetrics(), clock=clock)
    await receiver.start()
    try:
        peer = Peer(receiver, queue, receiver._metrics, "", 0)  # type: ignore[arg-type]

        def accepted(*names: str) -> list[int]:
            return [len(feed(peer, net_snmp_packets[name]).events) for name in names]

        assert accepted("boots 7 time 1000", "boots 7 time 900", "boots 7 time 800",
                        "boots 6 time 5000") == [1, 1, 0, 0]
        await clock.advance(100)
        assert accepted("boots 7 time 800", "boots 7 time 1000") == [0, 1]
        await clock.advance(301)
        assert accepted("boots 7 time 800", "boots 6 time 5000", "boots 7 time 900") == [1, 0, 1]
        assert peer.metrics.dropped() == {'{reason="not_in_time_window"}': 4}
    finally:
        await receiver.close()


async def test_dropped_on_the_wire_daemon_keeps_running(net_snmp: Any, peer_v3: Peer) -> None:  # noqa: F811
    """Over real UDP from snmptrap: a wrong key and a lower level are counted, then a good trap arrives."""
    for args in (net_snmp_args(auth_key="wrongauth99"), net_snmp_args(level="authNoPriv")):
        rc, err = await net_snmp("snmptrap", "-v", "3", *args, peer_v3.address, "", DELL_MEM_FAILURE)
        assert rc == 0, err
    await peer_v3.wait_dropped("wrong_digest")
    await peer_v3.wait_dropped("security_level_too_low")
    rc, err = await net_snmp("snmptrap", "-v", "3", *net_snmp_args(), peer_v3.address, "", DELL_MEM_FAILURE,
                             ALERT_MESSAGE_ID, "s", "MEM0001")
    assert rc == 0, err
    assert (await peer_v3.next_event()).varbinds == {ALERT_MESSAGE_ID: "MEM0001"}


# --- net-snmp's snmptrapd on the same packets ------------------------------------------------------------


@pytest.fixture
def snmptrapd(snmp_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:  # noqa: F811
    if shutil.which("snmptrapd") is None:
        pytest.skip("net-snmp's snmptrapd is not installed")
    conf = tmp_path / "snmptrapd.conf"
    conf.write_text(f"createUser -e {ENGINE_ID} failover SHA {AUTH_KEY} AES {PRIV_KEY}\n"
                    "authUser log failover priv\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**snmp_env, "SNMP_PERSISTENT_DIR": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.Popen(["snmptrapd", "-f", "-Lo", "-C", "-c", str(conf), "-n", "-On", "-OQ", "-Ot",
                             "-m", "", "-F", "TRAP %v\n", f"udp:127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for _ in range(5):  # "Created directory: ..." lines, then the banner: listening
            if "NET-SNMP version" in proc.stdout.readline():
                break
        else:
            pytest.fail("snmptrapd did not start")
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT)
        proc.stdout.close()


def snmptrapd_varbinds(line: str) -> dict[str, str]:
    """`TRAP .1.3... = value\t...` (-On -OQ -Ot) as the event's varbinds (sysUpTime, snmpTrapOID out)."""
    out: dict[str, str] = {}
    for part in line.removeprefix("TRAP ").rstrip("\n").split("\t"):
        oid, _, value = part.partition(" = ")
        out[oid.lstrip(".")] = value.strip('"').lstrip(".")
    out.pop(snmp_ber.SYS_UPTIME, None)
    out.pop(snmp_ber.SNMP_TRAP_OID, None)
    return out


async def test_snmptrapd_logs_the_same_and_refuses_the_forged(net_snmp_packets: dict[str, bytes],
                                                              snmptrapd: tuple[int, Any],
                                                              peer_v3: Peer) -> None:
    port, proc = snmptrapd
    good = net_snmp_packets["SHA/AES"]
    forged = bytearray(good)
    at = forged.index(bytes.fromhex("040c"), 30) + 2
    forged[at] ^= 0x80
    ours = feed(peer_v3, good)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(good, ("127.0.0.1", port))
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT)
        assert line.startswith("TRAP "), line
        assert snmptrapd_varbinds(line) == ours.events[0]["varbinds"]
        s.sendto(bytes(forged), ("127.0.0.1", port))
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT)
    assert "Authentication failed for failover" in line, line
    out = feed(peer_v3, bytes(forged))
    assert out.events == [] and out.counters['snmp_dropped_total{reason="wrong_digest"}'] == 1


# --- the USM primitives against RFC 3414 A.3 and pysnmp --------------------------------------------------


def test_key_localisation_rfc3414_a3() -> None:
    engine = bytes.fromhex("000000000000000000000002")
    assert snmp_usm.localize(snmp_usm.password_to_ku(b"maplesyrup", "MD5"), engine, "MD5").hex() == \
        "526f5eed9fcce26f8964c2930787d82b"
    assert snmp_usm.localize(snmp_usm.password_to_ku(b"maplesyrup", "SHA"), engine, "SHA").hex() == \
        "6695febc9288e36282235fc7151f128497b38f3f"


def test_priv_key_extension_as_pysnmp() -> None:
    from pyasn1.type import univ
    from pysnmp.proto.secmod.eso.priv import aes192, aes256, des3
    from pysnmp.proto.secmod.rfc3414 import localkey
    engine = bytes.fromhex(ENGINE_ID[2:])
    for auth, oid in AUTHS.items():
        ku = localkey.hash_passphrase(PRIV_KEY.encode(), snmp_usm._HASHES[auth])
        for priv, theirs in (("AES192", aes192.AesBlumenthal192()), ("AES256", aes256.AesBlumenthal256()),
                             ("3DES", des3.Des3())):
            user = snmp_usm.UsmUser("u", auth, priv, AUTH_KEY.encode(), PRIV_KEY.encode())  # type: ignore[arg-type]
            assert user.keys(engine).priv_key == bytes(theirs.localize_key(oid, ku, univ.OctetString(engine)))


@pytest.mark.parametrize("paths", [NET_SNMP_USERS], indirect=True)
async def test_mutated_v3_packets_same_on_both_paths(net_snmp_packets: dict[str, bytes],
                                                     pysnmp_packets: dict[tuple[str, str], bytes],
                                                     paths: tuple[Peer, Peer]) -> None:
    """Random mutations of real v3 packets: the same events and counters on both paths."""
    rng = random.Random(3414)
    fast, slow = paths
    bases = [net_snmp_packets[k] for k in ("SHA/AES", "authNoPriv", "noAuthNoPriv", "unknown user")]
    for _ in range(800):
        same_on_both(fast, slow, mutate(rng, rng.choice(bases)))
    assert len(same_on_both(fast, slow, net_snmp_packets["SHA/AES"]).events) == 1
