"""adapters.snmp.ber: the strict SNMPv1/v2c trap decoder. Values are checked against pysnmp's own decoder
and `prettyPrint()` for the same octets; malformed input raises `BerError` naming the fault; no input
raises anything else (hypothesis, and 100,000 random mutations of real packets)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from importlib.util import find_spec
from typing import Any

import pytest
from pyasn1.codec.ber import decoder
from pysnmp.proto import api

from adapters.snmp import ber as snmp_ber
from adapters.snmp.ber import BerError, BerUnsupported, Trap, decode_trap, peek_version
from tests.support.packets import mutate

SYS_NAME = "1.3.6.1.2.1.1.5.0"

# --- building messages by hand ------------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def integer(value: int, tag: int = 0x02) -> bytes:
    size = ((value if value >= 0 else ~value).bit_length() + 8) // 8  # minimal two's complement
    return tlv(tag, value.to_bytes(size, "big", signed=True))


def unsigned(value: int, tag: int) -> bytes:
    return integer(value, tag)


def oid(dotted: str) -> bytes:
    arcs = [int(x) for x in dotted.split(".")]
    subids = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    out = bytearray()
    for sub in subids:
        chunk = [sub & 0x7F]
        sub >>= 7
        while sub:
            chunk.append(0x80 | (sub & 0x7F))
            sub >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def varbind(name: str, value: bytes) -> bytes:
    return tlv(0x30, oid(name) + value)


def v2c_trap(*binds: bytes, community: bytes = b"public", pdu_tag: int = 0xA7, version: int = 1,
             request_id: int = 1234) -> bytes:
    pdu = tlv(pdu_tag, integer(request_id) + integer(0) + integer(0) + tlv(0x30, b"".join(binds)))
    return tlv(0x30, integer(version) + tlv(0x04, community) + pdu)


def v1_trap(*binds: bytes, enterprise: str = "1.3.6.1.4.1.232", agent: bytes = b"\x0a\x00\x00\x07",
            generic: int = 6, specific: int = 6050, community: bytes = b"public") -> bytes:
    pdu = tlv(0xA4, oid(enterprise) + tlv(0x40, agent) + integer(generic) + integer(specific)
              + unsigned(4242, 0x43) + tlv(0x30, b"".join(binds)))
    return tlv(0x30, integer(0) + tlv(0x04, community) + pdu)


STANDARD = v2c_trap(varbind("1.3.6.1.2.1.1.3.0", unsigned(100, 0x43)),
                    varbind("1.3.6.1.6.3.1.1.4.1.0", oid("1.3.6.1.4.1.232.0.22054")),
                    varbind(SYS_NAME, tlv(0x04, b"oa-enc1")))


def pysnmp_varbinds(data: bytes) -> list[tuple[str, str]]:
    """What pysnmp's decoder and prettyPrint make of a v2c message (the reference)."""
    module = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    message, rest = decoder.decode(data, asn1Spec=module.Message())
    assert not rest
    pdu = module.apiMessage.get_pdu(message)
    return [(str(o), v.prettyPrint()) for o, v in module.apiPDU.get_varbinds(pdu)]


# --- well-formed -----------------------------------------------------------------------------------------


def test_v2c_trap_decoded() -> None:
    trap = decode_trap(STANDARD)
    assert trap == Trap(1, b"public", (("1.3.6.1.2.1.1.3.0", "100"),
                                       ("1.3.6.1.6.3.1.1.4.1.0", "1.3.6.1.4.1.232.0.22054"),
                                       (SYS_NAME, "oa-enc1")))
    assert peek_version(STANDARD) == 1


VALUES: list[tuple[str, bytes]] = [
    ("integer", integer(16)),
    ("integer negative", integer(-5)),
    ("integer min", integer(-(1 << 31))),
    ("integer max", integer((1 << 31) - 1)),
    ("octets text", tlv(0x04, b"blade07 in rack-01")),
    ("octets empty", tlv(0x04, b"")),
    ("octets tab", tlv(0x04, b"a\tb")),
    ("octets tilde and space", tlv(0x04, b" ~")),
    ("octets DEL", tlv(0x04, b"abc\x7f")),
    ("octets utf-8", tlv(0x04, "héllo".encode())),
    ("octets binary", tlv(0x04, b"\x00\xff\x10")),
    ("octets long", tlv(0x04, b"x" * 300)),
    ("null", tlv(0x05, b"")),
    ("oid", oid("1.3.6.1.4.1.674.10892.5.3.2.1.0.2265")),
    ("oid big arcs", oid("2.999.4294967295.0.128.16383.16384")),
    ("oid 0.0", oid("0.0")),
    ("ipaddress", tlv(0x40, b"\x0a\x01\x02\x03")),
    ("counter32 max", unsigned((1 << 32) - 1, 0x41)),
    ("gauge32", unsigned(7, 0x42)),
    ("timeticks", unsigned(123456, 0x43)),
    ("opaque", tlv(0x44, b"\x9f\x78\x04\x3f\x80\x00\x00")),
    ("opaque text", tlv(0x44, b"plain")),
    ("counter64 max", unsigned((1 << 64) - 1, 0x46)),
    ("counter64 zero", unsigned(0, 0x46)),
    ("noSuchObject", tlv(0x80, b"")),
    ("noSuchInstance", tlv(0x81, b"")),
    ("endOfMibView", tlv(0x82, b"")),
]


@pytest.mark.parametrize(("name", "value"), VALUES, ids=[v[0] for v in VALUES])
def test_values_rendered_as_pysnmp_renders_them(name: str, value: bytes) -> None:
    message = v2c_trap(varbind("1.3.6.1.2.1.1.3.0", unsigned(1, 0x43)), varbind("1.3.6.1.4.1.9.9.9", value))
    assert list(decode_trap(message).varbinds) == pysnmp_varbinds(message)


def test_long_form_lengths_accepted() -> None:
    """RFC 3417 section 8 allows more length octets than needed (0x82 00 05); pysnmp accepts them too."""
    padded = b"\x30\x82" + (len(STANDARD) - 2).to_bytes(2, "big") + STANDARD[2:]
    assert decode_trap(padded) == decode_trap(STANDARD)


def test_v1_trap_mapped_per_rfc3584() -> None:
    trap = decode_trap(v1_trap(varbind(SYS_NAME, tlv(0x04, b"blade07")),
                               varbind("1.3.6.1.4.1.9.1", tlv(0x40, b"\x01\x02\x03\x04"))))
    assert trap.version == 0
    assert trap.community == b"public"
    assert trap.varbinds == (
        ("1.3.6.1.2.1.1.3.0", "4242"),
        ("1.3.6.1.6.3.1.1.4.1.0", "1.3.6.1.4.1.232.0.6050"),
        ("1.3.6.1.6.3.18.1.3.0", "10.0.0.7"),
        ("1.3.6.1.6.3.1.1.4.3.0", "1.3.6.1.4.1.232"),
        (SYS_NAME, "blade07"),
        ("1.3.6.1.4.1.9.1", "1.2.3.4"),
    )
    assert peek_version(v1_trap()) == 0


@pytest.mark.parametrize("generic", range(6))
def test_v1_generic_traps(generic: int) -> None:
    trap = decode_trap(v1_trap(generic=generic, specific=0))
    assert trap.varbinds[1] == ("1.3.6.1.6.3.1.1.4.1.0", f"1.3.6.1.6.3.1.1.5.{generic + 1}")


# --- malformed and unsupported ----------------------------------------------------------------------------


MALFORMED: list[tuple[str, bytes, str]] = [
    ("truncated", STANDARD[:-3], "exceeds"),
    ("truncated header", STANDARD[:1], "truncated"),
    ("2 GiB length", b"\x30\x84\x7f\xff\xff\xff\x02\x01\x01\x04\x06public", "exceeds"),
    ("length of length", b"\x30\x89" + b"\x00" * 8 + b"\x05" + STANDARD[2:], "length field"),
    ("indefinite", b"\x30\x80" + STANDARD[2:] + b"\x00\x00", "indefinite"),
    ("trailing octets", STANDARD + b"\x00", "trailing"),
    ("non-minimal integer", v2c_trap(varbind("1.2.3", b"\x02\x02\x00\x05")), "non-minimal INTEGER"),
    ("non-minimal negative", v2c_trap(varbind("1.2.3", b"\x02\x02\xff\xff")), "non-minimal INTEGER"),
    ("empty integer", v2c_trap(varbind("1.2.3", b"\x02\x00")), "empty INTEGER"),
    ("overlong integer", v2c_trap(varbind("1.2.3", tlv(0x46, b"\x01" * 10))), "overlong INTEGER"),
    ("integer32 range", v2c_trap(varbind("1.2.3", integer(1 << 31))), "out of range"),
    ("counter32 negative", v2c_trap(varbind("1.2.3", integer(-1, 0x41))), "out of range"),
    ("counter64 range", v2c_trap(varbind("1.2.3", integer(1 << 64, 0x46))), "out of range"),
    ("oid padding", v2c_trap(tlv(0x30, b"\x06\x03\x2b\x80\x01" + tlv(0x05, b""))), "non-minimal OBJECT"),
    ("oid subid > 2^32-1", v2c_trap(varbind("1.3.4294967296", tlv(0x05, b""))), r"over 2\^32-1"),
    ("oid 129 arcs", v2c_trap(varbind("1.3" + ".1" * 127, tlv(0x05, b""))), "over 128"),
    ("oid truncated", v2c_trap(tlv(0x30, b"\x06\x02\x2b\x86" + tlv(0x05, b""))), "truncated OBJECT"),
    ("oid empty", v2c_trap(tlv(0x30, b"\x06\x00\x05\x00")), "empty OBJECT"),
    ("null with content", v2c_trap(varbind("1.2.3", b"\x05\x01\x00")), "NULL with content"),
    ("ipaddress 5 octets", v2c_trap(varbind("1.2.3", tlv(0x40, b"\x01\x02\x03\x04\x05"))), "IpAddress"),
    ("varbind without value", v2c_trap(tlv(0x30, oid("1.2.3"))), "truncated"),
    ("varbind trailing", v2c_trap(tlv(0x30, oid("1.2.3") + b"\x05\x00\x05\x00")), "trailing"),
    ("varbind name not an oid", v2c_trap(tlv(0x30, b"\x04\x01a\x05\x00")), "expected OBJECT"),
    ("varbind list not a sequence", tlv(0x30, integer(1) + tlv(0x04, b"public") + tlv(
        0xA7, integer(1) + integer(0) + integer(0) + tlv(0x31, varbind("1.2.3", tlv(0x05, b""))))),
     "expected SEQ"),
    ("agent-addr 3 octets", v1_trap(agent=b"\x01\x02\x03"), "agent-addr"),
    ("request-id range", v2c_trap(request_id=1 << 31), "request-id"),
]


@pytest.mark.parametrize(("name", "data", "why"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, data: bytes, why: str) -> None:
    with pytest.raises(BerError, match=why) as info:
        decode_trap(data)
    assert not isinstance(info.value, BerUnsupported)


UNSUPPORTED: list[tuple[str, bytes]] = [
    ("v3", tlv(0x30, integer(3) + tlv(0x30, b""))),
    ("version 7", v2c_trap(version=7)),
    ("v2c inform", v2c_trap(pdu_tag=0xA6)),
    ("v2c get", v2c_trap(pdu_tag=0xA0)),
    ("v1 get", v2c_trap(pdu_tag=0xA0, version=0)),
    ("v2 trap in a v1 message", v2c_trap(version=0)),
    ("v1 trap in a v2c message", tlv(0x30, integer(1) + v1_trap()[5:])),
    ("UInteger32", v2c_trap(varbind("1.2.3", unsigned(5, 0x47)))),
    ("constructed octets", v2c_trap(varbind("1.2.3", tlv(0x24, tlv(0x04, b"ab"))))),
    ("Counter64 in v1", v1_trap(varbind("1.2.3", unsigned(5, 0x46)))),
    ("exception in v1", v1_trap(varbind("1.2.3", tlv(0x80, b"")))),
    ("generic-trap 7", v1_trap(generic=7)),
    ("specific-trap negative", v1_trap(specific=-1)),
    ("high tag number", v2c_trap(varbind("1.2.3", b"\x5f\x81\x00\x00"))),
    ("not a sequence", b"\x04\x03abc"),
]


@pytest.mark.parametrize(("name", "data"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported(name: str, data: bytes) -> None:
    with pytest.raises(BerUnsupported):
        decode_trap(data)


def test_peek_version() -> None:
    assert peek_version(b"") is None
    assert peek_version(b"\x30\x03\x02\x01\x03") == 3
    assert peek_version(b"\x30\x03\x02\x01") is None  # truncated
    assert peek_version(b"\x30\x03\x02\x01\x01\x00") is None  # trailing octets: pysnmp calls it malformed
    assert peek_version(b"\x04\x03\x02\x01\x01") is None


def test_nesting_is_bounded() -> None:
    """Deeply nested constructed values are refused at the first level, never recursed into."""
    nested = b"\x05\x00"
    for _ in range(5000):
        nested = tlv(0x30, nested)
    with pytest.raises(BerError):
        decode_trap(v2c_trap(varbind("1.2.3", nested)))


# --- fuzzing ------------------------------------------------------------------------------------------------


def _decode_unguarded(data: bytes) -> Trap | None:
    """The decoder without its last-resort guard: a bug would surface here as a non-BerError."""
    try:
        return snmp_ber._decode(data)
    except BerError:
        return None


@pytest.fixture(scope="module")
def real_packets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[bytes]]:
    """Traps as net-snmp encodes them (every varbind type snmptrap has), plus the hand-built ones."""
    packets = [STANDARD, v1_trap(varbind(SYS_NAME, tlv(0x04, b"x")))]
    packets += [v2c_trap(varbind("1.3.6.1.4.1.9.9.9", value)) for _, value in VALUES]
    if shutil.which("snmptrap") is not None:
        home = tmp_path_factory.mktemp("netsnmp")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIBS": "", "HOME": str(home),
               "SNMPCONFPATH": str(home), "SNMP_PERSISTENT_DIR": str(home)}
        binds = [SYS_NAME, "s", "blade07", "1.3.6.1.4.1.9.1", "i", "-16", "1.3.6.1.4.1.9.2", "u", "7",
                 "1.3.6.1.4.1.9.3", "c", "9", "1.3.6.1.4.1.9.4", "x", "00ff10", "1.3.6.1.4.1.9.5", "a",
                 "10.1.2.3", "1.3.6.1.4.1.9.6", "o", "1.3.6.1.4", "1.3.6.1.4.1.9.7", "t", "12345",
                 "1.3.6.1.4.1.9.8", "n", ""]
        for head in (["-v", "2c", "-c", "public", "{}", "", "1.3.6.1.4.1.232.0.22054"],
                     ["-v", "1", "-c", "public", "{}", "1.3.6.1.4.1.232", "127.0.0.9", "6", "6050", ""]):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.settimeout(10)
                target = f"127.0.0.1:{s.getsockname()[1]}"
                subprocess.run(["snmptrap", *(target if a == "{}" else a for a in head), *binds],
                               env=env, check=True, timeout=30)
                packets.append(s.recvfrom(65535)[0])
    yield packets


def test_mutations_of_real_packets_raise_only_ber_error(real_packets: list[bytes]) -> None:
    rng = random.Random(20261127)
    decoded = 0
    for _ in range(100_000):
        if _decode_unguarded(mutate(rng, rng.choice(real_packets))) is not None:
            decoded += 1
    assert decoded > 1000  # the mutations are not all rejected at the first octet


def test_random_bytes_raise_only_ber_error() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        _decode_unguarded(rng.randbytes(rng.randrange(80)))
        _decode_unguarded(b"\x30" + rng.randbytes(rng.randrange(80)))


if find_spec("hypothesis") is not None:  # not a project dependency: `pip install hypothesis` to run these
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @pytest.mark.slow
    @settings(max_examples=3000, deadline=None)
    @given(st.binary(max_size=300))
    def test_hypothesis_any_bytes(data: bytes) -> None:
        _decode_unguarded(data)
        _decode_unguarded(b"\x30" + bytes([len(data) & 0x7F]) + data)
        assert peek_version(data) is None or isinstance(peek_version(data), int)

    @pytest.mark.slow
    @settings(max_examples=3000, deadline=None)
    @given(st.data())
    def test_hypothesis_edits_of_a_trap(data: Any) -> None:
        packets = [STANDARD, v1_trap(varbind(SYS_NAME, tlv(0x04, b"x")))]
        message = bytearray(data.draw(st.sampled_from(packets)))
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(message)))
            message[at:at + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=4))
        result = _decode_unguarded(bytes(message))
        if result is not None:
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.varbinds)
