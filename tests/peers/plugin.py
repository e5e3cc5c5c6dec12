"""The test peers as a pytest plugin (loaded for every test by pyproject's `addopts = -p
tests.peers.plugin`): PostgreSQL clusters, an HTTP client for the e2e tests, and bound sockets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.peers.postgres import pg_cluster, pg_url
from tests.support.net import bound_socket

__all__ = ["http", "pg_cluster", "pg_url", "tcp_socket", "udp_socket"]


@pytest.fixture
def tcp_socket() -> Iterator[socket.socket]:
    """A listening TCP socket on 127.0.0.1, port 0, for an in-process server (aiohttp's SockSite)."""
    sock = bound_socket(socket.SOCK_STREAM)
    with sock:
        yield sock


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    """A UDP socket bound on 127.0.0.1, port 0."""
    sock = bound_socket(socket.SOCK_DGRAM)
    with sock:
        yield sock


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for talking to peer processes (every request times out after 15 s)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        yield s
