"""OpenIPMI's `ipmi_sim` (Debian package `openipmi`) as a real IPMI-over-LAN peer.

    async with start_ipmi_sim(tmp_path, username="fence", password="s3cret") as bmc:   # 127.0.0.1
        bmc.port                 # the UDP port ipmi_sim bound (it takes port 0: read from /proc)
        bmc.power()              # "on" / "off": the chassis power ipmi_sim reports
        bmc.pause(); bmc.resume()  # SIGSTOP / SIGCONT: a BMC that answers nothing
        await bmc.stop()

ipmi_sim keeps no power state of its own without a VM: its `chassis_control` program is asked for it
(`PROG DEV get power` prints `power:0|1`; `PROG DEV set power 0|1`). The one written here keeps the state
in a file of the test's folder and is tied to nothing else. The LAN channel listens on 127.0.0.1 port 0
(ipmi_sim accepts it and binds a free port, which is read from /proc/PID/fd and /proc/net/udp, so no
port is picked ahead and released); readiness is an RMCP/ASF presence ping answered by a pong.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

IPMI_SIM = shutil.which("ipmi_sim") or "/usr/bin/ipmi_sim"
START_DEADLINE = 10.0
STOP_DEADLINE = 5.0

_CHASSIS = """#!/bin/sh
# ipmi_sim chassis_control program: PROG DEVICE get PARM... | PROG DEVICE set PARM VALUE ...
state="$(dirname "$0")/power.state"
shift
op=$1
shift
case $op in
  get)
    for parm in "$@"; do
      case $parm in
        power) echo "power:$(cat "$state")" ;;
        boot) echo "boot:default" ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
      esac
    done ;;
  set)
    while [ $# -gt 0 ]; do
      parm=$1; val=$2; shift 2
      case $parm in
        power) echo "$val" > "$state" ;;
        reset|boot|identify) ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
      esac
    done ;;
  *) exit 1 ;;
esac
"""

_EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
"""

_PING = bytes([0x06, 0x00, 0xFF, 0x06]) + struct.pack(">IBBBB", 4542, 0x80, 0x01, 0x00, 0x00)
"""RMCP header (version 6, class ASF) + ASF presence ping (IANA 4542, type 0x80, tag 1)."""


@dataclass(slots=True)
class IpmiSim:
    directory: Path
    username: str
    password: str = field(repr=False)
    port: int = 0
    _proc: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def state_file(self) -> Path:
        return self.directory / "power.state"

    @property
    def log_file(self) -> Path:
        return self.directory / "ipmi_sim.log"

    def power(self) -> str:
        return "on" if self.state_file.read_text().strip() == "1" else "off"

    def set_power(self, on: bool) -> None:
        self.state_file.write_text("1\n" if on else "0\n")

    def tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _write(self, power_on: bool) -> tuple[Path, Path]:
        script = self.directory / "chassis_control.sh"
        script.write_text(_CHASSIS)
        script.chmod(0o755)
        self.set_power(power_on)
        lan = self.directory / "lan.conf"
        lan.write_text("\n".join([
            'name "fence-test"',
            "set_working_mc 0x20",
            "  startlan 1",
            "    addr 127.0.0.1 0",
            "    priv_limit admin",
            "    allowed_auths_callback md5",
            "    allowed_auths_user md5",
            "    allowed_auths_operator md5",
            "    allowed_auths_admin md5",
            "    guid a123456789abcdefa123456789abcdef",
            "  endlan",
            f'  chassis_control "{script} 0x20"',
            f'  user 2 true "{self.username}" "{self.password}" admin 10 md5',
            "",
        ]))
        emu = self.directory / "sim.emu"
        emu.write_text(_EMU)
        (self.directory / "state").mkdir(exist_ok=True)
        return lan, emu

    async def start(self, *, power_on: bool = True) -> None:
        if not os.path.exists(IPMI_SIM):
            raise RuntimeError("ipmi_sim is not installed: apt-get install -y openipmi")
        lan, emu = self._write(power_on)
        with self.log_file.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                IPMI_SIM, "-c", str(lan), "-f", str(emu), "-s", str(self.directory / "state"), "-n",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE
        while True:  # poll with a deadline: the port it bound, then a pong
            if self._proc.returncode is not None:
                raise RuntimeError(f"ipmi_sim exited at start ({self._proc.returncode}):\n{self.tail()}")
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError(f"ipmi_sim did not answer within {START_DEADLINE:g} s:\n{self.tail()}")
            port = _udp_port(self._proc.pid)
            if port is not None and await _pong(port):
                self.port = port
                return
            await asyncio.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP: nothing is answered (a hung BMC)."""
        assert self._proc is not None and self._proc.returncode is None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None and self._proc.returncode is None
        self._proc.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_DEADLINE)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _udp_port(pid: int) -> int | None:
    """The UDP port on 127.0.0.1 that process `pid` has bound (None: not yet)."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        local, inode = cols[1], cols[9]
        address, port = local.split(":")
        if inode in inodes and address == "0100007F":  # 127.0.0.1, little-endian hex
            return int(port, 16)
    return None


class _Pong(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answered = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(data) >= 9 and data[8] == 0x40:  # ASF presence pong
            self.answered.set()


async def _pong(port: int) -> bool:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Pong, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(_PING)
        try:
            await asyncio.wait_for(protocol.answered.wait(), 0.3)
            return True
        except TimeoutError:
            return False
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def start_ipmi_sim(tmp_path: Path, *, username: str = "fence", password: str = "fence-password",
                         power_on: bool = True) -> AsyncIterator[IpmiSim]:
    directory = tmp_path / "ipmi_sim"
    directory.mkdir(parents=True, exist_ok=True)
    sim = IpmiSim(directory, username, password)
    await sim.start(power_on=power_on)
    try:
        yield sim
    finally:
        await sim.stop()


__all__ = ["IpmiSim", "start_ipmi_sim"]
