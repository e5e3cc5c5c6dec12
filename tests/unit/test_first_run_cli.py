"""What a new user meets first: check-config names the file it read (or says there is none), warns about
traps that would all be dropped and listeners open to anyone; unset environment variables are reported
at their own line, once per name; a missing inventory file names `inventory.file`; `run` without a config
says which defaults and store it uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_check_config_names_the_file_and_the_shipped_one_is_quiet(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAILOVER_API_TOKEN", "FAILOVER_SNMP_COMMUNITY", "FAILOVER_EVENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    cfg = ROOT / "config" / "monitor.yaml"
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK: config {cfg}"]


def test_check_config_without_a_config_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("no config file (config/monitor.yaml does not exist here and -c was not given)")
    assert f"SQLite store {tmp_path / 'failover-monitor.db'}" in out[0]
    assert out[-1] == "OK: the built-in defaults (no config file)"


def test_warnings_for_dropped_traps_and_open_listeners(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text(
        "http:\n"
        "  listen: 0.0.0.0:8162\n"
        "  token: t0k3n\n"
        "snmp:\n"
        "  listen: 0.0.0.0:1162\n"
        "redfish_events:\n"
        "  destination: http://192.0.2.1:8162/api/v1/events/redfish\n"
        "  secret: s3cr3t\n")
    assert main(["check-config", "-c", str(cfg)]) == 0  # warnings, not errors
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"OK: config {cfg}, 3 warning(s)"
    assert any(ln.startswith(f"{cfg}:4: snmp.communities: warning: v1/v2c traps are accepted but no "
                             "community") for ln in out), out
    assert any(ln.startswith(f"{cfg}:5: snmp.listen: warning: 0.0.0.0:1162 is outside loopback and "
                             "snmp.allowed_senders is empty") for ln in out), out
    assert any(ln.startswith(f"{cfg}:2: redfish_events.allowed_senders: warning:") for ln in out), out
    cfg.write_text(
        "snmp:\n"
        "  listen: 0.0.0.0:1162\n"
        "  communities: [c]\n"
        "  allowed_senders: [10.0.0.0/8]\n")
    capsys.readouterr()
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK: config {cfg}"]
    cfg.write_text("snmp:\n  listen: 127.0.0.1:1162\n  v1_v2c: false\n")
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK: config {cfg}"]


def test_unset_variables_at_their_line_once_each(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_A", raising=False)
    monkeypatch.delenv("NO_SUCH_B", raising=False)
    cfg = tmp_path / "m.yaml"
    cfg.write_text(
        "# ${NO_SUCH_B} in a comment is not a use\n"
        "http:\n"
        "  token: ${NO_SUCH_A}\n"
        "snmp:\n"
        "  communities: [\"${NO_SUCH_B}\", \"${NO_SUCH_A}\", \"${NO_SUCH_B}\"]\n")
    assert main(["check-config", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out.splitlines()
    env = [ln for ln in out if "(env)" in ln]
    assert env == [f"{cfg}:3: (env): environment variable NO_SUCH_A is not set",
                   f"{cfg}:5: (env): environment variable NO_SUCH_B is not set"]


def test_missing_inventory_file_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("inventory:\n  source: static\n  file: nowhere.yaml\n"
                   "failover:\n  fencing: {levels: [bmc]}\n")
    assert main(["check-config", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'nowhere.yaml'}:1: inventory.file: no such file" in out


def test_run_without_a_config_says_which_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.app import cli
    from monitor.core.config import LoadedConfig

    seen: list[LoadedConfig] = []

    async def fake_run(loaded: LoadedConfig) -> int:  # the note is printed before the daemon starts
        seen.append(loaded)
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_run_daemon", fake_run)
    assert main(["run"]) == 0
    err = capsys.readouterr().err
    assert "no config file" in err and "using the built-in defaults" in err
    assert f"SQLite store {tmp_path / 'failover-monitor.db'}" in err and seen[0].path is None


def test_the_store_named_at_start_never_shows_a_password() -> None:
    from monitor.app.cli import _store_display
    from monitor.core.config import LoadedConfig, MonitorConfig

    pg = LoadedConfig(MonitorConfig(store="postgresql://mon:pa55word@db:5432/failover"), None)
    assert _store_display(pg) == "postgresql://mon:***@db:5432/failover"
