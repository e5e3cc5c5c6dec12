"""TLS session resumption to BMCs (adapters.redfish.client.ResumingContext), against real aiohttp TLS
servers on loopback that close every connection after one answer (as a BMC read once per poll interval,
longer than the keep-alive, does) and record, per request, whether the handshake resumed a session."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from adapters.redfish.client import (
    BmcConnector,
    RedfishConnections,
    ResumingContext,
    new_session,
    unverified_context,
)
from monitor.core.errors import AdapterError
from monitor.core.model import BmcEndpoint
from tests.peers.sushy import make_self_signed
from tests.support.net import bound_socket

pytestmark = pytest.mark.asyncio(loop_scope="module")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class TlsPeer:
    """A TLS server; `reused` gets one entry per request: whether its connection resumed a session."""

    url: str = ""
    reused: list[bool] = field(default_factory=list)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def start_peer(context: ssl.SSLContext, cleanup: list[Callable[[], Awaitable[None]]],
                     port: int = 0) -> TlsPeer:
    peer = TlsPeer()

    @web.middleware
    async def one_answer_per_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        peer.reused.append(bool(ssl_object is not None and ssl_object.session_reused))
        response = await handler(request)
        response.force_close()
        return response

    async def systems(_: web.Request) -> web.Response:
        return web.json_response({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})

    app = web.Application(middlewares=[one_answer_per_connection])
    app.router.add_get("/redfish/v1/Systems", systems)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = bound_socket() if port == 0 else _socket_on(port)
    peer.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    await web.SockSite(runner, sock, ssl_context=context).start()

    async def stop() -> None:
        await runner.cleanup()
        sock.close()

    cleanup.append(stop)
    return peer


def _socket_on(port: int) -> socket.socket:
    """A listening socket on the port a stopped peer had (SO_REUSEADDR: its connections in TIME_WAIT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


@pytest_asyncio.fixture(loop_scope="module")
async def stops() -> AsyncIterator[list[Callable[[], Awaitable[None]]]]:
    cleanup: list[Callable[[], Awaitable[None]]] = []
    try:
        yield cleanup
    finally:
        for stop in reversed(cleanup):
            await stop()


@pytest_asyncio.fixture(loop_scope="module")
async def conns() -> AsyncIterator[RedfishConnections]:
    made = RedfishConnections(timeout=5.0, session=None, owner="test reader", anonymous=True)
    try:
        yield made
    finally:
        await made.close()


async def read(conns: RedfishConnections, bmc: BmcEndpoint, times: int) -> None:
    for _ in range(times):
        reply = await conns.get(bmc, "/redfish/v1/Systems")
        assert reply.status == 200, reply


async def test_unverified_connections_resume_the_previous_session(
        tmp_path: Path, stops: list[Callable[[], Awaitable[None]]], conns: RedfishConnections) -> None:
    peer = await start_peer(server_context(*make_self_signed(tmp_path)), stops)
    await read(conns, BmcEndpoint(peer.url, "", "", verify_tls=False), 4)
    assert peer.reused == [False, True, True, True]


async def test_verified_connections_resume_and_still_verify(
        tmp_path: Path, stops: list[Callable[[], Awaitable[None]]], conns: RedfishConnections) -> None:
    cert, key = make_self_signed(tmp_path)
    peer = await start_peer(server_context(cert, key), stops)
    await read(conns, BmcEndpoint(peer.url, "", "", verify_tls=True, ca_file=str(cert)), 3)
    assert peer.reused == [False, True, True]
    # The session of that verified peer is never offered under another trust anchor: a CA file that
    # does not sign the peer's certificate still fails the (full) handshake.
    (tmp_path / "other").mkdir()
    other_ca, _ = make_self_signed(tmp_path / "other")
    with pytest.raises(AdapterError, match="certificate"):
        await read(conns, BmcEndpoint(peer.url, "", "", verify_tls=True, ca_file=str(other_ca)), 1)
    assert peer.reused == [False, True, True]  # the refused handshake reached no handler


async def test_a_session_is_offered_only_to_the_peer_that_issued_it(
        tmp_path: Path, stops: list[Callable[[], Awaitable[None]]], conns: RedfishConnections) -> None:
    # One server context on two ports: the two share session ticket keys, so a session of one would
    # resume on the other; the client keys sessions by (host, port) and must not offer it.
    context = server_context(*make_self_signed(tmp_path))
    first, second = await start_peer(context, stops), await start_peer(context, stops)
    await read(conns, BmcEndpoint(first.url, "", "", verify_tls=False), 2)
    await read(conns, BmcEndpoint(second.url, "", "", verify_tls=False), 2)
    assert first.reused == [False, True]
    assert second.reused == [False, True]


async def test_a_restarted_peer_that_rejects_the_old_session_gets_a_full_handshake(
        tmp_path: Path, stops: list[Callable[[], Awaitable[None]]], conns: RedfishConnections) -> None:
    cert, key = make_self_signed(tmp_path)
    peer = await start_peer(server_context(cert, key), stops)
    bmc = BmcEndpoint(peer.url, "", "", verify_tls=False)
    await read(conns, bmc, 2)
    assert peer.reused == [False, True]
    await stops.pop()()  # the BMC restarts on the same port with new ticket keys
    port = int(peer.url.rsplit(":", 1)[1])
    again = await start_peer(server_context(cert, key), stops, port=port)
    await read(conns, bmc, 3)
    assert again.reused == [False, True, True]


async def test_sessions_are_bounded_least_recently_stored_first(
        tmp_path: Path, stops: list[Callable[[], Awaitable[None]]]) -> None:
    context = unverified_context()
    bounded = ResumingContext(max_sessions=2)
    bounded.check_hostname, bounded.verify_mode = False, ssl.CERT_NONE
    server = server_context(*make_self_signed(tmp_path))
    peers = [await start_peer(server, stops) for _ in range(3)]
    connector = BmcConnector(limit=8, limit_per_host=1, max_idle_hosts=8)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def get(peer: TlsPeer, tls: ResumingContext) -> None:
            async with session.get(peer.url + "/redfish/v1/Systems", ssl=tls) as response:
                assert response.status == 200

        for peer in peers:
            await get(peer, bounded)
        assert bounded.sessions() == 2  # the first peer's was dropped
        for peer in reversed(peers):  # the kept two first (the first peer's full handshake stores it again)
            await get(peer, bounded)
        assert [peer.reused for peer in peers] == [[False, False], [False, True], [False, True]]
        await get(peers[0], context)  # another context never offers this one's sessions
        assert peers[0].reused[-1] is False and context.sessions() == 1


async def test_adapters_sharing_a_pool_share_its_tls_sessions(
        tmp_path: Path, stops: list[Callable[[], Awaitable[None]]]) -> None:
    """The health poller (power adapter) and the subscription manager share one pool: a BMC read by one
    resumes on the other's next connection."""
    peer = await start_peer(server_context(*make_self_signed(tmp_path)), stops)
    bmc = BmcEndpoint(peer.url, "", "", verify_tls=False)
    shared = new_session()
    poller = RedfishConnections(timeout=5.0, session=shared, owner="poller", anonymous=True)
    subscriptions = RedfishConnections(timeout=5.0, session=shared, owner="subscriptions", anonymous=True)
    try:
        await read(poller, bmc, 1)
        await read(subscriptions, bmc, 1)
        assert peer.reused == [False, True]
    finally:
        await poller.close()
        await subscriptions.close()
        await shared.close()
