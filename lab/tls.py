"""The simulated BMCs' TLS certificate, generated at start and written to a temp dir.

Up to `MAX_SANS` addresses: one self-signed certificate naming them all (`cert_file` is also the CA
file). More (a 10,000-BMC lab): a cert with 10,000 IP SANs is ~60 KB sent and parsed on every handshake,
and a client's parsed copy per connection costs hundreds of KB; instead `cert_file` is a lab CA and each
/24 of addresses (an enclosure's BMCs) gets its own small leaf signed by it (one shared leaf key), so
a client verifying against `cert_file` accepts every BMC and each handshake carries ~16 SANs.
`server_context(ip)` gives the context for that address (built once per leaf)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LabCertificate", "generate_certificate"]


MAX_SANS = 256
"""Past this many addresses, a CA and one leaf per /24 instead of one certificate naming them all."""


def _group(ip: str) -> str:
    """The /24 an IPv4 address is in ("127.64.3"); an IPv6 address is its own group."""
    addr = ipaddress.ip_address(ip)
    return ".".join(str(addr).split(".")[:3]) if addr.version == 4 else str(addr)


@dataclass
class LabCertificate:
    """The certificate and key files; `cert_file` doubles as the CA file (self-signed, or the lab CA)."""

    directory: Path
    cert_file: Path
    key_file: Path
    leaves: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    """/24 group -> (leaf certificate, key) when the lab has more than MAX_SANS addresses."""
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict, repr=False)

    def server_context(self, ip: str | None = None) -> ssl.SSLContext:
        """The server context for address `ip` (its /24's leaf), else for `cert_file` itself."""
        group = _group(ip) if ip is not None and self.leaves else ""
        if group not in self.leaves:
            group = ""
        ctx = self._contexts.get(group)
        if ctx is None:
            cert, key = self.leaves[group] if group else (self.cert_file, self.key_file)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            self._contexts[group] = ctx
        return ctx

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _name(common: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "failover-monitor lab"),
        x509.NameAttribute(NameOID.COMMON_NAME, common),
    ])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(_pem_key(key))


def _sans(ips: Iterable[str], dns_names: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted(set(ips))]
    return x509.SubjectAlternativeName(names)


def generate_certificate(ips: Iterable[str], dns_names: Iterable[str] = ("localhost",)) -> LabCertificate:
    """An EC P-256 certificate valid for the given IP addresses (SANs) and names: self-signed up to
    MAX_SANS addresses, else a lab CA with one leaf per /24 (see the module)."""
    ips = sorted(set(ips))
    dns_names = list(dns_names)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=365)
    many = len(ips) > MAX_SANS
    name = _name("failover-monitor lab CA" if many else "failover-monitor lab BMC")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    # The CA names only the DNS names (the BMCs use their /24's leaf); a single cert names everything.
    builder = builder.add_extension(_sans([] if many else ips, dns_names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    directory = Path(tempfile.mkdtemp(prefix="failover-lab-tls-"))
    cert_file = directory / "bmc-cert.pem"
    key_file = directory / "bmc-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_file, key)
    result = LabCertificate(directory, cert_file, key_file)
    if not many:
        return result
    groups: dict[str, list[str]] = {}
    for ip in ips:
        groups.setdefault(_group(ip), []).append(ip)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key_file = directory / "leaf-key.pem"
    _write_key(leaf_key_file, leaf_key)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    ski = x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key())
    for group, members in groups.items():
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(f"failover-monitor lab BMCs {group}"))
            .issuer_name(name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(_sans(members, dns_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(aki, critical=False)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        leaf_file = directory / f"leaf-{group.replace(':', '_')}.pem"
        leaf_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        result.leaves[group] = (leaf_file, leaf_key_file)
    return result
