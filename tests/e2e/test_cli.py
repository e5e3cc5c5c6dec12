"""The command line: check-config's FILE:LINE errors, failover/jobs through the API, exit codes, demo."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from lab.main import LabSimulator
from monitor.app.cli import check_config, main
from tests.support.harness import DaemonFactory, monitor_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAILOVER_API_TOKEN", raising=False)
    assert check_config(ROOT / "config" / "monitor.yaml") == ([], [])
    assert check_config(ROOT / "config" / "reference.yaml") == ([], [])


def test_every_error_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "instance: m1\n"
        "http:\n"
        "  listen: nowhere\n"
        "failover:\n"
        "  power_off_timeout: -1\n"
        "  step_timeouts: {teleport: 3}\n"
        "  colour: blue\n"
        "store: ftp://db/x\n"
    )
    assert main(["check-config", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{cfg}:3: http.listen: Value error, expected HOST:PORT, got 'nowhere'" in out
    assert any(line.startswith(f"{cfg}:5: failover.power_off_timeout: ") for line in out)
    assert any(line.startswith(f"{cfg}:6: failover.step_timeouts: ") and "teleport" in line for line in out)
    assert any(line.startswith(f"{cfg}:7: failover.colour: Extra inputs") for line in out)
    assert any(line.startswith(f"{cfg}:8: store: ") for line in out)


def test_yaml_syntax_and_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("instance: m1\nhttp: [\n")
    assert main(["check-config", "-c", str(cfg)]) == 1
    assert capsys.readouterr().out.startswith(f"{cfg}:3: (yaml): ")
    cfg.write_text("a: &x [1, 2]\nb: *x\n")
    assert main(["check-config", "-c", str(cfg)]) == 1
    assert f"{cfg}:2: (yaml): alias *x is not allowed" in capsys.readouterr().out


def test_missing_environment_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("http:\n  token: ${NO_SUCH_TOKEN_VAR}\n")
    assert main(["check-config", "-c", str(cfg)]) == 1
    assert "environment variable NO_SUCH_TOKEN_VAR is not set" in capsys.readouterr().out


def test_token_required_off_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("http:\n  listen: 0.0.0.0:8162\n")
    assert main(["check-config", "-c", str(cfg)]) == 1
    assert "a token is required" in capsys.readouterr().out


def test_inventory_errors_name_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        "domain_groups:\n"
        "  - id: dg1\n"
        "    domains:\n"
        "      - id: vcd1\n"
        "        enclosures:\n"
        "          - id: enc1\n"
        "            servers:\n"
        "              - bay: 17\n"
        "                product: ProLiant BL460c Gen8\n"
        "              - bay: 2\n"
        "                product: Mystery 9\n"
        "              - bay: 3\n"
        "                prodcut: ProLiant BL460c Gen8\n"
        "                bmc: {url: ftp://x, username: a, password: b}\n"
    )
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"inventory:\n  source: static\n  file: {inv}\n")
    assert main(["check-config", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert f"{inv}:8: domain_groups[0].domains[0].enclosures[0].servers[0].bay: " in out
    assert f"{inv}:12: domain_groups[0].domains[0].enclosures[0].servers[2].product: Field required" in out
    assert f"{inv}:13: domain_groups[0].domains[0].enclosures[0].servers[2].prodcut: Extra inputs" in out
    assert f"{inv}:14: domain_groups[0].domains[0].enclosures[0].servers[2].bmc.url: " in out
    inv.write_text(inv.read_text().replace("bay: 17", "bay: 1").replace("prodcut", "product")
                   .replace("ftp://x", "https://x"))
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert f"{inv}:11: domain_groups[0].domains[0].enclosures[0].servers[1].product: warning: " in \
        capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["failover"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["jobs", "--help"])
    assert e.value.code == 0


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_failover_wait_and_jobs(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                      token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    monkeypatch.setenv("FAILOVER_API_TOKEN", token)
    code, out, err = await cli("failover", "enc1-bay1", "--wait", "--reason", "cli", "--api", h.base)
    assert code == 0, err
    assert out.startswith("job 1\n") and "job 1 completed" in out
    assert "power_off_source" in out and "move_profile" in out
    code, out, _ = await cli("jobs", "--api", h.base)
    assert code == 0 and "completed" in out and "enc1-bay1" in out
    code, out, _ = await cli("jobs", "1", "--json", "--api", h.base)
    assert code == 0 and json.loads(out)["trigger"]["reason"] == "cli"
    code, out, err = await cli("failover", "enc9-bay9", "--api", h.base)
    assert code == 1 and "unknown server enc9-bay9" in err
    monkeypatch.setenv("FAILOVER_API_TOKEN", "wrong")
    code, out, err = await cli("failover", "enc1-bay2", "--api", h.base)
    assert code == 1 and "401" in err
    code, out, err = await cli("jobs", "--api", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the monitor" in err


async def test_failed_job_exits_1(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                  token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    monkeypatch.setenv("FAILOVER_API_TOKEN", token)
    async with h.http.post(lab.manager_url + "/lab/v1/faults",
                           json={"fault": "domain_incompatible", "domain": "vcd-enc1"}) as r:
        assert r.status == 200
    code, out, _ = await cli("failover", "enc1-bay1", "--wait", "--api", h.base)
    assert code == 1 and "failed: domain vcd-enc1 is incompatible" in out


@pytest.mark.slow
async def test_demo_runs_to_completion() -> None:
    code, out, err = await cli("demo")
    assert code == 0, out + err
    assert "sends SNMPv2c trap cpqSeCpuUncorrectableError" in out
    assert "decision: failover by rule hpe-cpu-uncorrectable" in out
    assert "profile prof-enc1-bay1 moved enc1-bay1 -> enc1-bay9" in out
    assert "rediscovery done" in out
    assert "Done: job 1 completed" in out


def test_the_example_inventory_and_unknown_products(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped static inventory (with Dell MX blades and enclosure manager addresses) is valid;
    check-config names unknown products with the rule of thumb identification applies."""
    monkeypatch.setenv("BMC_PASSWORD", "example")
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"inventory:\n  source: static\n  file: {ROOT / 'config' / 'inventory.example.yaml'}\n")
    assert check_config(cfg) == ([], [])
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        "domain_groups:\n"
        "  - id: dg1\n"
        "    domains:\n"
        "      - id: vcd1\n"
        "        enclosures:\n"
        "          - id: enc1\n"
        "            management_addresses: [10.0.0.200]\n"
        "            servers:\n"
        "              - {bay: 1, product: PowerEdge R640}\n"
        "              - {bay: 2, product: ProLiant DL380 Gen10}\n"
        "              - {bay: 3, product: PowerEdge MX740c}\n"
    )
    cfg.write_text(f"inventory:\n  source: static\n  file: {inv}\n")
    assert main(["check-config", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert (f"{inv}:9: domain_groups[0].domains[0].enclosures[0].servers[0].product: warning: product "
            "'PowerEdge R640' is not identified: a PowerEdge is a blade only as M<3 digits> or MX<3 "
            "digits>c") in out
    assert "'ProLiant DL380 Gen10' is not identified: a ProLiant is a blade only as BL<3 digits>c" in out
    assert "servers[2]" not in out and out.count("(a failover of it exits at check_product)") == 2
