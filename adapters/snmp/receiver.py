"""SNMP trap and inform receiver (pysnmp 7.1 on asyncio): datagrams in, normalized `Event`s onto a queue.

* The UDP socket is ours: created with `SO_RCVBUF = snmp.receive_buffer` (bursts wait in the kernel while
  they are decoded: ~30 µs per v1/v2c trap, ~0.6 ms per message through pysnmp; `SO_RCVBUFFORCE` when
  net.core.rmem_max caps it and the process has CAP_NET_ADMIN, else a warning) and bound before pysnmp
  sees it, so a port in use is a clear `StartupError` (pysnmp's own bind happens in a background future
  and its error would be lost).
* Fast path: an SNMPv1 Trap or SNMPv2c SNMPv2-Trap is decoded by `adapters.snmp.ber` (strict BER, ~20x
  cheaper than pyasn1), its community checked against every configured one (SHA-256 digests,
  `hmac.compare_digest`, all compared), and the `Event` built by the same code as pysnmp's callback, so
  both paths give identical events and the same drop reasons (`malformed`, `bad_community`,
  `version_disabled` counted here). SNMPv3 TRAPs from a configured user and sender engine id take the
  fast path too (`_fast_v3`: `snmp_ber.decode_v3`, USM by `adapters.snmp.usm`), dropped with pysnmp's
  reasons in pysnmp's order (`unknown_user`, `unknown_engine_id`, `wrong_digest`, `decryption_error`,
  `security_level_too_low`) plus RFC 3414's time window (`not_in_time_window`; pysnmp never refuses a
  TRAP on time). Anything else - v3 engine-id discovery, Reports, messages to our own engine id,
  the reportable flag, INFORMs (they need a Response), GETs, value
  types or encodings the decoder leaves alone (`BerUnsupported`), datagrams not recognisably v1/v2c - goes
  to pysnmp. Deliberately stricter than pyasn1: a non-minimal or empty INTEGER, an indefinite length, an
  OID with a 0x80 padding octet, a sub-identifier over 2^32-1 or more than 128 of them are `malformed`.
  `fast_path=False` sends everything to pysnmp (the tests compare the two).
* Other datagrams are handed to pysnmp synchronously from `datagram_received` (pysnmp would add a
  `call_soon` hop); any exception in pysnmp, the fast path or the callback is counted and logged at
  DEBUG, never raised into the event loop.
* SNMPv1/v2c: one community entry per configured community, with security name `community-<n>` (the
  community itself is a secret and never appears in an event or a log). `v1_v2c: false` removes the
  v1 and v2c message processing models: such messages are counted as `version_disabled`.
* SNMPv3: each user is added once per configured sender engine id (TRAPs carry the sender's engine id)
  and once without one (INFORMs: this engine is authoritative). A message at a lower security level than
  the user is configured for (e.g. noAuthNoPriv with a known user name) is dropped here, since pysnmp's
  notification receiver applies no access control.
* The notification callback only builds the `Event` and calls `queue.put_nowait`; a full queue drops the
  event and counts it (an INFORM has already been acknowledged by then).

Metrics (all counters, updated as each datagram is processed - pysnmp's MIB counters are polled right
after it, ~13 integer reads - so they are exact at any scrape and name the sender in the log):

* `snmp_datagrams_received_total` - every UDP datagram read from the socket;
* `snmp_traps_received_total{version="1"|"2c"|"3"}` - notifications accepted (authenticated, decoded),
  including those then dropped for a full queue;
* `snmp_dropped_total{reason=...}` - every datagram that did not become a queued event. pysnmp keeps
  the standard MIB counters in its engine's MIB instrumentation; after each datagram their deltas are
  added here under these reasons (the MIB counter in brackets):
  `bad_community` (snmpInBadCommunityNames), `bad_version` (snmpInBadVersions), `version_disabled`
  (snmpInBadVersions for a v1/v2c message when `v1_v2c` is false), `malformed` (snmpInASNParseErrs),
  `invalid_message` (snmpInvalidMsgs, snmpInGenErrs), `unknown_security_model`
  (snmpUnknownSecurityModels), `unsupported_pdu` (snmpUnknownPDUHandlers: e.g. a GET sent to this port),
  `unknown_user` (usmStatsUnknownUserNames, user name not configured), `unknown_engine_id`
  (usmStatsUnknownUserNames for a configured user: the TRAP's sender engine id is not in its
  `engine_ids`), `unsupported_security_level` (usmStatsUnsupportedSecLevels), `wrong_digest`
  (usmStatsWrongDigests: bad auth key), `decryption_error` (usmStatsDecryptionErrors: bad priv key),
  `not_in_time_window` (usmStatsNotInTimeWindows); and our own `sender_not_allowed` (the UDP source is
  outside `snmp.allowed_senders`: dropped before any decoding), `security_level_too_low`, `queue_full`,
  `internal_error` (an exception inside pysnmp or the callback; logged, never raised).
  usmStatsUnknownEngineIDs is not a drop: it counts the engine-id discovery probe every v3 INFORM sender
  makes first; it is exposed as `snmp_engine_discovery_total`.

The first drop per (sender, reason) is logged at WARNING, later ones at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as snmp_config
from pysnmp.entity import engine as snmp_engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.proto.api import v2c, verdec

from adapters.snmp import ber as snmp_ber
from adapters.snmp import usm as snmp_usm
from monitor.core.clock import Clock
from monitor.core.config import SnmpConfig, SnmpUser, parse_listen
from monitor.core.errors import StartupError
from monitor.core.events import Event
from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

SYS_UPTIME: Final = snmp_ber.SYS_UPTIME
SNMP_TRAP_OID: Final = snmp_ber.SNMP_TRAP_OID
SNMP_TRAP_ADDRESS: Final = snmp_ber.SNMP_TRAP_ADDRESS
SNMP_TRAP_COMMUNITY: Final = "1.3.6.1.6.3.18.1.4.0"
"""Added by the RFC 3584 v1->v2 mapping; it holds the community, a secret: never put in an event."""

_VERSIONS: Final[dict[int, Literal["1", "2c", "3"]]] = {1: "1", 2: "2c", 3: "3"}

_AUTH: Final[dict[str, tuple[int, ...]]] = {
    "none": snmp_config.USM_AUTH_NONE,
    "MD5": snmp_config.USM_AUTH_HMAC96_MD5,
    "SHA": snmp_config.USM_AUTH_HMAC96_SHA,
    "SHA224": snmp_config.USM_AUTH_HMAC128_SHA224,
    "SHA256": snmp_config.USM_AUTH_HMAC192_SHA256,
    "SHA384": snmp_config.USM_AUTH_HMAC256_SHA384,
    "SHA512": snmp_config.USM_AUTH_HMAC384_SHA512,
}
_PRIV: Final[dict[str, tuple[int, ...]]] = {
    "none": snmp_config.USM_PRIV_NONE,
    "DES": snmp_config.USM_PRIV_CBC56_DES,
    "3DES": snmp_config.USM_PRIV_CBC168_3DES,
    "AES": snmp_config.USM_PRIV_CFB128_AES,
    # net-snmp's AES-192/AES-256 (draft-blumenthal-aes-usm-04 key extension, OIDs under 14832);
    # checked against net-snmp 5.9.3 by the tests.
    "AES192": snmp_config.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES256": snmp_config.USM_PRIV_CFB256_AES_BLUMENTHAL,
}

# (MIB module, counter, drop reason); None: counted but not a drop.
_WATCHED: Final[tuple[tuple[str, str, str | None], ...]] = (
    ("__SNMPv2-MIB", "snmpInBadCommunityNames", "bad_community"),
    ("__SNMPv2-MIB", "snmpInBadVersions", "bad_version"),
    ("__SNMPv2-MIB", "snmpInASNParseErrs", "malformed"),
    ("__SNMPv2-MIB", "snmpInGenErrs", "invalid_message"),
    ("__SNMP-MPD-MIB", "snmpInvalidMsgs", "invalid_message"),
    ("__SNMP-MPD-MIB", "snmpUnknownSecurityModels", "unknown_security_model"),
    ("__SNMP-MPD-MIB", "snmpUnknownPDUHandlers", "unsupported_pdu"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownUserNames", "unknown_user"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnsupportedSecLevels", "unsupported_security_level"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsWrongDigests", "wrong_digest"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsDecryptionErrors", "decryption_error"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsNotInTimeWindows", "not_in_time_window"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownEngineIDs", None),
)
_COUNTER32: Final = 1 << 32
_LOGGED_LIMIT: Final = 1024


_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)


def _receive_buffer(sock: socket.socket) -> int:
    """The socket's receive buffer in bytes as asked for (Linux reports twice that: bookkeeping)."""
    size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return size // 2 if sys.platform == "linux" else size


def _security_level(user: SnmpUser) -> int:
    """RFC 3411 securityLevel: 1 noAuthNoPriv, 2 authNoPriv, 3 authPriv."""
    if user.auth_protocol == "none":
        return 1
    return 2 if user.priv_protocol == "none" else 3


def _engine_id_hex(value: str) -> str:
    hexa = value[2:] if value.lower().startswith("0x") else value
    if len(hexa) % 2:
        raise ValueError(f"engine id {value} has an odd number of hex digits")
    return hexa


def _password(secret: Any) -> bytes | None:
    """A configured USM password as pysnmp encodes it (ISO 8859-1)."""
    if secret is None:
        return None
    return str(secret.get_secret_value()).encode("iso-8859-1", "replace")


_TIME_WINDOW: Final = 150
"""RFC 3414 3.2.7: seconds a message's msgAuthoritativeEngineTime may lag our notion of the sender's."""
_BOOTS_MAX: Final = 2147483647
_TIMELINE_EXPIRY: Final = 300.0
"""Seconds after the last newer message from an engine when its boots/time notion is forgotten (pysnmp
expires its own after 300 s too): an agent that rebooted without keeping snmpEngineBoots is heard again
after at most this long, instead of never."""


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(specs: Iterable[str]) -> tuple[_Network, ...]:
    """`snmp.allowed_senders` as networks (validated by the config already)."""
    return tuple(ipaddress.ip_network(spec.strip(), strict=False) for spec in specs)


def _sender_allowed(address: Any, networks: tuple[_Network, ...]) -> bool:
    """Whether the datagram's source address is in one of `networks` (an IPv4-mapped IPv6 source counts
    as its IPv4 address; anything unreadable is not allowed)."""
    try:
        host = str(address[0]).split("%", 1)[0]
        addr = ipaddress.ip_address(host)
    except (ValueError, TypeError, IndexError, KeyError):
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class _Direct:
    """Mixed into pysnmp's UDP transports: each datagram goes to the receiver synchronously (no
    call_soon hop) so drops can be attributed to the datagram and its sender, and exceptions never
    reach the loop; `closed` resolves when the socket is really closed."""

    on_datagram: Callable[[Any, bytes, Any], None]
    closed: asyncio.Future[None]

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        self.on_datagram(self, datagram, address)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Udp(_Direct, udp.UdpAsyncioTransport):  # type: ignore[misc]
    """pysnmp's IPv4 UDP transport, direct."""


class _Udp6(_Direct, udp6.Udp6AsyncioTransport):  # type: ignore[misc]
    """pysnmp's IPv6 UDP transport, direct."""


class SnmpTrapReceiver:
    """Receives SNMP v1/v2c/v3 traps and informs on `config.listen` and queues them as `Event`s."""

    def __init__(self, *, config: SnmpConfig, queue: asyncio.Queue[Event], metrics: Metrics,
                 clock: Clock, fast_path: bool = True) -> None:
        """`fast_path=False` hands every datagram to pysnmp (tests compare both paths with it)."""
        self._config = config
        self._fast_path = fast_path
        # the communities are only ever compared as SHA-256 digests, all of them, in constant time;
        # encoded as pysnmp encodes them (ISO 8859-1: a configured "pässword" matches the octets 70 e4 ..)
        self._community_digests: tuple[bytes, ...] = tuple(
            hashlib.sha256(c.get_secret_value().encode("iso-8859-1", "replace")).digest()
            for c in config.communities)
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._engine: Any = None
        self._receiver: Any = None
        self._transport: Any = None
        self._bound: tuple[str, int] | None = None
        self._watch: list[tuple[Any, str | None]] = []
        self._last: list[int] = []
        self._levels: dict[str, int] = {u.name: _security_level(u) for u in config.users}
        self._sm_failure_user: str | None = None
        self._logged: set[tuple[str, str]] = set()
        self._networks = _networks(config.allowed_senders)
        # the fast path's USM users: name -> {sender engine id -> user}; keys localised lazily, cached
        self._v3_users: dict[bytes, dict[bytes, snmp_usm.UsmUser]] = {}
        for user in config.users:
            fast = snmp_usm.UsmUser(
                user.name, user.auth_protocol, user.priv_protocol,
                _password(user.auth_key) if user.auth_protocol != "none" else None,
                _password(user.priv_key) if user.priv_protocol != "none" else None)
            engines = self._v3_users.setdefault(user.name.encode("utf-8"), {})
            for engine_id in user.engine_ids:
                with contextlib.suppress(ValueError):  # refused at start, by _add_user
                    engines[bytes.fromhex(_engine_id_hex(engine_id))] = fast
        self._local_engine_id = b""
        # RFC 3414 3.2.7b: per sender engine id, (boots, latest time, local monotonic time of it)
        self._timeline: dict[bytes, tuple[int, int, float]] = {}
        metrics.describe("snmp_datagrams_received_total", "UDP datagrams read on the SNMP trap port")
        metrics.describe("snmp_traps_received_total", "SNMP notifications accepted, by version")
        metrics.describe("snmp_dropped_total", "SNMP datagrams or notifications dropped, by reason")
        metrics.describe("snmp_engine_discovery_total", "SNMPv3 engine-id discovery probes answered")

    @property
    def bound(self) -> tuple[str, int] | None:
        """The address the socket is bound to (after `start`), or None."""
        return self._bound

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Bind the socket and set up the SNMP engine; returns the bound (host, port)."""
        if self._engine is not None:
            raise RuntimeError("the SNMP receiver is already started")
        listen = self._config.listen
        if listen is None:
            raise StartupError("snmp.listen is not set")
        sock = self._bind(listen)
        try:
            await self._open(sock)
        except BaseException:
            await self._close_engine()
            sock.close()
            raise
        address = sock.getsockname()
        self._bound = (str(address[0]), int(address[1]))
        log.info("SNMP trap receiver listening on udp %s:%s", *self._bound)
        return self._bound

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (starting first if needed), then close everything."""
        if self._engine is None:
            await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop receiving and release the socket (idempotent)."""
        await self._close_engine()
        self._bound = None

    def _bind(self, listen: str) -> socket.socket:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._config.receive_buffer)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise StartupError(f"cannot listen on snmp.listen {listen}: {why}") from None
        sock.setblocking(False)
        wanted = self._config.receive_buffer
        if _receive_buffer(sock) < wanted and _SO_RCVBUFFORCE is not None:
            # SO_RCVBUF is capped by net.core.rmem_max; with CAP_NET_ADMIN the cap can be passed.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, wanted)
        effective = _receive_buffer(sock)
        if effective < wanted:
            log.warning("snmp.receive_buffer %d capped by the kernel at %d bytes: raise net.core.rmem_max "
                        "(or run with CAP_NET_ADMIN)", wanted, effective)
        return sock

    async def _open(self, sock: socket.socket) -> None:
        cfg = self._config
        eng = snmp_engine.SnmpEngine()  # inside the running loop: its dispatcher takes this loop
        self._engine = eng
        if not cfg.v1_v2c:
            for model in (0, 1):  # SNMPv1 and SNMPv2c message processing
                eng.message_processing_subsystems.pop(model, None)
        else:
            for n, community in enumerate(cfg.communities, start=1):
                snmp_config.add_v1_system(eng, f"community-{n}", community.get_secret_value())
        for user in cfg.users:
            self._add_user(eng, user)

        transport = _Udp6() if sock.family == socket.AF_INET6 else _Udp()
        transport.on_datagram = self._on_datagram
        transport.closed = asyncio.get_running_loop().create_future()
        domain = udp6.DOMAIN_NAME if sock.family == socket.AF_INET6 else udp.DOMAIN_NAME
        transport.open_server_mode(sock=sock)
        self._transport = transport
        snmp_config.add_transport(eng, domain, transport)
        pending = getattr(transport, "_lport", None)  # pysnmp's create_datagram_endpoint future
        if isinstance(pending, asyncio.Future):
            await pending

        mib = eng.get_mib_builder()
        self._local_engine_id = bytes(mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID")[0].syntax)
        self._watch = [(mib.import_symbols(module, name)[0], reason) for module, name, reason in _WATCHED]
        self._last = [int(obj.syntax) for obj, _ in self._watch]
        eng.observer.register_observer(self._on_sm_failure, "rfc3412.prepareDataElements:sm-failure")
        self._receiver = ntfrcv.NotificationReceiver(eng, self._on_notification)

    def _add_user(self, eng: Any, user: SnmpUser) -> None:
        auth = _AUTH[user.auth_protocol]
        priv = _PRIV[user.priv_protocol]
        auth_key = priv_key = None
        if user.auth_key is not None and user.auth_protocol != "none":
            auth_key = user.auth_key.get_secret_value()
        if user.priv_key is not None and user.priv_protocol != "none":
            priv_key = user.priv_key.get_secret_value()
        for engine_id in user.engine_ids:
            try:
                hexa = _engine_id_hex(engine_id)
            except ValueError as exc:
                raise StartupError(f"snmp.users {user.name}: {exc}") from None
            snmp_config.add_v3_user(eng, user.name, auth, auth_key, priv, priv_key,
                                    securityEngineId=v2c.OctetString(hexValue=hexa))
        snmp_config.add_v3_user(eng, user.name, auth, auth_key, priv, priv_key)  # INFORMs

    async def _close_engine(self) -> None:
        eng, self._engine = self._engine, None
        if eng is None:
            return
        transport, self._transport = self._transport, None
        dispatcher = eng.transport_dispatcher
        timer = getattr(dispatcher, "loopingcall", None) if dispatcher is not None else None
        try:
            if self._receiver is not None:
                self._receiver.close(eng)
                self._receiver = None
            eng.observer.unregister_observer()
            if dispatcher is not None:
                eng.close_dispatcher()  # closes the transport (and our socket) and the timer task
        finally:
            if transport is not None:
                if transport.transport is not None:
                    transport.transport.close()
                    await transport.closed  # connection_lost: the socket is closed by then
                else:
                    pending = getattr(transport, "_lport", None)
                    if isinstance(pending, asyncio.Future):
                        pending.cancel()
                        await asyncio.wait([pending])
            if isinstance(timer, asyncio.Future):
                timer.cancel()
                await asyncio.wait([timer])

    # --- per datagram ----------------------------------------------------------------------------------

    def _on_datagram(self, transport: Any, datagram: bytes, address: Any) -> None:
        self._metrics.inc("snmp_datagrams_received_total")
        if self._networks and not _sender_allowed(address, self._networks):
            self._drop("sender_not_allowed", address)  # before any decoding: nothing of it is read
            return
        if self._fast_path:
            try:
                if self._fast(datagram, address):
                    return
            except Exception:
                self._drop("internal_error", address)
                log.debug("SNMP datagram from %s raised in the fast path", address, exc_info=True)
                return
        self._sm_failure_user = None
        try:
            transport._callback_function(transport, address, datagram)
        except Exception:
            self._drop("internal_error", address)
            log.debug("SNMP datagram from %s raised in pysnmp", address, exc_info=True)
        self._collect(datagram, address)

    def _fast(self, datagram: bytes, address: Any) -> bool:
        """SNMPv1/v2c/v3 traps without pysnmp (`snmp_ber`, `snmp_usm`); False: not handled, hand it to
        pysnmp."""
        if snmp_ber.looks_v3(datagram):
            return self._fast_v3(datagram, address)
        if not self._config.v1_v2c:
            if snmp_ber.peek_version(datagram) in (0, 1):
                self._drop("version_disabled", address)
                return True
            return False
        try:
            trap = snmp_ber.decode_trap(datagram)
        except snmp_ber.BerUnsupported:
            return False  # v3, informs, GETs, exotic encodings: pysnmp decides
        except snmp_ber.BerError as exc:
            if snmp_ber.peek_version(datagram) not in (0, 1):
                return False  # not recognisably v1/v2c: pysnmp counts it as it always did
            log.debug("SNMP datagram from %s is malformed: %s", address, exc)
            self._drop("malformed", address)
            return True
        digest = hashlib.sha256(trap.community).digest()
        index = 0
        for n, known in enumerate(self._community_digests, start=1):
            if hmac.compare_digest(digest, known) and not index:
                index = n
        if not index:
            self._drop("bad_community", address)
            return True
        version: Literal["1", "2c"] = "1" if trap.version == 0 else "2c"
        self._metrics.inc("snmp_traps_received_total", version=version)
        self._queue_event(address, version, f"community-{index}", "trap", trap.varbinds)
        return True

    def _fast_v3(self, datagram: bytes, address: Any) -> bool:
        """An SNMPv3 TRAP from a configured user and sender engine, authenticated, decrypted and decoded
        here, with pysnmp's drop reasons and order (unknown user / engine id, wrong digest, decryption
        error) and RFC 3414's time window. False (pysnmp decides and counts): a malformed or unusual
        message - another security model, an engine-id discovery, our own engine id (INFORMs), the
        reportable flag, a security level above the user's, an INFORM or Report PDU, a value type or
        encoding the decoder leaves alone."""
        try:
            msg = snmp_ber.decode_v3(datagram)
        except snmp_ber.BerError:
            return False
        level = msg.security_level
        engine_id = msg.engine_id
        if (not level or not msg.user or msg.flags & snmp_ber.FLAG_REPORTABLE
                or not 5 <= len(engine_id) <= 32 or engine_id == self._local_engine_id):
            return False
        scoped: snmp_ber.ScopedPdu | None = None
        if msg.encrypted is None:
            # pysnmp decodes a plaintext ScopedPDU with the message, before any security check: a malformed
            # one is its verdict (`malformed`), not an unknown user or a wrong digest
            if level == 3:
                return False
            try:
                scoped = snmp_ber.decode_scoped_pdu(datagram, msg.scoped_start, msg.scoped_stop)
            except snmp_ber.BerError:
                return False
        engines = self._v3_users.get(msg.user)
        if engines is None:
            self._drop("unknown_user", address)
            return True
        user = engines.get(engine_id)
        if user is None:
            self._drop("unknown_engine_id", address)
            return True
        if level > user.level:
            return False
        keys = user.keys(engine_id)
        if level >= 2:
            if keys.auth_hmac is None or not snmp_usm.verify_mac(user.auth, keys.auth_hmac, datagram,
                                                                 msg.auth_start, msg.auth_stop):
                self._drop("wrong_digest", address)
                return True
            if not self._timely(msg):
                self._drop("not_in_time_window", address)
                return True
        if scoped is None:
            if msg.encrypted is None or level != 3 or keys.priv_key is None:
                return False
            try:
                plain = snmp_usm.decrypt(user.priv, keys.priv_key, msg.boots, msg.time, msg.priv_params,
                                         msg.encrypted)
            except snmp_usm.DecryptionError:
                self._drop("decryption_error", address)
                return True
            if not plain or plain[0] != 0x30:  # a wrong key gives noise: not even the SEQUENCE
                self._drop("decryption_error", address)
                return True
            try:
                scoped = snmp_ber.decode_scoped_pdu(plain, trailing=True)
            except snmp_ber.BerError:
                return False
        if level < user.level:
            self._drop("security_level_too_low", address)
            return True
        self._metrics.inc("snmp_traps_received_total", version="3")
        self._queue_event(address, "3", user.name, "trap", scoped.varbinds)
        return True

    def _timely(self, msg: snmp_ber.V3Message) -> bool:
        """RFC 3414 3.2.7b for an authenticated message from a non-authoritative receiver's view: update
        the notion of the sender's boots/time when newer, refuse a message older than the window (a
        replay). pysnmp refreshes its notion from every message before this check, so it never refuses
        one; the notion expires here after `_TIMELINE_EXPIRY` without a newer message."""
        now = self._clock.monotonic()
        known = self._timeline.get(msg.engine_id)
        if known is not None and now - known[2] > _TIMELINE_EXPIRY:
            known = None  # nothing newer for 5 minutes: resynchronise (an agent that lost its boots)
        if known is None or msg.boots > known[0] or (msg.boots == known[0] and msg.time > known[1]):
            self._timeline[msg.engine_id] = (msg.boots, msg.time, now)
            return msg.boots != _BOOTS_MAX
        boots, latest, at = known
        if boots == _BOOTS_MAX or msg.boots < boots:
            return False
        return msg.time >= latest + int(now - at) - _TIME_WINDOW

    def _collect(self, datagram: bytes, address: Any) -> None:
        """Add the deltas of pysnmp's MIB counters since the last datagram to our counters."""
        last = self._last
        for i, (obj, reason) in enumerate(self._watch):
            value = int(obj.syntax)
            if value == last[i]:
                continue
            delta = (value - last[i]) % _COUNTER32
            last[i] = value
            if reason is None:
                self._metrics.inc("snmp_engine_discovery_total", delta)
                continue
            if reason == "bad_version" and not self._config.v1_v2c and self._is_v1_v2c(datagram):
                reason = "version_disabled"
            elif reason == "unknown_user" and self._sm_failure_user in self._levels:
                reason = "unknown_engine_id"
            self._drop(reason, address, delta)

    @staticmethod
    def _is_v1_v2c(datagram: bytes) -> bool:
        try:
            return int(verdec.decode_message_version(datagram)) in (0, 1)
        except Exception:
            return False

    def _on_sm_failure(self, eng: Any, point: str, variables: dict[str, Any], ctx: Any) -> None:
        """Observer: remember the user name of a v3 security failure (unknown user vs unknown engine)."""
        with contextlib.suppress(Exception):
            name = variables["statusInformation"].get("msgUserName")
            if name is not None:
                self._sm_failure_user = bytes(name).decode("utf-8", "replace")

    def _drop(self, reason: str, address: Any, count: int = 1) -> None:
        self._metrics.inc("snmp_dropped_total", float(count), reason=reason)
        sender = str(address[0]) if isinstance(address, tuple) and address else str(address)
        key = (sender, reason)
        if key not in self._logged and len(self._logged) < _LOGGED_LIMIT:
            self._logged.add(key)
            log.warning("SNMP: dropped a message from %s: %s (further ones from it are counted in "
                        "snmp_dropped_total)", sender, reason)
        else:
            log.debug("SNMP: dropped a message from %s: %s", sender, reason)

    def _on_notification(self, eng: Any, state_ref: Any, ctx_engine_id: Any, ctx_name: Any,
                         var_binds: Iterable[tuple[Any, Any]], cb_ctx: Any) -> None:
        """pysnmp's notification callback: build the Event and queue it without waiting."""
        ec = eng.observer.get_execution_context("rfc3412.receiveMessage:request")
        address = ec["transportAddress"]
        version = _VERSIONS.get(int(ec["securityModel"]))
        if version is None:
            self._drop("unknown_security_model", address)
            return
        security_name = str(ec["securityName"])
        if version == "3" and int(ec["securityLevel"]) < self._levels.get(security_name, 3):
            self._drop("security_level_too_low", address)
            return
        self._metrics.inc("snmp_traps_received_total", version=version)
        pdu = "inform" if ec["pdu"].tagSet == v2c.InformRequestPDU.tagSet else "trap"
        self._queue_event(address, version, security_name, pdu,
                          [(str(oid), value.prettyPrint()) for oid, value in var_binds])

    def _queue_event(self, address: Any, version: Literal["1", "2c", "3"], security_name: str, pdu: str,
                     var_binds: Iterable[tuple[str, str]]) -> None:
        """Build the Event from the (v2-form) variable bindings, rendered, and queue it without waiting.
        Both paths (pysnmp's callback and the fast path) end here."""
        trap_oid: str | None = None
        varbinds: dict[str, str] = {}
        attributes: dict[str, Any] = {"pdu": pdu}
        for key, text in var_binds:
            if key == SNMP_TRAP_OID:
                trap_oid = text
            elif key in (SYS_UPTIME, SNMP_TRAP_COMMUNITY):
                continue
            else:
                varbinds[key] = text
                if key == SNMP_TRAP_ADDRESS:
                    attributes["agent_address"] = text
        event = Event(source="snmp", time=self._clock.now(), sender=str(address[0]), trap_oid=trap_oid,
                      varbinds=varbinds, snmp_version=version, security_name=security_name,
                      attributes=attributes)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop("queue_full", address)
