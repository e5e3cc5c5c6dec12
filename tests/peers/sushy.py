"""A real sushy-tools Redfish emulator (fake driver) as a test peer: TLS, Basic auth, a free port.

    async with start_sushy(tmp_path, [{"uuid": U, "name": "node01", "power_state": "On",
                                       "nics": [{"mac": "00:5c:52:31:3a:9c", "ip": "127.0.0.2"}]}]) as peer:
        bmc = peer.endpoint(U)          # BmcEndpoint(peer.url, "admin", "secret", verify_tls=False, system=U)

Enter and leave the context on the same event loop (the emulator is an asyncio subprocess).
sushy applies a reset after a random 1-11 s delay: poll the power state.

Several systems on one service: give several entries (`SUSHY_EMULATOR_FAKE_SYSTEMS`); sushy lists them
in /redfish/v1/Systems in that order, by UUID (their Redfish Id), and answers /Systems/<name> with a 307
to the UUID URL. Its ComputerSystem reports `UUID` but no `SerialNumber`. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from monitor.core.model import BmcEndpoint
from tests.support.net import reserve_port

STARTUP_DEADLINE = 30.0
"""Seconds to wait for the service root to answer."""
STOP_DEADLINE = 5.0
"""Seconds between SIGTERM and SIGKILL."""
_PORT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class SushyPeer:
    url: str
    """https://127.0.0.1:<port> (the BMC base URL)."""
    username: str
    password: str = field(repr=False)
    cert_file: Path
    """The emulator's self-signed certificate (use as ca_file to test verification)."""
    systems: tuple[dict[str, Any], ...]
    startup_seconds: float
    """How long the emulator took to answer its service root."""
    log_file: Path

    def system_ids(self) -> list[str]:
        """The UUIDs of the fake systems (the Redfish Ids sushy uses)."""
        return [str(s["uuid"]) for s in self.systems]

    def endpoint(
        self,
        system: str | None = None,
        *,
        password: str | None = None,
        verify_tls: bool = False,
        ca_file: str | None = None,
        auth: str = "basic",
    ) -> BmcEndpoint:
        return BmcEndpoint(
            self.url,
            self.username,
            self.password if password is None else password,
            verify_tls=verify_tls,
            ca_file=ca_file,
            system=system,
            auth=auth,
        )


def make_self_signed(directory: Path, *, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed EC certificate for localhost/127.0.0.1; returns (cert.pem, key.pem) in directory."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def _sushy_executable() -> Path:
    exe = Path(sys.executable).parent / "sushy-emulator"
    if not exe.exists():
        raise RuntimeError(f"sushy-emulator not found next to {sys.executable}")
    return exe


def _write_config(
    path: Path,
    *,
    port: int,
    cert: Path,
    key: Path,
    auth_file: Path,
    state_dir: Path,
    systems: Sequence[dict[str, Any]],
) -> None:
    lines = [
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
        f"SUSHY_EMULATOR_LISTEN_PORT = {port!r}",
        "SUSHY_EMULATOR_FAKE_DRIVER = True",
        f"SUSHY_EMULATOR_STATE_DIR = {str(state_dir)!r}",
        f"SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}",
        f"SUSHY_EMULATOR_SSL_KEY = {str(key)!r}",
        f"SUSHY_EMULATOR_AUTH_FILE = {str(auth_file)!r}",
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {list(systems)!r}",
    ]
    path.write_text("\n".join(lines) + "\n")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_DEADLINE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _wait_ready(proc: asyncio.subprocess.Process, url: str, log_file: Path) -> bool:
    """Poll the service root until it answers; False if the process died first (e.g. port taken)."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            if proc.returncode is not None:
                return False
            try:
                async with http.get(f"{url}/redfish/v1/", ssl=False) as response:
                    if response.status == 200:
                        await response.read()
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"sushy-emulator did not answer within {STARTUP_DEADLINE:g} s; log:\n{_tail(log_file)}"
                )
            await asyncio.sleep(0.1)


def _tail(log_file: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.asynccontextmanager
async def start_sushy(
    tmp_path: Path,
    systems: Sequence[dict[str, Any]],
    *,
    username: str = "admin",
    password: str = "secret",
) -> AsyncIterator[SushyPeer]:
    """Run sushy-emulator (fake driver, TLS, Basic auth) on a free 127.0.0.1 port until the context ends.

    `systems` are sushy fake systems: {"uuid", "name", "power_state", "nics": [{"mac", "ip"}]}.
    Files (certificate, htpasswd, config, state, log) go to a fresh folder under tmp_path.
    """
    base = tmp_path / f"sushy-{os.getpid()}-{time.monotonic_ns()}"
    state_dir = base / "state"
    state_dir.mkdir(parents=True)
    cert, key = make_self_signed(base)
    auth_file = base / "htpasswd"
    # Cost 4 (the minimum): sushy checks the bcrypt hash on every request.
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    auth_file.write_text(f"{username}:{digest}\n")
    config = base / "sushy.conf"
    log_file = base / "sushy.log"
    exe = _sushy_executable()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SUSHY_EMULATOR_CONFIG", None)

    for _attempt in range(_PORT_ATTEMPTS):
        port = reserve_port()
        url = f"https://127.0.0.1:{port}"
        _write_config(
            config, port=port, cert=cert, key=key, auth_file=auth_file, state_dir=state_dir, systems=systems
        )
        started = time.monotonic()
        with log_file.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                str(exe),
                "--config",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        try:
            ready = await _wait_ready(proc, url, log_file)
        except BaseException:
            await _stop(proc)
            raise
        if not ready:
            await _stop(proc)
            if "Address already in use" in _tail(log_file):
                continue  # someone took the port between our probe and the bind: try another
            raise RuntimeError(f"sushy-emulator exited with {proc.returncode}; log:\n{_tail(log_file)}")
        try:
            yield SushyPeer(
                url=url,
                username=username,
                password=password,
                cert_file=cert,
                systems=tuple(dict(s) for s in systems),
                startup_seconds=time.monotonic() - started,
                log_file=log_file,
            )
        finally:
            await _stop(proc)
        return
    raise RuntimeError(f"sushy-emulator could not bind a free port in {_PORT_ATTEMPTS} attempts")
