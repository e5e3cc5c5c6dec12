"""Sockets for test servers. An in-process server takes an already bound socket (`bound_socket`, or the
`tcp_socket`/`udp_socket` fixtures of tests.peers.plugin): port 0, no check-then-bind. A peer process
that only takes a port number (mosquitto, PostgreSQL, sushy-tools, the daemon and lab as processes) gets
`reserve_port()`: a port free a moment ago; each peer's start retries on a clash."""

from __future__ import annotations

import random
import socket


def bound_socket(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to port 0 on `host` (a TCP one listening), owned by the caller."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        sock.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a peer process that cannot be handed a socket (the caller
    retries if someone takes it meanwhile)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def shared_bmc_port() -> int:
    """One TCP port for every simulated BMC of a lab (OneView lists the iLOs' addresses, so the
    monitor is given a single BMC port): below the ephemeral range, so no other lab's BMCs (which bind
    port 0 on the same 127.77.x.y addresses, in another pytest worker) can hold it; checked free on
    the first BMC address and on 127.0.0.1."""
    low = max(1025, min(_ephemeral_low(), 65536) - 12_000)
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(low, low + 12_000)
        try:
            for host in ("127.0.0.1", "127.77.1.1"):
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port in {low}-{low + 12_000} for the lab's BMCs")
