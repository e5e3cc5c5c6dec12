"""RedfishPower against the real sushy-tools emulator, plus small local servers for quirks and failures."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from adapters.redfish.power import RedfishPower
from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AuthenticationFailed,
    NotFound,
    OperationRejected,
)
from monitor.core.model import BmcEndpoint, Health, PowerState, Server
from tests.peers.sushy import SushyPeer, make_self_signed, start_sushy
from tests.support.net import bound_socket

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

POLL_DEADLINE = 20.0

READ_ONLY = "11111111-1111-4111-8111-111111111111"
TO_POWER_OFF = "22222222-2222-4222-8222-222222222222"
ALREADY_OFF = "33333333-3333-4333-8333-333333333333"
TO_POWER_ON = "44444444-4444-4444-8444-444444444444"

SYSTEMS = [
    {"uuid": READ_ONLY, "name": "node01", "power_state": "On",
     "nics": [{"mac": "00:5c:52:31:3a:01", "ip": "127.0.0.2"}]},
    {"uuid": TO_POWER_OFF, "name": "node02", "power_state": "On",
     "nics": [{"mac": "00:5c:52:31:3a:02", "ip": "127.0.0.3"}]},
    {"uuid": ALREADY_OFF, "name": "node03", "power_state": "Off",
     "nics": [{"mac": "00:5c:52:31:3a:03", "ip": "127.0.0.4"}]},
    {"uuid": TO_POWER_ON, "name": "node04", "power_state": "Off",
     "nics": [{"mac": "00:5c:52:31:3a:04", "ip": "127.0.0.5"}]},
]  # fmt: skip


def server_for(bmc: BmcEndpoint | None, server_id: str = "enc1-bay1") -> Server:
    return Server(server_id, "group1", "domain1", "enc1", 1, "ProLiant BL460c Gen8", bmc=bmc)


async def wait_for_power(power: RedfishPower, server: Server, goal: PowerState) -> float:
    """Poll an outside peer (sushy applies resets after 1-11 s); return the seconds it took."""
    started = time.monotonic()
    deadline = started + POLL_DEADLINE
    while (state := await power.power_state(server)) is not goal:
        if time.monotonic() > deadline:
            pytest.fail(f"power state still {state.value} after {POLL_DEADLINE:g} s (wanted {goal.value})")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sushy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SushyPeer]:
    async with start_sushy(tmp_path_factory.mktemp("sushy"), SYSTEMS) as peer:
        yield peer


@pytest_asyncio.fixture(loop_scope="module")
async def power() -> AsyncIterator[RedfishPower]:
    adapter = RedfishPower(timeout=5.0)
    try:
        yield adapter
    finally:
        await adapter.close()


# --- against sushy-tools ------------------------------------------------------------------------


async def test_power_state_reads_on(sushy: SushyPeer, power: RedfishPower) -> None:
    assert await power.power_state(server_for(sushy.endpoint(READ_ONLY))) is PowerState.ON


async def test_system_by_name_follows_redirect(sushy: SushyPeer, power: RedfishPower) -> None:
    # sushy answers /Systems/node01 with a 307 to the UUID URL.
    assert await power.power_state(server_for(sushy.endpoint("node01"))) is PowerState.ON
    by_path = sushy.endpoint(f"/redfish/v1/Systems/{READ_ONLY}")
    assert await power.power_state(server_for(by_path)) is PowerState.ON


async def test_no_system_named_on_a_multi_system_service_is_refused(sushy: SushyPeer,
                                                                    power: RedfishPower) -> None:
    # Never "the first": sushy lists four systems here.
    with pytest.raises(AdapterError, match=r"lists 4 ComputerSystems .* the inventory names none"):
        await power.power_state(server_for(sushy.endpoint(None)))


async def test_force_off_then_off(sushy: SushyPeer, power: RedfishPower) -> None:
    server = server_for(sushy.endpoint(TO_POWER_OFF))
    assert await power.power_state(server) is PowerState.ON
    await power.force_off(server)
    took = await wait_for_power(power, server, PowerState.OFF)
    print(f"sushy ForceOff applied after {took:.1f} s")


async def test_force_off_on_off_server_does_not_raise(sushy: SushyPeer, power: RedfishPower) -> None:
    server = server_for(sushy.endpoint(ALREADY_OFF))
    await power.force_off(server)
    assert await power.power_state(server) is PowerState.OFF


async def test_power_on(sushy: SushyPeer, power: RedfishPower) -> None:
    server = server_for(sushy.endpoint(TO_POWER_ON))
    assert await power.power_state(server) is PowerState.OFF
    await power.power_on(server)
    took = await wait_for_power(power, server, PowerState.ON)
    print(f"sushy On applied after {took:.1f} s")
    await power.power_on(server)  # already on: not an error


async def test_health(sushy: SushyPeer, power: RedfishPower) -> None:
    reading = await power.health(server_for(sushy.endpoint(READ_ONLY)))
    assert reading.power is PowerState.ON
    assert reading.health is Health.OK
    assert reading.health_rollup is Health.OK  # sushy spells it HealthRollUp
    assert reading.state == "Enabled"


async def test_tls_verified_with_ca_file(sushy: SushyPeer, power: RedfishPower) -> None:
    bmc = sushy.endpoint(READ_ONLY, verify_tls=True, ca_file=str(sushy.cert_file))
    assert await power.power_state(server_for(bmc)) is PowerState.ON


async def test_tls_verification_failure_is_unavailable(sushy: SushyPeer, power: RedfishPower) -> None:
    with pytest.raises(AdapterUnavailable) as caught:
        await power.power_state(server_for(sushy.endpoint(READ_ONLY, verify_tls=True)))
    assert caught.value.endpoint == sushy.url


async def test_wrong_password(sushy: SushyPeer, power: RedfishPower) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await power.power_state(server_for(sushy.endpoint(READ_ONLY, password="wrong")))
    assert caught.value.endpoint == sushy.url
    with pytest.raises(AuthenticationFailed):
        await power.force_off(server_for(sushy.endpoint(READ_ONLY, password="wrong")))


async def test_unknown_system_is_not_found(sushy: SushyPeer, power: RedfishPower) -> None:
    with pytest.raises(NotFound):
        await power.power_state(server_for(sushy.endpoint("no-such-system")))


async def test_session_auth_without_session_service(sushy: SushyPeer, power: RedfishPower) -> None:
    # sushy has no SessionService; its Basic-auth middleware answers the credential-less login POST 401.
    with pytest.raises(AuthenticationFailed):
        await power.power_state(server_for(sushy.endpoint(READ_ONLY, auth="session")))


# --- failures without a BMC ---------------------------------------------------------------------


async def test_server_without_bmc(power: RedfishPower) -> None:
    with pytest.raises(AdapterError):
        await power.power_state(server_for(None))


async def test_plain_http_is_refused(power: RedfishPower) -> None:
    with pytest.raises(AdapterError, match="HTTPS"):
        await power.power_state(server_for(BmcEndpoint("http://127.0.0.1:1", "u", "p")))


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # nothing listens once the socket is closed


async def test_nothing_listening_is_unavailable(power: RedfishPower) -> None:
    url = f"https://127.0.0.1:{_closed_port()}"
    with pytest.raises(AdapterUnavailable) as caught:
        await power.force_off(server_for(BmcEndpoint(url, "u", "p", verify_tls=False)))
    assert caught.value.endpoint == url


async def test_silent_server_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # never answers; returns when the client gives up
        writer.close()

    silent = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    adapter = RedfishPower(timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(AdapterTimeout) as caught:
            await adapter.power_state(server_for(BmcEndpoint(url, "u", "p", verify_tls=False)))
        assert time.monotonic() - started < 3.0
        assert caught.value.endpoint == url
    finally:
        await adapter.close()
        for writer in writers:
            writer.close()
        silent.close()
        await silent.wait_closed()


# --- a tiny HTTPS BMC for vendor quirks ---------------------------------------------------------

ILO_INVALID_STATE = {
    "error": {
        "code": "iLO.0.10.ExtendedInfo",
        "message": "See @Message.ExtendedInfo for more information.",
        "@Message.ExtendedInfo": [{"MessageId": "iLO.2.14.InvalidOperationForSystemState"}],
    }
}
ILO_SUCCESS = {
    "error": {
        "code": "iLO.0.10.ExtendedInfo",
        "message": "See @Message.ExtendedInfo for more information.",
        "@Message.ExtendedInfo": [{"MessageId": "Base.1.4.Success"}],
    }
}
IDRAC_CONFLICT = {
    "error": {
        "code": "Base.1.12.GeneralError",
        "message": "A general error has occurred. See ExtendedInfo for more information",
        "@Message.ExtendedInfo": [
            {"MessageId": "IDRAC.2.8.PSU501", "Message": "Unable to perform the operation because the "
             "server is already in the requested power state."}
        ],
    }
}  # fmt: skip


@dataclass
class FakeBmc:
    """What the fake BMC answers; tests change it between calls."""

    url: str = ""
    power_state: object = "Off"
    reset_status: int = 400
    reset_body: object = field(default_factory=lambda: ILO_INVALID_STATE)
    system_body: Callable[[FakeBmc], object] | None = None
    """Overrides the ComputerSystem body (odd shapes)."""
    raw_system: bytes | None = None
    """Overrides the ComputerSystem body with raw bytes (not JSON)."""
    resets: list[object] = field(default_factory=list)
    sessions_created: int = 0
    sessions_deleted: int = 0
    tokens: set[str] = field(default_factory=set)
    """Valid X-Auth-Token values (a test may drop one to expire the session)."""

    def authorised(self, request: web.Request) -> bool:
        token = request.headers.get("X-Auth-Token")
        basic = request.headers.get("Authorization") == BASIC_U_P
        return basic or (token is not None and token in self.tokens)


SYSTEM = "/redfish/v1/Systems/1"
SESSIONS = "/redfish/v1/SessionService/Sessions"
BASIC_U_P = "Basic dTpw"  # u:p


def _system_json(bmc: FakeBmc) -> object:
    if bmc.system_body is not None:
        return bmc.system_body(bmc)
    return {
        "@odata.id": "/redfish/v1/Systems/1",
        "Id": "1",
        "PowerState": bmc.power_state,
        "Status": {"State": "Enabled", "Health": "Critical", "HealthRollup": "Warning"},
        "Actions": {"#ComputerSystem.Reset": {"target": f"{SYSTEM}/Actions/ComputerSystem.Reset/"}},
    }


def _bmc_app(bmc: FakeBmc) -> web.Application:
    async def root(_: web.Request) -> web.Response:
        return web.json_response({"Links": {"Sessions": {"@odata.id": SESSIONS}}})

    async def systems(_: web.Request) -> web.Response:
        return web.json_response({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})

    async def system(request: web.Request) -> web.Response:
        if not bmc.authorised(request):
            return web.json_response({}, status=401)
        if bmc.raw_system is not None:
            return web.Response(body=bmc.raw_system, content_type="text/html")
        return web.json_response(_system_json(bmc))

    async def reset(request: web.Request) -> web.Response:
        if not bmc.authorised(request):
            return web.json_response({}, status=401)
        bmc.resets.append(await request.json())
        return web.json_response(bmc.reset_body, status=bmc.reset_status)

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"UserName": "u", "Password": "p"}:
            return web.json_response({}, status=401)
        bmc.sessions_created += 1
        token = f"token-{bmc.sessions_created}"
        bmc.tokens.add(token)
        location = f"{SESSIONS}/{bmc.sessions_created}"
        return web.json_response(
            {"@odata.id": location}, status=201, headers={"X-Auth-Token": token, "Location": location}
        )

    async def logout(request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token")
        if token not in bmc.tokens:
            return web.json_response({}, status=401)
        bmc.tokens.discard(token)
        bmc.sessions_deleted += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/redfish/v1/", root)
    app.router.add_get("/redfish/v1/Systems", systems)
    app.router.add_get("/redfish/v1/Systems/1", system)
    app.router.add_post("/redfish/v1/Systems/1/Actions/ComputerSystem.Reset/", reset)
    app.router.add_post(SESSIONS, login)
    app.router.add_delete(SESSIONS + "/{session}", logout)
    return app


@pytest_asyncio.fixture(loop_scope="module")
async def fake_bmc(tmp_path: Path) -> AsyncIterator[FakeBmc]:
    cert, key = make_self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    bmc = FakeBmc()
    runner = web.AppRunner(_bmc_app(bmc), access_log=None)
    await runner.setup()
    sock = bound_socket()
    bmc.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    try:
        await web.SockSite(runner, sock, ssl_context=context).start()
        yield bmc
    finally:
        await runner.cleanup()
        sock.close()


def _fake_server(bmc: FakeBmc, *, auth: str = "basic") -> Server:
    return server_for(BmcEndpoint(bmc.url, "u", "p", verify_tls=False, auth=auth))


async def test_ilo_400_on_force_off_when_off_is_success(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.power_state = "Off"
    await power.force_off(_fake_server(fake_bmc))
    assert fake_bmc.resets == [{"ResetType": "ForceOff"}]


async def test_ilo_400_on_force_off_when_on_is_rejected(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.power_state = "On"
    with pytest.raises(OperationRejected) as caught:
        await power.force_off(_fake_server(fake_bmc))
    assert caught.value.status == 400
    assert "InvalidOperationForSystemState" in str(caught.value)
    assert caught.value.endpoint == fake_bmc.url


async def test_idrac_409_on_power_on_when_on_is_success(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.power_state = "On"
    fake_bmc.reset_status, fake_bmc.reset_body = 409, IDRAC_CONFLICT
    await power.power_on(_fake_server(fake_bmc))
    assert fake_bmc.resets == [{"ResetType": "On"}]


async def test_unknown_power_state_after_400_is_rejected(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.power_state = "Sideways"
    with pytest.raises(OperationRejected):
        await power.force_off(_fake_server(fake_bmc))
    assert await power.power_state(_fake_server(fake_bmc)) is PowerState.UNKNOWN


async def test_ilo_success_wrapped_in_error_is_success(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.power_state = "On"
    fake_bmc.reset_status, fake_bmc.reset_body = 200, ILO_SUCCESS
    await power.force_off(_fake_server(fake_bmc))


async def test_server_error_is_rejected_with_status(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.reset_status, fake_bmc.reset_body = 501, "not implemented"
    with pytest.raises(OperationRejected) as caught:
        await power.force_off(_fake_server(fake_bmc))
    assert caught.value.status == 501


async def test_health_reads_rollup_and_state(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.power_state = "PoweringOff"
    reading = await power.health(_fake_server(fake_bmc))
    assert reading.power is PowerState.POWERING_OFF
    assert reading.health is Health.CRITICAL
    assert reading.health_rollup is Health.WARNING
    assert reading.state == "Enabled"


@pytest.mark.parametrize(
    "body",
    [
        [1, 2, 3],
        "On",
        {"PowerState": None, "Status": "bad", "Actions": []},
        {"PowerState": 1, "Status": {"Health": 7, "HealthRollup": None, "State": 3}},
    ],
)
async def test_odd_bodies_read_as_unknown(fake_bmc: FakeBmc, power: RedfishPower, body: object) -> None:
    fake_bmc.system_body = lambda _: body
    server = _fake_server(fake_bmc)
    assert await power.power_state(server) is PowerState.UNKNOWN
    reading = await power.health(server)
    assert (reading.power, reading.health, reading.health_rollup, reading.state) == (
        PowerState.UNKNOWN,
        Health.UNKNOWN,
        Health.UNKNOWN,
        None,
    )


async def test_non_json_body_reads_as_unknown(fake_bmc: FakeBmc, power: RedfishPower) -> None:
    fake_bmc.raw_system = b"<html>busy</html>"
    assert await power.power_state(_fake_server(fake_bmc)) is PowerState.UNKNOWN


async def test_session_auth_logs_in_once_and_out_on_close(fake_bmc: FakeBmc) -> None:
    adapter = RedfishPower(timeout=5.0)
    server = _fake_server(fake_bmc, auth="session")
    fake_bmc.power_state = "On"
    calls: list[Awaitable[PowerState]] = [adapter.power_state(server) for _ in range(5)]
    assert set(await asyncio.gather(*calls)) == {PowerState.ON}
    assert fake_bmc.sessions_created == 1
    await adapter.close()
    assert fake_bmc.sessions_deleted == 1
    assert not fake_bmc.tokens


async def test_expired_session_is_renewed_for_reset(fake_bmc: FakeBmc) -> None:
    adapter = RedfishPower(timeout=5.0)
    server = _fake_server(fake_bmc, auth="session")
    fake_bmc.power_state = "On"
    fake_bmc.reset_status, fake_bmc.reset_body = 204, None
    try:
        assert await adapter.power_state(server) is PowerState.ON
        fake_bmc.tokens.clear()  # the BMC expired our session
        await adapter.force_off(server)
        assert fake_bmc.resets == [{"ResetType": "ForceOff"}]
        assert fake_bmc.sessions_created == 2
    finally:
        await adapter.close()
    assert not fake_bmc.tokens


async def test_injected_session_is_not_closed(fake_bmc: FakeBmc) -> None:
    async with aiohttp.ClientSession() as http:
        adapter = RedfishPower(session=http)
        fake_bmc.power_state = "On"
        assert await adapter.power_state(_fake_server(fake_bmc)) is PowerState.ON
        await adapter.close()
        assert not http.closed
