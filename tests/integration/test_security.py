"""Security: HTTPS on the API, allowed SNMP sender networks, the API rate limit, secrets never in a log or
an API answer, and the refusals (tokens, body sizes, senders, SNMP versions) not covered elsewhere."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from adapters.redfish.listener import bmc_token
from adapters.redfish.payload import CONTEXT_PREFIX
from lab.config import LabConfig
from lab.main import LabSimulator
from lab.tls import LabCertificate, generate_certificate
from monitor.api import RateLimiter
from monitor.app.daemon import Daemon
from monitor.core.config import LoadedConfig, MonitorConfig
from monitor.core.errors import StartupError
from tests.integration.test_pipeline import CPU, MEM, SITE_RULES, snmptrap, wait_decisions
from tests.support.harness import FAST_LATENCY, DaemonFactory, Harness, monitor_config

needs_snmptrap = pytest.mark.skipif(shutil.which("snmptrap") is None,
                                    reason="net-snmp's snmptrap is not installed")

WAIT = 15.0


def with_updates(cfg: MonitorConfig, **sections: dict[str, Any]) -> MonitorConfig:
    """The config with whole sections merged in (validated again, so every check applies)."""
    data = json.loads(cfg.model_dump_json())
    secret = cfg.http.token.get_secret_value() if cfg.http.token else None
    data["http"]["token"] = secret
    for name, value in sections.items():
        data[name] = {**(data.get(name) or {}), **value}
    return MonitorConfig.model_validate(data)


async def metric(h: Harness, line: str, *, present: bool = True, timeout: float = WAIT) -> str:
    """Poll /metrics until `line` is (or is not) in it; returns the text."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, text = await h.api("GET", "/metrics")
        assert status == 200
        if (line in text) == present:
            return str(text)
        assert loop.time() < deadline, f"{line!r} {'never' if present else 'still'} in /metrics:\n{text}"
        await asyncio.sleep(0.02)


# --- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture
def certificate() -> Any:
    cert = generate_certificate(["127.0.0.1"])
    yield cert
    cert.cleanup()


async def test_api_over_https(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str,
                              certificate: LabCertificate) -> None:
    cfg = with_updates(monitor_config(lab.manager_url, tmp_path, token),
                       http={"tls_cert": str(certificate.cert_file), "tls_key": str(certificate.key_file)})
    h = await start_daemon(cfg)
    host, port = h.daemon.http_address or ("", 0)
    trusted = ssl.create_default_context(cafile=str(certificate.cert_file))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.get(f"https://{host}:{port}/healthz", ssl=trusted) as r:
            assert r.status == 200 and (await r.json())["ok"] is True
        headers = {"Authorization": f"Bearer {token}"}
        async with s.post(f"https://{host}:{port}/api/v1/failovers", ssl=trusted, headers=headers,
                          json={"server": "enc1-bay1", "reason": "over TLS"}) as r:
            assert r.status == 202, await r.text()
            job = (await r.json())["job"]
        async with s.get(f"https://{host}:{port}/api/v1/jobs/{job}", ssl=trusted) as r:
            assert r.status == 200 and (await r.json())["trigger"]["reason"] == "over TLS"
        # Without trusting the certificate the client refuses it; plain HTTP gets no answer.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with s.get(f"https://{host}:{port}/healthz"):
                pass
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"http://{host}:{port}/healthz"):
                pass
    await h.wait_for(lambda: job in h.jobs and not h.jobs[job].state.active)
    assert h.jobs[job].state.value == "completed"


async def test_tls_settings_are_checked(tmp_path: Path, certificate: LabCertificate) -> None:
    base = {"store": str(tmp_path / "m.db"), "redfish_events": {"poll_interval": 0}}
    with pytest.raises(ValueError, match="go together"):
        MonitorConfig.model_validate({**base, "http": {"tls_cert": str(certificate.cert_file)}})
    for cert, key, why in ((tmp_path / "missing.pem", certificate.key_file, "no such file"),
                           (certificate.key_file, certificate.key_file, "not a matching PEM")):
        cfg = MonitorConfig.model_validate({**base, "http": {"listen": "127.0.0.1:0", "tls_cert": str(cert),
                                                             "tls_key": str(key)}})
        with pytest.raises(StartupError, match=why) as err:
            await Daemon(LoadedConfig(cfg, None)).run(asyncio.Event())
        assert "PRIVATE KEY" not in str(err.value)


# --- SNMP sender networks ----------------------------------------------------------------------------


def test_snmp_allowed_senders_are_validated() -> None:
    with pytest.raises(ValueError, match="not a network"):
        MonitorConfig.model_validate({"snmp": {"allowed_senders": ["127.77.0.0/33"]}})
    cfg = MonitorConfig.model_validate({"snmp": {"allowed_senders": ["127.77.0.0/16", "::1/128"]}})
    assert cfg.snmp.allowed_senders == ["127.77.0.0/16", "::1/128"]


@needs_snmptrap
async def test_snmp_trap_from_outside_allowed_senders_is_dropped_before_decoding(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    cfg = with_updates(monitor_config(lab.manager_url, tmp_path, token),
                       snmp={"listen": "127.0.0.1:0", "communities": ["public"],
                             "allowed_senders": ["127.77.1.0/24"]})
    h = await start_daemon(cfg)
    assert h.daemon.snmp_address is not None
    target = f"127.0.0.1:{h.daemon.snmp_address[1]}"
    await snmptrap("--clientaddr=127.77.1.1", "-v", "2c", "-c", "public", target, "", MEM)
    await metric(h, 'snmp_traps_received_total{version="2c"} 1')
    await snmptrap("--clientaddr=127.0.0.1", "-v", "2c", "-c", "public", target, "", MEM)
    await metric(h, 'snmp_dropped_total{reason="sender_not_allowed"} 1')
    # Garbage from a refused sender is refused for where it comes from, never decoded (not "malformed").
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"\x30\x03\x02\x01", ("127.0.0.1", h.daemon.snmp_address[1]))
    text = await metric(h, 'snmp_dropped_total{reason="sender_not_allowed"} 2')
    assert 'snmp_dropped_total{reason="malformed"} 0.0' in text
    assert 'snmp_traps_received_total{version="2c"} 1' in text


@needs_snmptrap
async def test_v1_v2c_refused_when_disabled(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                            token: str) -> None:
    cfg = with_updates(monitor_config(lab.manager_url, tmp_path, token),
                       snmp={"listen": "127.0.0.1:0", "communities": ["public"], "v1_v2c": False})
    h = await start_daemon(cfg)
    assert h.daemon.snmp_address is not None
    target = f"127.0.0.1:{h.daemon.snmp_address[1]}"
    await snmptrap("-v", "2c", "-c", "public", target, "", MEM)
    await snmptrap("-v", "1", "-c", "public", target, "1.3.6.1.4.1.232", "127.77.1.2", "6", "6015", "")
    text = await metric(h, 'snmp_dropped_total{reason="version_disabled"} 2')
    assert all(f'snmp_traps_received_total{{version="{v}"}} 0.0' in text for v in ("1", "2c", "3"))


# --- rate limit --------------------------------------------------------------------------------------


def test_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, 3, now=lambda: now[0], max_clients=4)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)  # empty: one token in half a second at 2/s
    assert limiter.take("b") == 0  # per client
    now[0] += 0.5
    assert limiter.take("a") == 0 and limiter.take("a") > 0
    now[0] += 100  # refilled to the burst, never beyond
    assert [limiter.take("a") for _ in range(4)][-1] > 0
    for n in range(1000):  # many addresses: memory stays bounded
        limiter.take(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) <= 4


async def test_rate_limit(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    cfg = with_updates(monitor_config(lab.manager_url, tmp_path, token),
                       http={"rate_limit": 0.5, "rate_limit_burst": 3})
    h = await start_daemon(cfg)
    assert [(await h.api("GET", "/api/v1/jobs"))[0] for _ in range(3)] == [200, 200, 200]
    async with h.http.get(h.base + "/api/v1/jobs") as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert "rate limit" in (await r.json())["error"]
    # Mutating calls are limited too (before the token is even looked at).
    assert (await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay1"}, token="wrong"))[0] == 429
    for _ in range(30):  # probes and scrapes are exempt
        assert (await h.api("GET", "/healthz"))[0] == 200
    text = await metric(h, 'api_rejected_total{reason="rate_limited"} 2')
    assert 'api_rejected_total{reason="unauthorized"} 0.0' in text


# --- tokens, bodies, senders -------------------------------------------------------------------------


async def test_every_mutating_call_needs_the_token(lab: LabSimulator, start_daemon: DaemonFactory,
                                                   tmp_path: Path, token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/failovers", {"server": "enc1-bay1"}),
        ("POST", "/api/v1/events", {"source": "snmp", "sender": "127.77.1.1", "trap_oid": CPU}),
        ("POST", "/api/v1/pause", {"reason": "x"}),
        ("DELETE", "/api/v1/pause", None),
    ]
    refused = 0
    for method, path, body in calls:
        for bad in (None, "", "wrong", token + "x", token[:-1], token.upper() + "!"):
            status, answer = await h.api(method, path, body, token=bad)
            assert status == 401, (method, path, bad, answer)
            refused += 1
        for header in (f"Basic {token}", token, f"Bearer{token}", f"Token {token}"):
            async with h.http.request(method, h.base + path, json=body,
                                      headers={"Authorization": header}) as r:
                assert r.status == 401, (method, path, header)
                assert r.headers["WWW-Authenticate"] == "Bearer"
                refused += 1
    await metric(h, f'api_rejected_total{{reason="unauthorized"}} {refused}')
    assert (await h.api("GET", "/api/v1/pause"))[1] == {"paused": None}  # nothing was paused
    assert h.jobs == {}
    assert (await h.api("POST", "/api/v1/pause", {"reason": "x"}, token=f" {token} "))[0] == 200


async def test_oversized_bodies(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                token: str) -> None:
    cfg = with_updates(monitor_config(lab.manager_url, tmp_path, token), http={"max_body": 4096},
                       redfish_events={"secret": "s" * 24, "max_body": 2048})
    h = await start_daemon(cfg)
    big = json.dumps({"server": "enc1-bay1", "reason": "x" * 5000}).encode()
    assert (await h.api("POST", "/api/v1/failovers", raw=big))[0] == 413
    assert (await h.api("POST", "/api/v1/events", raw=b"[" + b"{}," * 2000 + b"{}]"))[0] == 413
    assert (await h.api("POST", "/api/v1/pause", raw=b'{"reason": "' + b"p" * 5000 + b'"}'))[0] == 413
    await metric(h, 'api_rejected_total{reason="too_large"} 3')
    assert h.jobs == {}
    status, _ = await h.api("POST", "/api/v1/events/redfish", raw=b'{"Events": [' + b" " * 4000 + b"]}",
                            token=None)
    assert status == 413
    await metric(h, 'redfish_events_dropped_total{reason="too_large"} 1')


async def test_redfish_events_from_outside_allowed_senders(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    secret = "s" * 24
    cfg = with_updates(monitor_config(lab.manager_url, tmp_path, token),
                       redfish_events={"secret": secret, "allowed_senders": ["10.0.0.0/8"]})
    h = await start_daemon(cfg)
    good = bmc_token(secret, lab.bmc_url("enc1-bay1"))
    event = {"Events": [{"MessageId": "iLOEvents.2.3.PowerSupplyFailed", "Severity": "Critical"}]}
    status, _ = await h.api("POST", "/api/v1/events/redfish", event, token=good)
    assert status == 403
    await metric(h, 'redfish_events_dropped_total{reason="sender"} 1')
    assert 'redfish_events_received_total{source="redfish"} 0.0' in (await h.api("GET", "/metrics"))[1]


# --- secrets -----------------------------------------------------------------------------------------

BMC_PASSWORD = "bmc-Pw-7c1f9a2e"
LAB_TOKEN = "lab-Tok-5d8e3b0a"
API_TOKEN = "api-Tok-91b2c3d4e5"
COMMUNITY = "comm-Sec-4a6f0e1d"
AUTH_KEY = "v3auth-Key-0b7d2c"
PRIV_KEY = "v3priv-Key-e3f8a1"
MQTT_PASSWORD = "mqtt-Pw-2f6b9c0d"
EVENT_SECRET = "rf-Secret-8a0c7e5b3d"
ENGINE_ID = "0x8000000001020304"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def secret_lab() -> AsyncIterator[LabSimulator]:
    cfg = LabConfig.model_validate({"listen": "127.0.0.1:0", "latency": FAST_LATENCY, "enclosures": 2,
                                    "api_token": LAB_TOKEN,
                                    "credentials": {"username": "admin", "password": BMC_PASSWORD}})
    async with LabSimulator(cfg) as sim:
        yield sim


@needs_snmptrap
async def test_secrets_never_logged_or_shown(secret_lab: LabSimulator, start_daemon: DaemonFactory,
                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lab = secret_lab
    rules = tmp_path / "site-rules.yaml"
    rules.write_text(yaml.safe_dump(SITE_RULES))
    bmc_urls = [lab.bmc_url(s) for s in ("enc1-bay1", "enc1-bay2", "enc1-bay3", "enc1-bay9")]
    cfg = MonitorConfig.model_validate({
        "instance": "secrets",
        "http": {"listen": "127.0.0.1:0", "token": API_TOKEN},
        "store": str(tmp_path / "monitor.db"),
        "sqlite": {"synchronous": "normal"},
        "inventory": {"source": "lab", "lab": {"url": lab.manager_url, "token": LAB_TOKEN, "timeout": 5}},
        "redfish": {"timeout": 5},
        "failover": {"poll_interval": 0.02, "power_off_timeout": 5, "power_on_timeout": 5},
        "rules": {"builtin": True, "files": [str(rules)]},
        "snmp": {"listen": "127.0.0.1:0", "communities": [COMMUNITY],
                 "users": [{"name": "failover", "auth_protocol": "SHA", "auth_key": AUTH_KEY,
                            "priv_protocol": "AES", "priv_key": PRIV_KEY, "engine_ids": [ENGINE_ID]}]},
        "redfish_events": {"secret": EVENT_SECRET, "poll_interval": 0.5, "check_interval": 3600,
                           "destination": f"http://127.0.0.1:{closed_port()}/api/v1/events/redfish"},
        "mqtt": {"url": f"mqtt://monitor:{MQTT_PASSWORD}@127.0.0.1:{closed_port()}", "timeout": 1},
        "log_level": "debug",
    })
    h = await start_daemon(cfg)
    assert h.daemon.snmp_address is not None
    target = f"127.0.0.1:{h.daemon.snmp_address[1]}"
    # Rule decisions: a v2c trap failing enc1-bay1 over (its BMC reads Critical, so the confirmation
    # agrees), a v3 authPriv alert, bad credentials of each kind, a Redfish push with a valid per-BMC
    # token and one with a bad one.
    lab.world.server("enc1-bay1").health = "Critical"
    await snmptrap("--clientaddr=127.77.1.1", "-v", "2c", "-c", COMMUNITY, target, "", CPU)
    await snmptrap("-v", "3", "-u", "failover", "-l", "authPriv", "-a", "SHA", "-A", AUTH_KEY, "-x", "AES",
                   "-X", PRIV_KEY, "-e", ENGINE_ID, target, "", MEM, "1.3.6.1.2.1.1.5.0", "s",
                   "host12.lab.example")
    await snmptrap("-v", "2c", "-c", COMMUNITY + "-wrong", target, "", CPU)
    await snmptrap("-v", "3", "-u", "failover", "-l", "authPriv", "-a", "SHA", "-A", AUTH_KEY + "x", "-x",
                   "AES", "-X", PRIV_KEY, "-e", ENGINE_ID, target, "", MEM)
    push = {"Context": CONTEXT_PREFIX + bmc_token(EVENT_SECRET, bmc_urls[2]),
            "Events": [{"MessageId": "iLOEvents.2.3.PowerSupplyFailed", "Severity": "Critical",
                        "OriginOfCondition": "/redfish/v1/Systems/1"}]}
    answers: list[Any] = []
    status, body = await h.api("POST", "/api/v1/events/redfish", push, token=None)
    assert status == 204, body
    answers.append(await h.api("POST", "/api/v1/events/redfish", push, token=EVENT_SECRET))
    answers.append(await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay2"}, token=API_TOKEN + "x"))
    answers.append(await h.api("POST", "/api/v1/events", raw=b"{not json " + API_TOKEN.encode()))
    await h.wait_for(lambda: any(j.server == "enc1-bay1" and not j.state.active for j in h.jobs.values()))
    await wait_decisions(h, 3)
    await metric(h, 'snmp_dropped_total{reason="wrong_digest"} 1')
    await metric(h, 'snmp_dropped_total{reason="bad_community"} 1')
    job = next(j for j in h.jobs.values() if j.server == "enc1-bay1")
    assert job.state.value == "completed", job.public()
    for path in ("/api/v1/servers", "/api/v1/servers/enc1-bay1", "/api/v1/servers/enc1-bay9",
                 "/api/v1/jobs", f"/api/v1/jobs/{job.id}", "/api/v1/decisions",
                 "/api/v1/decisions?server=enc1-bay2", "/api/v1/groups", "/api/v1/pause", "/healthz",
                 "/metrics"):
        status, body = await h.api("GET", path)
        assert status == 200, (path, body)
        answers.append(body)
    answers.append(await h.api("POST", "/api/v1/rules/explain",
                               {"source": "snmp", "sender": "127.77.1.1", "trap_oid": CPU}))
    h.daemon_stop()
    await h.stopped()

    shown = json.dumps(answers)
    logged = "\n".join(logging.Formatter("%(name)s %(levelname)s %(message)s").format(r)
                       for r in caplog.records)
    assert "listening on http" in logged and "SNMP: dropped" in logged  # the logs were captured
    secrets = {
        "API token": API_TOKEN, "BMC password": BMC_PASSWORD, "lab API token": LAB_TOKEN,
        "SNMP community": COMMUNITY, "SNMPv3 auth key": AUTH_KEY, "SNMPv3 priv key": PRIV_KEY,
        "MQTT password": MQTT_PASSWORD, "Redfish event secret": EVENT_SECRET,
        "BMC Basic credentials": base64.b64encode(f"admin:{BMC_PASSWORD}".encode()).decode(),
    }
    for n, url in enumerate(bmc_urls):
        secrets[f"Redfish token of BMC {n}"] = bmc_token(EVENT_SECRET, url)
    for what, value in secrets.items():
        assert value not in logged, f"the {what} is in the log"
        assert value not in shown, f"the {what} is in an API answer"
