"""SNMPv3 User-based Security Model (USM) for incoming notifications, on `cryptography` and `hashlib`.

Used by the receiver's fast path (`adapters.snmp.receiver`) to authenticate and decrypt SNMPv3 traps
without pysnmp; pysnmp 7.1 and net-snmp 5.9 are its references (the tests feed it their packets).

* Keys (RFC 3414 section 2.6 and A.2): the password is hashed into Ku (a 1 MiB ring of the password
  through the hash), then localised to the authoritative engine: Kul = H(Ku || engineID || Ku). The same
  hash serves the privacy key. Ku is computed once per (password, hash); Kul is cached per (user,
  engine id) by `UsmUser.keys`.
* Authentication: HMAC-MD5-96 and HMAC-SHA-96 (RFC 3414), HMAC-SHA-2 (RFC 7860: SHA-224/256/384/512
  truncated to 16/24/32/48 octets). The MAC is computed over the whole message with
  msgAuthenticationParameters zeroed and compared with `hmac.compare_digest`.
* Privacy: DES-CBC (RFC 3414 section 8: key = Kul[0:8], IV = Kul[8:16] XOR salt; via `cryptography`'s
  decrepit TripleDES with the DES key three times, which is single DES), AES-128-CFB (RFC 3826: IV =
  boots || time || salt), and, as pysnmp and net-snmp do, AES-192/256-CFB with draft-blumenthal-aes-usm-04
  key extension (Kul || H(Kul) ...; pysnmp's `..._BLUMENTHAL`, net-snmp's AES-192/AES-256) and 3DES-EDE
  (draft-reeder-snmpv3-usm-3desede: extension by password-to-key of the key so far, as pysnmp does;
  net-snmp 5.9 has no 3DES).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["AuthProtocol", "DecryptionError", "PrivProtocol", "UsmKeys", "UsmUser", "decrypt",
           "localize", "mac_length", "password_to_ku", "verify_mac"]

AuthProtocol = Literal["none", "MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["none", "DES", "3DES", "AES", "AES192", "AES256"]

_HASHES: Final[dict[str, Callable[..., hashlib._Hash]]] = {
    "MD5": hashlib.md5, "SHA": hashlib.sha1, "SHA224": hashlib.sha224, "SHA256": hashlib.sha256,
    "SHA384": hashlib.sha384, "SHA512": hashlib.sha512,
}
_HASH_NAMES: Final[dict[str, str]] = {
    "MD5": "md5", "SHA": "sha1", "SHA224": "sha224", "SHA256": "sha256", "SHA384": "sha384",
    "SHA512": "sha512",
}
_MAC_LENGTHS: Final[dict[str, int]] = {
    "MD5": 12, "SHA": 12, "SHA224": 16, "SHA256": 24, "SHA384": 32, "SHA512": 48,
}
_PRIV_KEY_SIZES: Final[dict[str, int]] = {"DES": 16, "3DES": 32, "AES": 16, "AES192": 24, "AES256": 32}
_RING: Final = 1 << 20  # RFC 3414 A.2: one megabyte of the repeated password


class DecryptionError(ValueError):
    """The encrypted scopedPDU cannot be decrypted (bad salt or ciphertext length)."""


def mac_length(auth: AuthProtocol) -> int:
    """Octets of msgAuthenticationParameters for the protocol (0 for none)."""
    return _MAC_LENGTHS.get(auth, 0)


def password_to_ku(password: bytes, auth: AuthProtocol) -> bytes:
    """RFC 3414 A.2.1/A.2.2 (and RFC 7860 4.1 for SHA-2): the non-localised key Ku."""
    if not password:
        raise ValueError("empty password")
    h = _HASHES[auth]()
    period = len(password)
    ring = password * (64 // period + 2)  # any 64 octets of the ring start within its first `period`
    offset = 0
    for _ in range(_RING // 64):
        h.update(ring[offset:offset + 64])
        offset = (offset + 64) % period
    return h.digest()


def localize(ku: bytes, engine_id: bytes, auth: AuthProtocol) -> bytes:
    """RFC 3414 2.6: Kul = H(Ku || snmpEngineID || Ku)."""
    return _HASHES[auth](ku + engine_id + ku).digest()


def _extend_blumenthal(kul: bytes, size: int, auth: AuthProtocol) -> bytes:
    """draft-blumenthal-aes-usm-04 3.1.2.1, as pysnmp's `AbstractAesBlumenthal` and net-snmp do: append
    H(key so far) until long enough."""
    key = kul
    while len(key) < size:
        key += _HASHES[auth](key).digest()
    return key[:size]


def _extend_reeder(kul: bytes, engine_id: bytes, size: int, auth: AuthProtocol) -> bytes:
    """draft-reeder-snmpv3-usm-3desede-00 2.1, as pysnmp does: append the localised password-to-key of
    the key so far."""
    key = kul
    while len(key) < size:
        key += localize(password_to_ku(key, auth), engine_id, auth)
    return key[:size]


def verify_mac(auth: AuthProtocol, key_hmac: hmac.HMAC, message: bytes, start: int, stop: int) -> bool:
    """Whether message[start:stop] (msgAuthenticationParameters) is the MAC of the whole message with
    those octets zeroed; `key_hmac` is an HMAC keyed with Kul (copied, never updated itself)."""
    n = stop - start
    if n != _MAC_LENGTHS[auth]:
        return False
    h = key_hmac.copy()
    h.update(message[:start])
    h.update(bytes(n))
    h.update(message[stop:])
    return hmac.compare_digest(h.digest()[:n], message[start:stop])


def decrypt(priv: PrivProtocol, key: bytes, boots: int, time: int, salt: bytes, data: bytes) -> bytes:
    """The plaintext scopedPDU (for DES/3DES possibly followed by padding)."""
    if len(salt) != 8:
        raise DecryptionError(f"msgPrivacyParameters of {len(salt)} octets")
    if priv in ("DES", "3DES"):
        if len(data) % 8 or not data:
            raise DecryptionError(f"ciphertext of {len(data)} octets, not a multiple of 8")
        if priv == "DES":
            cipher_key, pre_iv = key[:8] * 3, key[8:16]
        else:
            cipher_key, pre_iv = key[:24], key[24:32]
        iv = bytes(a ^ b for a, b in zip(salt, pre_iv, strict=True))
        dec = Cipher(TripleDES(cipher_key), modes.CBC(iv)).decryptor()
    elif priv in ("AES", "AES192", "AES256"):
        iv = boots.to_bytes(4, "big") + time.to_bytes(4, "big") + salt
        dec = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
    else:
        raise DecryptionError(f"privacy protocol {priv}")
    return dec.update(data) + dec.finalize()


@dataclass(frozen=True, slots=True)
class UsmKeys:
    """A user's keys localised to one authoritative engine."""

    auth_hmac: hmac.HMAC | None
    priv_key: bytes | None


@dataclass(slots=True)
class UsmUser:
    """A configured USM user; `keys(engine_id)` localises (once per engine id, then cached)."""

    name: str
    auth: AuthProtocol
    priv: PrivProtocol
    auth_password: bytes | None
    priv_password: bytes | None
    _ku: dict[str, bytes] = field(default_factory=dict)
    _cache: dict[bytes, UsmKeys] = field(default_factory=dict)

    @property
    def level(self) -> int:
        """RFC 3411 securityLevel: 1 noAuthNoPriv, 2 authNoPriv, 3 authPriv."""
        if self.auth == "none":
            return 1
        return 2 if self.priv == "none" else 3

    def _ku_of(self, which: str, password: bytes) -> bytes:
        ku = self._ku.get(which)
        if ku is None:
            ku = self._ku[which] = password_to_ku(password, self.auth)
        return ku

    def keys(self, engine_id: bytes) -> UsmKeys:
        cached = self._cache.get(engine_id)
        if cached is not None:
            return cached
        auth_hmac: hmac.HMAC | None = None
        priv_key: bytes | None = None
        if self.auth != "none" and self.auth_password is not None:
            kul = localize(self._ku_of("auth", self.auth_password), engine_id, self.auth)
            auth_hmac = hmac.new(kul, digestmod=_HASH_NAMES[self.auth])
            if self.priv != "none" and self.priv_password is not None:
                pkul = localize(self._ku_of("priv", self.priv_password), engine_id, self.auth)
                size = _PRIV_KEY_SIZES[self.priv]
                if self.priv == "3DES":
                    priv_key = _extend_reeder(pkul, engine_id, size, self.auth)
                else:
                    priv_key = _extend_blumenthal(pkul, size, self.auth)
        keys = UsmKeys(auth_hmac, priv_key)
        self._cache[engine_id] = keys
        return keys
