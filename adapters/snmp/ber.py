"""A small, strict BER decoder for SNMPv1 Trap-PDUs and SNMPv2c SNMPv2-Trap-PDUs, and nothing else.

It exists for speed: pysnmp decodes a trap in ~500 µs inside pyasn1; this takes ~15-30 µs. It yields
exactly what the pysnmp path of `adapters.snmp.receiver` yields for the same datagram: the v2-form
variable bindings (an SNMPv1 trap mapped per RFC 3584 section 3.1: sysUpTime.0, snmpTrapOID.0,
snmpTrapAddress.0, snmpTrapEnterprise.0, then its own bindings) with every value rendered as pysnmp's
`prettyPrint()` renders it:

* INTEGER, Counter32, Gauge32, TimeTicks, Counter64: decimal;
* OCTET STRING, Opaque: the text when every octet is printable ASCII (0x20-0x7e), else `0x` + hex;
* IpAddress: dotted quad; OBJECT IDENTIFIER: dotted; NULL: empty;
* noSuchObject / noSuchInstance / endOfMibView: pysnmp's sentences.

snmpTrapCommunity.0 (which pysnmp's mapping adds, holding the community) is never produced: the community
is returned on its own, for the caller to check and forget.

Message ::= SEQUENCE { version INTEGER (0|1), community OCTET STRING, data PDU } is the only shape
decoded; there is no recursion (the shape is fixed: message, PDU, binding list, binding, value), so
nesting is bounded by construction. Every length is checked against the enclosing one before use.

Errors: `BerError` for anything malformed (truncation, a length beyond its container, indefinite
length, trailing octets, a wrong tag where the shape requires one, non-minimal INTEGERs, OIDs with a
0x80 padding octet, a sub-identifier over 2^32-1 or more than 128 of them, values out of their SNMP
range). `BerUnsupported` (a `BerError`) for well-formed input this decoder does not handle, which the
caller should hand to a complete SNMP stack: another version or PDU type (v3, informs, GETs), a value
type outside the list above, constructed or high-number tags. No other exception escapes `decode_trap`
for any input.

SNMPv3 (RFC 3412 section 6, USM parameters of RFC 3414 section 2.4): `decode_v3` decodes the header and
security parameters keeping the offsets the MAC needs; `decode_scoped_pdu` decodes a (decrypted or
plaintext) ScopedPDU holding an SNMPv2-Trap-PDU into the same rendered varbinds as `decode_trap`. The
keys, MAC and ciphers are `adapters.snmp.usm`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

_T = TypeVar("_T")

__all__ = ["BerError", "BerUnsupported", "ScopedPdu", "Trap", "V3Message", "decode_scoped_pdu", "decode_trap",
           "decode_v3", "looks_v3", "peek_version"]


class BerError(ValueError):
    """The datagram is not a well-formed SNMP message (the message says what is wrong)."""


class BerUnsupported(BerError):
    """Well-formed as far as decoded, but not something this decoder handles (v3, informs, GETs, ...)."""


SYS_UPTIME: Final = "1.3.6.1.2.1.1.3.0"
SNMP_TRAP_OID: Final = "1.3.6.1.6.3.1.1.4.1.0"
SNMP_TRAP_ADDRESS: Final = "1.3.6.1.6.3.18.1.3.0"
SNMP_TRAP_ENTERPRISE: Final = "1.3.6.1.6.3.1.1.4.3.0"

TAG_TRAP_V1: Final = 0xA4
TAG_TRAP_V2: Final = 0xA7

MAX_OID_ARCS: Final = 128
"""RFC 2578 section 7.1.3: at most 128 sub-identifiers."""
_MAX_SUBID: Final = 0xFFFFFFFF
_MAX_INT_OCTETS: Final = 9  # Counter64's 2^64-1 needs 9 (a leading 0x00)
_MAX_LENGTH_OCTETS: Final = 4  # a UDP datagram is < 64 KiB; longer (padded) length fields are refused

_INT32_MIN: Final = -(1 << 31)
_INT32_MAX: Final = (1 << 31) - 1
_UINT32_MAX: Final = (1 << 32) - 1
_UINT64_MAX: Final = (1 << 64) - 1
_OCTETS_MAX: Final = 65535  # pysnmp's OctetString SIZE (0..65535)

_PRINTABLE: Final = bytes(range(0x20, 0x7F))

# varbind value tags
_INTEGER: Final = 0x02
_OCTETS: Final = 0x04
_NULL: Final = 0x05
_OID: Final = 0x06
_SEQUENCE: Final = 0x30
_IPADDRESS: Final = 0x40
_COUNTER32: Final = 0x41
_GAUGE32: Final = 0x42
_TIMETICKS: Final = 0x43
_OPAQUE: Final = 0x44
_COUNTER64: Final = 0x46
_EXCEPTIONS: Final[dict[int, str]] = {
    0x80: "No Such Object currently exists at this OID",
    0x81: "No Such Instance currently exists at this OID",
    0x82: "No more variables left in this MIB View",
}
_UNSIGNED32: Final = frozenset((_COUNTER32, _GAUGE32, _TIMETICKS))
_V1_VALUE_TAGS: Final = frozenset((_INTEGER, _OCTETS, _NULL, _OID, _IPADDRESS, _COUNTER32, _GAUGE32,
                                   _TIMETICKS, _OPAQUE))
_V2_VALUE_TAGS: Final = _V1_VALUE_TAGS | {_COUNTER64, *_EXCEPTIONS}

# RFC 3584 section 3.1.2: generic-trap 0..5 -> snmpTraps.{generic+1}
_GENERIC_TRAPS: Final = tuple(f"1.3.6.1.6.3.1.1.5.{n + 1}" for n in range(6))

_OID_CACHE_LIMIT: Final = 4096
_oid_cache: dict[bytes, str] = {}


@dataclass(frozen=True, slots=True)
class Trap:
    """A decoded trap: `varbinds` in v2 form, in order, as (dotted OID, rendered value)."""

    version: Literal[0, 1]
    """The message version field: 0 for SNMPv1, 1 for SNMPv2c."""
    community: bytes
    varbinds: tuple[tuple[str, str], ...]


def _header(data: bytes, i: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at `i`, which must lie within [i, end)."""
    if i >= end:
        raise BerError(f"truncated: no tag at offset {i}")
    tag = data[i]
    if tag & 0x1F == 0x1F:
        raise BerUnsupported(f"high-number tag at offset {i}")
    if i + 1 >= end:
        raise BerError(f"truncated: no length at offset {i + 1}")
    first = data[i + 1]
    i += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise BerError(f"indefinite length at offset {i - 1}")
    else:
        n = first & 0x7F
        if n > _MAX_LENGTH_OCTETS:
            raise BerError(f"length field of {n} octets at offset {i - 1}")
        if i + n > end:
            raise BerError(f"truncated length field at offset {i - 1}")
        length = int.from_bytes(data[i:i + n], "big")
        i += n
    if length > end - i:
        raise BerError(f"length {length} at offset {i} exceeds the {end - i} octets left")
    return tag, i, i + length


def _integer(data: bytes, start: int, stop: int, what: str) -> int:
    n = stop - start
    if n == 0:
        raise BerError(f"empty INTEGER ({what}) at offset {start}")
    if n > _MAX_INT_OCTETS:
        raise BerError(f"overlong INTEGER ({what}, {n} octets) at offset {start}")
    if n > 1:
        b0, b1 = data[start], data[start + 1]
        if (b0 == 0 and b1 < 0x80) or (b0 == 0xFF and b1 >= 0x80):
            raise BerError(f"non-minimal INTEGER ({what}) at offset {start}")
    return int.from_bytes(data[start:stop], "big", signed=True)


def _oid(data: bytes, start: int, stop: int) -> str:
    raw = data[start:stop]
    text = _oid_cache.get(raw)
    if text is not None:
        return text
    if not raw:
        raise BerError(f"empty OBJECT IDENTIFIER at offset {start}")
    if raw[-1] & 0x80:
        raise BerError(f"truncated OBJECT IDENTIFIER sub-identifier at offset {stop - 1}")
    arcs: list[int] = []
    value = 0
    fresh = True
    for octet in raw:
        if fresh and octet == 0x80:
            raise BerError(f"non-minimal OBJECT IDENTIFIER sub-identifier at offset {start}")
        value = (value << 7) | (octet & 0x7F)
        if octet & 0x80:
            fresh = False
            if value > _MAX_SUBID >> 7:  # another 7 bits would exceed 2^32-1
                raise BerError(f"OBJECT IDENTIFIER sub-identifier over 2^32-1 at offset {start}")
            continue
        arcs.append(value)
        value = 0
        fresh = True
    first = arcs[0]
    if first < 80:
        arcs[0:1] = divmod(first, 40)
    else:
        arcs[0:1] = (2, first - 80)
    if len(arcs) > MAX_OID_ARCS:
        raise BerError(f"OBJECT IDENTIFIER of {len(arcs)} sub-identifiers (over {MAX_OID_ARCS}) at "
                       f"offset {start}")
    text = ".".join(map(str, arcs))
    if len(_oid_cache) >= _OID_CACHE_LIMIT:
        _oid_cache.clear()
    _oid_cache[raw] = text
    return text


def _octets_text(raw: bytes) -> str:
    """pyasn1's OctetString.prettyPrint: the text if every octet is 0x20-0x7e, else 0x + hex."""
    if raw.translate(None, _PRINTABLE):
        return "0x" + raw.hex()
    return raw.decode("ascii")


def _value(data: bytes, tag: int, start: int, stop: int, allowed: frozenset[int]) -> str:
    if tag not in allowed:
        raise BerUnsupported(f"value type 0x{tag:02x} at offset {start}")
    if tag in (_OCTETS, _OPAQUE):
        if stop - start > _OCTETS_MAX:
            raise BerError(f"OCTET STRING over {_OCTETS_MAX} octets at offset {start}")
        return _octets_text(data[start:stop])
    if tag == _INTEGER:
        value = _integer(data, start, stop, "Integer32")
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise BerError(f"Integer32 out of range at offset {start}")
        return str(value)
    if tag == _OID:
        return _oid(data, start, stop)
    if tag in _UNSIGNED32:
        value = _integer(data, start, stop, "unsigned")
        if not 0 <= value <= _UINT32_MAX:
            raise BerError(f"Counter32/Gauge32/TimeTicks out of range at offset {start}")
        return str(value)
    if tag == _IPADDRESS:
        if stop - start != 4:
            raise BerError(f"IpAddress of {stop - start} octets at offset {start}")
        return ".".join(map(str, data[start:stop]))
    if tag == _COUNTER64:
        value = _integer(data, start, stop, "Counter64")
        if not 0 <= value <= _UINT64_MAX:
            raise BerError(f"Counter64 out of range at offset {start}")
        return str(value)
    # NULL and the three exceptions
    if stop != start:
        raise BerError(f"NULL with content at offset {start}")
    return _EXCEPTIONS.get(tag, "")


def _varbinds(data: bytes, start: int, stop: int, allowed: frozenset[int],
              out: list[tuple[str, str]]) -> None:
    tag, i, end = _header(data, start, stop)
    if tag != _SEQUENCE:
        raise BerError(f"variable-bindings: expected SEQUENCE, got tag 0x{tag:02x} at offset {start}")
    if end != stop:
        raise BerError(f"{stop - end} trailing octets after the variable-bindings")
    while i < end:
        tag, j, vb_end = _header(data, i, end)
        if tag != _SEQUENCE:
            raise BerError(f"VarBind: expected SEQUENCE, got tag 0x{tag:02x} at offset {i}")
        tag, k, name_end = _header(data, j, vb_end)
        if tag != _OID:
            raise BerError(f"VarBind name: expected OBJECT IDENTIFIER, got tag 0x{tag:02x} at offset {j}")
        name = _oid(data, k, name_end)
        tag, k, value_end = _header(data, name_end, vb_end)
        if value_end != vb_end:
            raise BerError(f"{vb_end - value_end} trailing octets in a VarBind at offset {value_end}")
        out.append((name, _value(data, tag, k, value_end, allowed)))
        i = vb_end


def _v2_pdu_body(data: bytes, j: int, pdu_end: int, varbinds: list[tuple[str, str]]) -> None:
    """request-id Integer32, error-status INTEGER, error-index INTEGER (0..2^31-1), variable-bindings."""
    tag, k, stop = _header(data, j, pdu_end)
    if tag != _INTEGER:
        raise BerError(f"request-id: expected INTEGER, got tag 0x{tag:02x}")
    value = _integer(data, k, stop, "request-id")
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise BerError("request-id out of range")
    tag, k, stop = _header(data, stop, pdu_end)
    if tag != _INTEGER:
        raise BerError(f"error-status: expected INTEGER, got tag 0x{tag:02x}")
    _integer(data, k, stop, "error-status")
    tag, k, stop = _header(data, stop, pdu_end)
    if tag != _INTEGER:
        raise BerError(f"error-index: expected INTEGER, got tag 0x{tag:02x}")
    if not 0 <= _integer(data, k, stop, "error-index") <= _INT32_MAX:
        raise BerError("error-index out of range")
    _varbinds(data, stop, pdu_end, _V2_VALUE_TAGS, varbinds)


def peek_version(data: bytes) -> int | None:
    """The message version (0: v1, 1: v2c, 3: v3, ...) if the datagram is one SEQUENCE, exactly, starting
    with a well-formed version INTEGER, else None. Cheap: two headers and one small integer."""
    try:
        tag, i, end = _header(data, 0, len(data))
        if tag != _SEQUENCE or end != len(data):
            return None
        tag, j, stop = _header(data, i, end)
        if tag != _INTEGER:
            return None
        return _integer(data, j, stop, "version")
    except BerError:
        return None


def decode_trap(data: bytes) -> Trap:
    """Decode an SNMPv1 Trap or SNMPv2c SNMPv2-Trap message (see the module docstring)."""
    return _guarded(_decode, data)


def _guarded(decode: Callable[[bytes], _T], data: bytes) -> _T:
    """`decode(data)`, where anything but a BerError (a bug here) comes out as "malformed"."""
    try:
        return decode(data)
    except BerError:
        raise
    except Exception as exc:  # a bug here must not escape as anything but "malformed"
        raise BerError(f"undecodable: {type(exc).__name__}") from None


def _message(data: bytes) -> tuple[int, int]:
    """Where the outer SEQUENCE's contents start and end; it must be the whole datagram."""
    total = len(data)
    tag, i, end = _header(data, 0, total)
    if tag != _SEQUENCE:
        raise BerUnsupported(f"not an SNMP message: tag 0x{tag:02x}")
    if end != total:
        raise BerError(f"{total - end} trailing octets after the message")
    return i, end


def _decode(data: bytes) -> Trap:
    i, end = _message(data)
    tag, j, stop = _header(data, i, end)
    if tag != _INTEGER:
        raise BerUnsupported(f"not an SNMP message: version tag 0x{tag:02x}")
    version = _integer(data, j, stop, "version")
    if version != 0 and version != 1:
        raise BerUnsupported(f"SNMP message version {version}")
    tag, j, stop = _header(data, stop, end)
    if tag != _OCTETS:
        raise BerUnsupported(f"community: tag 0x{tag:02x}")
    community = data[j:stop]
    tag, j, pdu_end = _header(data, stop, end)
    if pdu_end != end:
        raise BerError(f"{end - pdu_end} trailing octets after the PDU")
    varbinds: list[tuple[str, str]] = []
    if version == 1:
        if tag != TAG_TRAP_V2:
            raise BerUnsupported(f"SNMPv2c PDU type 0x{tag:02x}")
        _v2_pdu_body(data, j, pdu_end, varbinds)
        return Trap(1, community, tuple(varbinds))

    if tag != TAG_TRAP_V1:
        raise BerUnsupported(f"SNMPv1 PDU type 0x{tag:02x}")
    tag, k, stop = _header(data, j, pdu_end)
    if tag != _OID:
        raise BerError(f"enterprise: expected OBJECT IDENTIFIER, got tag 0x{tag:02x}")
    enterprise = _oid(data, k, stop)
    tag, k, stop = _header(data, stop, pdu_end)
    if tag != _IPADDRESS:
        raise BerUnsupported(f"agent-addr: tag 0x{tag:02x}")
    if stop - k != 4:
        raise BerError(f"agent-addr of {stop - k} octets")
    agent = ".".join(map(str, data[k:stop]))
    tag, k, stop = _header(data, stop, pdu_end)
    if tag != _INTEGER:
        raise BerError(f"generic-trap: expected INTEGER, got tag 0x{tag:02x}")
    generic = _integer(data, k, stop, "generic-trap")
    tag, k, stop = _header(data, stop, pdu_end)
    if tag != _INTEGER:
        raise BerError(f"specific-trap: expected INTEGER, got tag 0x{tag:02x}")
    specific = _integer(data, k, stop, "specific-trap")
    tag, k, stop = _header(data, stop, pdu_end)
    if tag != _TIMETICKS:
        raise BerError(f"time-stamp: expected TimeTicks, got tag 0x{tag:02x}")
    timestamp = _integer(data, k, stop, "time-stamp")
    if not 0 <= timestamp <= _UINT32_MAX:
        raise BerError("time-stamp out of range")
    if generic == 6:
        if specific < 0:
            raise BerUnsupported("specific-trap not mappable to an OID")  # left to pysnmp's verdict
        trap_oid = f"{enterprise}.0.{specific}"
    elif 0 <= generic <= 5:
        trap_oid = _GENERIC_TRAPS[generic]
    else:
        raise BerUnsupported(f"generic-trap {generic}")  # left to pysnmp's verdict
    varbinds.append((SYS_UPTIME, str(timestamp)))
    varbinds.append((SNMP_TRAP_OID, trap_oid))
    varbinds.append((SNMP_TRAP_ADDRESS, agent))
    varbinds.append((SNMP_TRAP_ENTERPRISE, enterprise))
    _varbinds(data, stop, pdu_end, _V1_VALUE_TAGS, varbinds)
    return Trap(0, community, tuple(varbinds))


# --- SNMPv3 (RFC 3412 section 6, RFC 3414 section 2.4) ----------------------------------------------------

TAG_INFORM: Final = 0xA6
TAG_REPORT: Final = 0xA8

FLAG_AUTH: Final = 0x01
FLAG_PRIV: Final = 0x02
FLAG_REPORTABLE: Final = 0x04


@dataclass(frozen=True, slots=True)
class V3Message:
    """An SNMPv3 message with USM security parameters, decoded as far as possible without keys.
    Offsets index the datagram itself (the MAC is computed over it with the authentication parameters
    zeroed)."""

    msg_id: int
    max_size: int
    flags: int
    """msgFlags: FLAG_AUTH, FLAG_PRIV, FLAG_REPORTABLE."""
    security_model: int
    engine_id: bytes
    """msgAuthoritativeEngineID (for a TRAP: the sender's)."""
    boots: int
    time: int
    user: bytes
    auth_start: int
    """msgAuthenticationParameters are datagram[auth_start:auth_stop]."""
    auth_stop: int
    priv_params: bytes
    encrypted: bytes | None
    """msgData's encryptedPDU, or None when msgData is a plaintext ScopedPDU at [scoped_start:scoped_stop]."""
    scoped_start: int
    scoped_stop: int

    @property
    def security_level(self) -> int:
        """RFC 3411 securityLevel from msgFlags: 1 noAuthNoPriv, 2 authNoPriv, 3 authPriv (0: invalid,
        privacy without authentication)."""
        auth, priv = self.flags & FLAG_AUTH, self.flags & FLAG_PRIV
        if priv:
            return 3 if auth else 0
        return 2 if auth else 1


@dataclass(frozen=True, slots=True)
class ScopedPdu:
    """A decoded ScopedPDU holding an SNMPv2-Trap-PDU: `varbinds` as `Trap.varbinds` renders them."""

    context_engine_id: bytes
    context_name: bytes
    varbinds: tuple[tuple[str, str], ...]


def _expect(data: bytes, i: int, end: int, want: int, what: str) -> tuple[int, int]:
    tag, j, stop = _header(data, i, end)
    if tag != want:
        raise BerError(f"{what}: expected tag 0x{want:02x}, got 0x{tag:02x} at offset {i}")
    return j, stop


def _uint31(data: bytes, i: int, end: int, what: str, low: int = 0) -> tuple[int, int]:
    j, stop = _expect(data, i, end, _INTEGER, what)
    value = _integer(data, j, stop, what)
    if not low <= value <= _INT32_MAX:
        raise BerError(f"{what} {value} out of range")
    return value, stop


def looks_v3(data: bytes) -> bool:
    """Cheap: whether the datagram starts as an SNMPv3 message (a SEQUENCE, then INTEGER 3)."""
    if len(data) < 8 or data[0] != _SEQUENCE:
        return False
    first = data[1]
    at = 2 if first < 0x80 else 2 + (first & 0x7F)
    return data[at:at + 3] == b"\x02\x01\x03"


def decode_v3(data: bytes) -> V3Message:
    """Decode an SNMPv3 message's header and USM security parameters (RFC 3412 6, RFC 3414 2.4).
    `BerUnsupported`: a v3 message with another security model, or not v3 at all; `BerError`: malformed.
    No other exception escapes."""
    return _guarded(_decode_v3, data)


def _decode_v3(data: bytes) -> V3Message:
    i, end = _message(data)
    j, stop = _expect(data, i, end, _INTEGER, "msgVersion")
    version = _integer(data, j, stop, "msgVersion")
    if version != 3:
        raise BerUnsupported(f"SNMP message version {version}")
    g, global_end = _expect(data, stop, end, _SEQUENCE, "msgGlobalData")
    msg_id, g = _uint31(data, g, global_end, "msgID")
    max_size, g = _uint31(data, g, global_end, "msgMaxSize", 484)
    k, flags_end = _expect(data, g, global_end, _OCTETS, "msgFlags")
    if flags_end - k != 1:
        raise BerError(f"msgFlags of {flags_end - k} octets")
    flags = data[k]
    model, g = _uint31(data, flags_end, global_end, "msgSecurityModel", 1)
    if g != global_end:
        raise BerError("trailing octets in msgGlobalData")
    if model != 3:
        raise BerUnsupported(f"security model {model}")
    s, params_end = _expect(data, global_end, end, _OCTETS, "msgSecurityParameters")
    s, usm_end = _expect(data, s, params_end, _SEQUENCE, "UsmSecurityParameters")
    if usm_end != params_end:
        raise BerError("trailing octets in msgSecurityParameters")
    k, s = _expect(data, s, usm_end, _OCTETS, "msgAuthoritativeEngineID")
    engine_id = data[k:s]
    boots, s = _uint31(data, s, usm_end, "msgAuthoritativeEngineBoots")
    engine_time, s = _uint31(data, s, usm_end, "msgAuthoritativeEngineTime")
    k, s = _expect(data, s, usm_end, _OCTETS, "msgUserName")
    if s - k > 32:
        raise BerError(f"msgUserName of {s - k} octets")
    user = data[k:s]
    auth_start, auth_stop = _expect(data, s, usm_end, _OCTETS, "msgAuthenticationParameters")
    k, s = _expect(data, auth_stop, usm_end, _OCTETS, "msgPrivacyParameters")
    priv_params = data[k:s]
    if s != usm_end:
        raise BerError("trailing octets in UsmSecurityParameters")
    tag, k, data_end = _header(data, params_end, end)
    if data_end != end:
        raise BerError(f"{end - data_end} trailing octets after msgData")
    encrypted: bytes | None
    if tag == _OCTETS:
        encrypted, scoped_start, scoped_stop = data[k:data_end], 0, 0
    elif tag == _SEQUENCE:
        encrypted, scoped_start, scoped_stop = None, params_end, data_end
    else:
        raise BerError(f"msgData: tag 0x{tag:02x}")
    return V3Message(msg_id, max_size, flags, model, engine_id, boots, engine_time, user, auth_start,
                     auth_stop, priv_params, encrypted, scoped_start, scoped_stop)


def decode_scoped_pdu(data: bytes, start: int = 0, stop: int | None = None, *,
                      trailing: bool = False) -> ScopedPdu:
    """Decode the ScopedPDU at data[start:stop] holding an SNMPv2-Trap-PDU. `trailing`: octets after
    it are allowed (DES pads the plaintext to 8 octets). `BerUnsupported` for another PDU type (an
    INFORM, a Report, ...) or a value type the decoder leaves alone; `BerError` for malformed input."""
    try:
        return _decode_scoped_pdu(data, start, len(data) if stop is None else stop, trailing)
    except BerError:
        raise
    except Exception as exc:
        raise BerError(f"undecodable: {type(exc).__name__}") from None


def _decode_scoped_pdu(data: bytes, start: int, stop: int, trailing: bool) -> ScopedPdu:
    i, end = _expect(data, start, stop, _SEQUENCE, "ScopedPDU")
    if end != stop and not trailing:
        raise BerError(f"{stop - end} trailing octets after the ScopedPDU")
    k, i = _expect(data, i, end, _OCTETS, "contextEngineID")
    context_engine_id = data[k:i]
    k, i = _expect(data, i, end, _OCTETS, "contextName")
    context_name = data[k:i]
    tag, j, pdu_end = _header(data, i, end)
    if pdu_end != end:
        raise BerError(f"{end - pdu_end} trailing octets after the PDU")
    if tag != TAG_TRAP_V2:
        raise BerUnsupported(f"SNMPv3 PDU type 0x{tag:02x}")
    varbinds: list[tuple[str, str]] = []
    _v2_pdu_body(data, j, pdu_end, varbinds)
    return ScopedPdu(context_engine_id, context_name, tuple(varbinds))
