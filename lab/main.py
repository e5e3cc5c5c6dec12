"""Entry point: run the lab simulator (BMCs + manager/control API) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import TracebackType

from aiohttp import web

from lab.bmc import BmcFleet, BmcStartError
from lab.config import ConfigError, LabConfig, load_config, split_host_port
from lab.manager import create_manager_app
from lab.oa_ssh import OaFleet, OaStartError
from lab.ome import OmeFace
from lab.oneview import OneViewFace, create_oneview_app
from lab.tls import LabCertificate, generate_certificate
from lab.world import World, generate_world

__all__ = ["LabSimulator", "LabStartError", "main"]

log = logging.getLogger("lab")


class LabStartError(Exception):
    """The lab could not start (an address in use, a ready file that cannot be written, ...)."""


class LabSimulator:
    """The whole outside world, in-process: `async with LabSimulator(cfg) as lab: lab.manager_url ...`."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.world: World = generate_world(config)
        self.manager_url: str = ""
        self.oneview_url: str = ""
        """The OneView face's base URL (`https://127.0.0.1:PORT`) when `oneview.enabled`."""
        self.oneview: OneViewFace | None = None
        self._oneview_runner: web.AppRunner | None = None
        self.ome_url: str = ""
        """The emulated OME-Modular API (`ome.enabled`), else empty."""
        self.ome: OmeFace | None = OmeFace(self.world, config.ome) if config.ome.enabled else None
        self._ome_runner: web.AppRunner | None = None
        self._shutdown = asyncio.Event()
        self._cert: LabCertificate | None = None
        self._fleet: BmcFleet | None = None
        self.oa: OaFleet | None = None
        """The enclosures' Onboard Administrators over SSH (config `oa`), once started."""
        self._runner: web.AppRunner | None = None
        self._ready_written: Path | None = None

    @property
    def ca_file(self) -> Path | None:
        """The self-signed certificate every BMC presents (usable as a CA file)."""
        return self._cert.cert_file if self._cert else None

    def bmc_url(self, server_id: str) -> str:
        url = self.world.bmc_url(self.world.server(server_id))
        if url is None:
            raise KeyError(f"{server_id} has no BMC")
        return url

    async def __aenter__(self) -> LabSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        ips = [s.bmc_ip for s in self.world.bmc_servers()]
        if cfg.oneview.enabled:
            ips.append(_ip_or(split_host_port(cfg.oneview.listen)[0], "127.0.0.1"))
        if self.ome is not None and cfg.ome.tls:
            ips.append(_ip_or(split_host_port(cfg.ome.listen)[0], "127.0.0.1"))
        self._cert = generate_certificate(ips)
        self._fleet = BmcFleet(
            self.world, cfg.credentials, self._cert.server_context, self._shutdown, cfg.bmc_port
        )
        try:
            await self._fleet.start()
        except BmcStartError as exc:
            raise LabStartError(str(exc)) from exc
        if cfg.oa is not None:
            self.oa = OaFleet(self.world, cfg.oa)
            try:
                await self.oa.start()
            except OaStartError as exc:
                raise LabStartError(str(exc)) from exc
        app = create_manager_app(self.world, cfg.api_token, self._fleet.sync_presence,
                                 self.oa.view if self.oa is not None else None)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.listen_host, cfg.listen_port)
        try:
            await site.start()
        except OSError as exc:
            raise LabStartError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from exc
        port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        host = f"[{cfg.listen_host}]" if ":" in cfg.listen_host else cfg.listen_host
        self.manager_url = f"http://{host}:{port}"
        if cfg.oneview.enabled:
            await self._start_oneview()
        if self.ome is not None:
            await self._start_ome()
        if cfg.ready_file:
            self._write_ready(Path(cfg.ready_file))
        log.info("lab serving: manager %s, %d BMCs", self.manager_url, len(self._fleet))

    async def _start_oneview(self) -> None:
        """The OneView face (lab.oneview): HTTPS with the lab's certificate, on its own listener."""
        assert self._cert is not None
        ov = self.config.oneview
        self.oneview = OneViewFace(self.world, ov)
        self._oneview_runner = web.AppRunner(create_oneview_app(self.oneview), access_log=None,
                                             shutdown_timeout=1.0)
        await self._oneview_runner.setup()
        host, port = split_host_port(ov.listen)
        site = web.TCPSite(self._oneview_runner, host, port,
                           ssl_context=self._cert.server_context(_ip_or(host, "127.0.0.1")))
        try:
            await site.start()
        except OSError as exc:
            raise LabStartError(
                f"cannot listen on oneview.listen {ov.listen}: {exc.strerror or exc}") from exc
        bound = next(a[1] for a in self._oneview_runner.addresses if isinstance(a, tuple))
        self.oneview_url = f"https://{f'[{host}]' if ':' in host else host}:{bound}"

    async def _start_ome(self) -> None:
        assert self.ome is not None and self._cert is not None
        ome = self.config.ome
        host, port = split_host_port(ome.listen)
        self._ome_runner = web.AppRunner(self.ome.app(), access_log=None, shutdown_timeout=1.0)
        await self._ome_runner.setup()
        tls = self._cert.server_context(_ip_or(host, "127.0.0.1")) if ome.tls else None
        try:
            await web.TCPSite(self._ome_runner, host, port, ssl_context=tls).start()
        except OSError as exc:
            raise LabStartError(f"cannot listen on ome.listen {ome.listen}: {exc.strerror or exc}") from exc
        bound = next(a[1] for a in self._ome_runner.addresses if isinstance(a, tuple))
        shown = f"[{host}]" if ":" in host else host
        self.ome_url = f"{'https' if ome.tls else 'http'}://{shown}:{bound}"
        log.info("lab serving the OME-Modular API at %s", self.ome_url)

    def _write_ready(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        ready: dict[str, object] = {"manager": self.manager_url, "pid": os.getpid()}
        if self.oneview_url:
            ready["oneview"] = self.oneview_url
        if self.ome_url:
            ready["ome"] = self.ome_url
        try:
            tmp.write_text(json.dumps(ready) + "\n", encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            raise LabStartError(f"cannot write the ready file {path}: {exc.strerror or exc}") from exc
        self._ready_written = path

    async def stop(self) -> None:
        self._shutdown.set()  # releases requests hung by bmc_timeout
        self.world.close()
        if self.oneview is not None:
            self.oneview.close()
        if self._oneview_runner is not None:
            ov_runner, self._oneview_runner = self._oneview_runner, None
            await ov_runner.cleanup()
        if self.ome is not None:
            self.ome.close()
        if self._ome_runner is not None:
            ome_runner, self._ome_runner = self._ome_runner, None
            await ome_runner.cleanup()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._fleet is not None:
            fleet, self._fleet = self._fleet, None
            await fleet.stop()
        if self.oa is not None:
            oa, self.oa = self.oa, None
            await oa.stop()
        if self._cert is not None:
            cert, self._cert = self._cert, None
            cert.cleanup()
        if self._ready_written is not None:
            with contextlib.suppress(OSError):
                self._ready_written.unlink()
            self._ready_written = None


def _ip_or(host: str, default: str) -> str:
    """`host` when it is an IP address (a certificate SAN), else `default`."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return default
    return host


async def serve(config: LabConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with LabSimulator(config) as lab:
            print(f"lab: manager API at {lab.manager_url}", file=sys.stderr, flush=True)
            if lab.oneview_url:
                print(f"lab: OneView API at {lab.oneview_url}", file=sys.stderr, flush=True)
            if lab.ome_url:
                print(f"lab: OME-Modular API at {lab.ome_url}", file=sys.stderr, flush=True)
            await stop.wait()
            log.info("lab stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="failover-monitor lab",
        description="Simulate the outside world of failover-monitor: blade BMCs (Redfish), the profile "
        "manager (VCEM role) and the discovery service (SIM role).",
    )
    parser.add_argument(
        "-c", "--config", help="YAML config file (default: built-in defaults, see lab/API.md)"
    )
    parser.add_argument("--ready-file", help='write {"manager": URL, "pid": N} here once serving')
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a listening socket per BMC: 10,000 BMCs need
    more than the usual soft 1024); returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return int(soft)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config) if args.config else LabConfig()
        if args.ready_file:
            config = config.model_copy(update={"ready_file": args.ready_file})
    except ConfigError as exc:
        print(f"lab: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    limit = raise_fd_limit()
    needed = config.enclosures * 16 + 64
    if 0 <= limit < needed:
        log.warning("the open-files limit (%d) may be too low for %d enclosures (about %d sockets)",
                    limit, config.enclosures, needed)
    try:
        asyncio.run(serve(config))
    except LabStartError as exc:
        print(f"lab: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
