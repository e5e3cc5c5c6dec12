"""Packaging: the systemd unit (systemd-analyze verify), the daemon's sd_notify READY/WATCHDOG/STOPPING
to a NOTIFY_SOCKET the test binds, JSON logs, the container recipe, bash completion, --version."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.app.cli import main, parser
from monitor.app.completion import bash_completion
from tests.peers.processes import DaemonProcess
from tests.support.net import reserve_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "failover-monitor.service"


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_verifies_and_asks_for_what_the_daemon_does(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (./dev test installs it)"
    s = _unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) > 0 and s["User"] == ["failover"]
    assert s["StateDirectory"] == ["failover-monitor"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                      "RestrictAddressFamilies", "SystemCallFilter", "LockPersonality"):
        assert hardening in s, hardening
    # The unit as shipped, with ExecStart pointing at this checkout's installed entry point (verify
    # checks that the binary exists and is executable).
    exe = Path(sys.executable).with_name("failover-monitor")
    assert exe.exists(), exe
    unit = tmp_path / "failover-monitor.service"
    unit.write_text(UNIT.read_text().replace("/opt/failover-monitor/bin/failover-monitor", str(exe)))
    r = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    # verify exits 0 on unknown keys and bad values too: they are warnings on stderr.
    noise = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 0 and noise == [], r.stderr


def _static_config(tmp: Path) -> Path:
    inv = tmp / "inventory.yaml"
    bmc = {"url": "https://127.0.0.1:9", "username": "u", "password": "p"}
    server = {"bay": 1, "product": "ProLiant BL460c Gen8", "profile": "p1", "bmc": bmc}
    inv.write_text(yaml.safe_dump({"domain_groups": [{"id": "dg1", "domains": [
        {"id": "vcd1", "enclosures": [{"id": "enc1", "servers": [server]}]}]}]}))
    cfg = tmp / "monitor.yaml"
    cfg.write_text(yaml.safe_dump({
        "instance": "notify", "http": {"listen": f"127.0.0.1:{reserve_port()}"}, "store": "m.db",
        "inventory": {"source": "static", "file": "inventory.yaml"},
        "redfish_events": {"poll_interval": 0}, "cluster": {"lease": 4, "heartbeat": 1, "fence_grace": 2},
        "failover": {"fencing": {"levels": ["bmc"]}},
    }))
    return cfg


@pytest.mark.slow
async def test_the_daemon_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(_static_config(tmp_path), log, env={
        "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000", "JOURNAL_STREAM": ""})
    loop = asyncio.get_running_loop()

    async def next_message() -> str:
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)
        return data.decode()

    try:
        first = await next_message()
        assert first.splitlines()[0] == "READY=1", first
        assert "STATUS=monitor notify serving" in first
        pings = [await next_message() for _ in range(3)]
        assert pings == ["WATCHDOG=1\n"] * 3, daemon.tail()
        daemon.p.send_signal(signal.SIGTERM)
        while (msg := await next_message()) == "WATCHDOG=1\n":
            pass
        assert msg == "STOPPING=1\n"
        assert await asyncio.to_thread(daemon.p.wait, 30) == 0, daemon.tail()
    finally:
        daemon.kill()
        sock.close()


def _run_with_log_format(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> list[str]:
    """Start `run` with a config that fails at once (its port taken), return the stderr lines."""
    cfg = _static_config(tmp)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        text = cfg.read_text()
        cfg.write_text(yaml.safe_dump({**yaml.safe_load(text),
                                       "http": {"listen": f"127.0.0.1:{taken.getsockname()[1]}"}}))
        r = subprocess.run([sys.executable, "-m", "monitor", "run", "-c", str(cfg), *extra],
                           capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert r.returncode == 1
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def test_json_logs(tmp_path: Path) -> None:
    lines = _run_with_log_format(tmp_path, "--log-format", "json")
    records = [json.loads(ln) for ln in lines if ln.startswith("{")]
    assert records and {"time", "level", "logger", "message"} <= set(records[0])
    assert any("config " in r["message"] for r in records)


def test_no_timestamps_under_journald(tmp_path: Path) -> None:
    from monitor.app.logfmt import formatter

    out = tmp_path / "stream"
    with out.open("w") as f:
        st = os.fstat(f.fileno())
        journal = formatter("text", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        plain = formatter("text", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    import logging

    record = logging.LogRecord("monitor", logging.INFO, __file__, 1, "hello", None, None)
    assert journal.format(record) == "INFO monitor: hello"
    text = plain.format(record)
    assert text.endswith(" INFO monitor: hello") and text[:4].isdigit()  # the timestamp first


def test_containerfile_runs_as_a_user_with_an_entrypoint() -> None:
    text = (ROOT / "Containerfile").read_text()
    instructions: list[tuple[str, str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    stages = [i for i, (w, _) in enumerate(instructions) if w == "FROM"]
    final = instructions[stages[-1]:]
    users = [rest for w, rest in final if w == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    assert [w for w, _ in final].index("USER") < [w for w, _ in final].index("ENTRYPOINT")
    entry = json.loads(next(rest for w, rest in final if w == "ENTRYPOINT"))
    assert entry == ["failover-monitor"]
    cmd = json.loads(next(rest for w, rest in final if w == "CMD"))
    assert cmd[0] == "run" and "-c" in cmd
    assert any(w == "EXPOSE" and "1162/udp" in rest for w, rest in final)  # no port below 1024 as non-root


def test_bash_completion_from_the_parser(tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    script.write_text(bash_completion(parser()))

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        run = (f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _failover_monitor; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
        r = subprocess.run(["bash", "-c", run],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("failover-monitor", "ja") == []
    assert complete("failover-monitor", "jo") == ["jobs"]
    assert set(complete("failover-monitor", "jobs", "--s")) == {"--state", "--server"}
    assert complete("failover-monitor", "jobs", "--state", "c") == ["completed"]
    assert complete("failover-monitor", "lab", "fault", "enc1-bay3", "cpu-u") == ["cpu-uncorrectable"]
    assert complete("failover-monitor", "run", "--log-format", "") == ["text", "json"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("failover-monitor ") and out.split()[1][0].isdigit()
