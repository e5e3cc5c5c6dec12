"""The `failover-monitor` command line. Exit status: 0 success, 1 a reported failure, 2 usage error."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from monitor.app.client import api_base, api_call, api_token, follow_job, format_job
from monitor.core.config import DEFAULT_CONFIG, LoadedConfig, load_config
from monitor.core.errors import ApiError, ConfigError

log = logging.getLogger("monitor")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, default=None,
                   help=f"config file (default: {DEFAULT_CONFIG} when it exists, else built-in defaults)")


def _api_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--api", default=None, help="the monitor's API URL (default: from http.listen)")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("failover-monitor")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="failover-monitor", description=__doc__)
    top.add_argument("--version", action="version", version=f"failover-monitor {version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    _config_arg(p)
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="log lines as text (no timestamps under journald) or JSON objects "
                        "(default: log_format from the config, text)")

    p = sub.add_parser("check-config", help="validate the config and inventory; print FILE:LINE errors")
    _config_arg(p)

    p = sub.add_parser("failover", help="start a manual failover through the API")
    p.add_argument("server")
    p.add_argument("--reason", default="manual failover from the command line")
    p.add_argument("--wait", action="store_true", help="follow the job to its end (exit 1 if it failed)")
    _api_args(p)

    p = sub.add_parser("jobs", help="list jobs, or show one with its steps")
    p.add_argument("job", nargs="?", type=int)
    p.add_argument("--state", choices=["queued", "running", "completed", "failed"], default=None,
                   help="only jobs in this state")
    p.add_argument("--server", default=None, help="only jobs of this source server")
    p.add_argument("--limit", type=int, default=None, help="at most this many (newest first)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _api_args(p)

    p = sub.add_parser("rules", help="rule tools")
    rsub = p.add_subparsers(dest="rules_command", required=True, metavar="RULES_COMMAND")
    e = rsub.add_parser("explain", help="run recorded events (JSON) through the rules without acting")
    e.add_argument("event_file", type=Path, help="a JSON event, or a list of events evaluated in order")
    e.add_argument("--json", action="store_true", help="print the decisions as JSON")
    e.add_argument("--all", action="store_true", help="list every rule that did not match")
    e.add_argument("--live", action="store_true",
                   help="ask the running monitor (its API): its pause, silences, cooldowns, rate-limit and "
                        "storm windows, and the confirmation read from the BMC; nothing is acted on")
    _api_args(e)

    p = sub.add_parser("pause", help="pause automatic failover everywhere (decisions alert instead)")
    p.add_argument("reason")
    _api_args(p)
    p = sub.add_parser("resume", help="resume automatic failover")
    _api_args(p)

    _maintenance_parsers(sub)
    _operator_parsers(sub)

    p = sub.add_parser("db", help="store maintenance")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    u = dsub.add_parser("upgrade", help="apply the store's schema migrations; print the version before/after")
    _config_arg(u)

    p = sub.add_parser("lab", help="run the lab simulator (virtual enclosures, BMCs, manager); "
                                   "`lab fault` raises a hardware fault in a running lab")
    p.add_argument("-c", "--config", type=Path, default=None, help="lab config (default: built-in)")
    p.add_argument("--ready-file", type=Path, default=None)
    lsub = p.add_subparsers(dest="lab_command", required=False, metavar="LAB_COMMAND")
    f = lsub.add_parser("fault", help="a hardware fault on a blade: its iLO sends its SNMP trap and its "
                                      "Redfish event, as a real one would")
    f.add_argument("server", help="the blade, e.g. enc1-bay3")
    f.add_argument("kind", choices=sorted(HARDWARE_FAULT_KINDS), help="the fault")
    f.add_argument("--lab", default=None, dest="lab_url",
                   help="the lab's manager/control URL (default: $LAB_URL, else http://127.0.0.1:8163)")

    p = sub.add_parser("completion", help="print a shell completion script (bash)")
    p.add_argument("shell", choices=["bash"])

    p = sub.add_parser("demo", help="start the lab and the daemon, fail over a blade, show every step")
    p.add_argument("--server", default="enc1-bay1", help="the production blade to fail over")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return top


def _maintenance_parsers(sub: Any) -> None:
    """silence add|list|expire, guards [reset], spare, failback (monitor/pipeline/maintenance.py and
    monitor/jobs/service.py behind the API)."""
    p = sub.add_parser("silence", help="maintenance silences (a silenced server's failover only alerts)")
    ssub = p.add_subparsers(dest="silence_command", required=True, metavar="SILENCE_COMMAND")
    a = ssub.add_parser("add", help="silence a server, domain group or enclosure")
    what = a.add_mutually_exclusive_group(required=True)
    what.add_argument("--server")
    what.add_argument("--group", help="a domain group")
    what.add_argument("--enclosure")
    a.add_argument("--author", default=None, help="who (default: the login name)")
    a.add_argument("--comment", default="")
    a.add_argument("--starts", default=None, help="ISO time with a zone (default: now)")
    until = a.add_mutually_exclusive_group(required=True)
    until.add_argument("--duration", help="how long: 30m, 2h, 1d")
    until.add_argument("--ends", help="ISO time with a zone")
    _api_args(a)
    ls = ssub.add_parser("list", help="the silences in force or pending")
    ls.add_argument("--all", action="store_true", help="expired ones too")
    ls.add_argument("--json", action="store_true")
    _api_args(ls)
    e = ssub.add_parser("expire", help="end a silence now")
    e.add_argument("silence", type=int)
    e.add_argument("--author", default=None, help="who (default: the login name)")
    _api_args(e)

    p = sub.add_parser("guards", help="the guards' state (cooldowns, rate limits, declines); reset it")
    p.add_argument("--json", action="store_true")
    _api_args(p)
    gsub = p.add_subparsers(dest="guards_command", required=False, metavar="GUARDS_COMMAND")
    r = gsub.add_parser("reset", help="forget a server's cooldown or a group's rate-limit window")
    one = r.add_mutually_exclusive_group(required=True)
    one.add_argument("--server")
    one.add_argument("--group")
    r.add_argument("--author", required=True)
    _api_args(r)

    p = sub.add_parser("spare", help="return to service: designate a repaired blade a spare again "
                                     "(read Off and healthy at its BMC first)")
    p.add_argument("server")
    p.add_argument("--author", default=None, help="who (default: the login name)")
    p.add_argument("--comment", default="")
    _api_args(p)

    p = sub.add_parser("failback", help="move a completed job's profile back to its original server "
                                        "(a new job, same flow and fencing)")
    p.add_argument("job", type=int)
    p.add_argument("--author", default=None, help="who (default: the login name)")
    p.add_argument("--reason", default="")
    p.add_argument("--allow-non-spare", action="store_true",
                   help="the original server need not be a designated spare (every other check stays)")
    p.add_argument("--wait", action="store_true", help="follow the job to its end (exit 1 if it failed)")
    _api_args(p)


def _author(args: argparse.Namespace) -> str:
    import getpass

    return str(args.author or getpass.getuser())


def _refused(status: int, data: Any) -> int:
    message = data.get("error", data) if isinstance(data, dict) else data
    print(f"failover-monitor: {message} (HTTP {status})", file=sys.stderr)
    return 1


def _print_silence(s: dict[str, Any]) -> None:
    print(f"{s['id']:>5}  {s['state']:<8} {s['kind']:<9} {s['target']:<14} {s['starts']} .. {s['ends']}  "
          f"{s['author']}: {s['comment']}")


async def _silence(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    base, token = api_base(loaded, args.api), api_token(loaded)
    if args.silence_command == "add":
        kind, target = next((k, v) for k, v in (("server", args.server), ("group", args.group),
                                                ("enclosure", args.enclosure)) if v)
        body: dict[str, Any] = {"kind": kind, "target": target, "author": _author(args),
                                "comment": args.comment}
        for key in ("starts", "ends", "duration"):
            if getattr(args, key):
                body[key] = getattr(args, key)
        status, data = await api_call(base, "POST", "/api/v1/silences", token=token, body=body)
        if status != 201:
            return _refused(status, data)
        print(f"silence {data['id']}: {kind} {target} until {data['ends']}")
        return 0
    if args.silence_command == "expire":
        status, data = await api_call(base, "DELETE", f"/api/v1/silences/{args.silence}", token=token,
                                      body={"author": _author(args)})
        if status != 200:
            return _refused(status, data)
        print(f"silence {data['id']} expired ({data['ends']})")
        return 0
    status, data = await api_call(base, "GET", "/api/v1/silences" + ("?all=1" if args.all else ""),
                                  token=token)
    if status != 200:
        return _refused(status, data)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'ID':>5}  {'STATE':<8} {'KIND':<9} {'TARGET':<14} STARTS .. ENDS  AUTHOR: COMMENT")
    for s in data:
        _print_silence(s)
    return 0


async def _guards(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    base, token = api_base(loaded, args.api), api_token(loaded)
    if args.guards_command == "reset":
        status, data = await api_call(base, "POST", "/api/v1/guards/reset", token=token,
                                      body={"server": args.server, "group": args.group,
                                            "author": args.author})
        if status != 200:
            return _refused(status, data)
        print(f"reset by {data['author']}: " + ", ".join(f"{k}={v}" for k, v in data["reset"].items()))
        return 0
    status, data = await api_call(base, "GET", "/api/v1/guards", token=token)
    if status != 200:
        return _refused(status, data)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"paused: {data['paused'] or 'no'}")
    print("cooldowns:" + ("" if data["cooldowns"] else " none"))
    for c in data["cooldowns"]:
        print(f"  {c['server']:<14} last failover {c['last_failover']}, {c['remaining']:g} s left")
    print("rate limits:" + ("" if data["rate_limits"] else " none"))
    for r in data["rate_limits"]:
        print(f"  {r['group']:<14} {r['failovers']}/{r['max']} within {r['window']:g} s"
              + (f" (LIMITED, next slot in {r['next_slot_in']:g} s)" if r["limited"] else ""))
    print("open declines:" + ("" if data["declined"] else " none"))
    for d in data["declined"]:
        print(f"  {d['server']:<14} {d['rule']} until {d['until']}: {d['reason']}")
    return 0


async def _spare(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    base, token = api_base(loaded, args.api), api_token(loaded)
    status, data = await api_call(base, "POST", f"/api/v1/servers/{args.server}/spare", token=token,
                                  body={"author": _author(args), "comment": args.comment})
    if status != 200:
        return _refused(status, data)
    print(f"{data['server']} is a spare of {data['group']} again (BMC: {data['power']}, {data['health']})")
    return 0


async def _failback(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    base, token = api_base(loaded, args.api), api_token(loaded)
    status, data = await api_call(base, "POST", "/api/v1/failbacks", token=token,
                                  body={"job": args.job, "author": _author(args), "reason": args.reason,
                                        "allow_non_spare": args.allow_non_spare})
    if status != 202:
        return _refused(status, data)
    print(f"job {data['job']}: failback of job {args.job}, {data['source']} -> {data['target']}")
    if not args.wait:
        return 0
    job = await follow_job(base, int(data["job"]), token=token)
    print(f"job {job['job']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
    return 0 if job["state"] == "completed" else 1


# The kinds `failover-monitor lab fault` offers (lab/traps.py HARDWARE_FAULTS; the lab checks them too).
HARDWARE_FAULT_KINDS = ("cpu-uncorrectable", "cpu-failed")


def _config_path(path: Path | None) -> Path | None:
    if path is None and DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    return path


def _load(path: Path | None) -> LoadedConfig:
    return load_config(_config_path(path))


def _store_display(loaded: LoadedConfig) -> str:
    """The store for messages: a SQLite path, or a PostgreSQL URL without its password."""
    store = loaded.config.store
    if store.startswith(("postgresql://", "postgres://")):
        from monitor.store.postgres import redact

        return redact(store)
    return f"SQLite {loaded.store_path}"


def no_config_note(loaded: LoadedConfig) -> str:
    return (f"no config file ({DEFAULT_CONFIG} does not exist here and -c was not given): using the "
            f"built-in defaults (API on {loaded.config.http.listen}, inventory from the lab at "
            f"{loaded.config.inventory.lab.url}, no SNMP listener), SQLite store {loaded.store_path}")


# --- run ---------------------------------------------------------------------------------------


async def _run_daemon(loaded: LoadedConfig) -> int:
    from monitor.app.daemon import Daemon
    from monitor.app.sdnotify import Notifier, notify_systemd, watchdog_interval
    from monitor.core.errors import StartupError

    daemon = Daemon(loaded)
    stop = asyncio.Event()
    finished = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)

    async def serve() -> int:
        try:
            await daemon.run(stop)
        except StartupError as exc:
            print(f"failover-monitor: {exc}", file=sys.stderr)
            return 1
        finally:
            finished.set()
        return 0

    notifier = Notifier.from_env()
    async with asyncio.TaskGroup() as tg:
        main_task = tg.create_task(serve(), name="daemon")
        if notifier is not None:
            tg.create_task(notify_systemd(notifier, daemon.clock, daemon.ready, finished, watchdog_interval(),
                                          status=f"monitor {loaded.instance} serving"), name="sd-notify")
    return main_task.result()


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.app.logfmt import setup_logging

    loaded = _load(args.config)
    setup_logging(loaded.config.log_level, args.log_format or loaded.config.log_format)
    if loaded.path is None:
        log.warning("%s", no_config_note(loaded))
    else:
        log.info("config %s, store %s", loaded.path, _store_display(loaded))
    return asyncio.run(_run_daemon(loaded))


# --- check-config -------------------------------------------------------------------------------


def check_config(path: Path | None) -> tuple[list[str], list[str]]:
    """Every problem (and warning) in the config and the files it names, as FILE:LINE: field: message."""
    try:
        loaded = _load(path)
    except ConfigError as exc:
        return [str(i) for i in exc.issues], []
    problems: list[str] = []
    warnings: list[str] = [str(w) for w in config_warnings(loaded)]
    from rules.loader import load_policy

    rules_cfg = loaded.config.rules
    try:
        load_policy([loaded.resolve(f) for f in rules_cfg.files], builtin=rules_cfg.builtin,
                    packs=rules_cfg.packs)
    except ConfigError as exc:
        problems.extend(str(i) for i in exc.issues)
    inv = loaded.inventory_file
    if loaded.config.inventory.source == "static" and inv is not None:
        from monitor.core.inventory_file import check_inventory_file

        try:
            _, found = check_inventory_file(inv)
            warnings.extend(str(w) for w in found)
        except ConfigError as exc:
            problems.extend(str(i) for i in exc.issues)
    return problems, warnings


def config_warnings(loaded: LoadedConfig) -> list[str]:
    """What is valid but probably not meant: traps that would all be dropped, listeners open to anyone."""
    import ipaddress

    from monitor.core.config import parse_listen

    cfg = loaded.config
    where = str(loaded.path) if loaded.path else "(defaults)"
    line = _line_finder(loaded.path)
    out: list[str] = []

    def open_to_all(listen: str) -> bool:
        host = parse_listen(listen)[0].strip("[]")
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host != "localhost"

    snmp = cfg.snmp
    if snmp.listen is not None:
        if snmp.v1_v2c and not snmp.communities:
            out.append(f"{where}:{line('communities', 'snmp')}: snmp.communities: warning: v1/v2c traps are "
                       "accepted but no community is configured, so every v1/v2c trap is dropped "
                       "(bad_community); list the senders' communities, or set snmp.v1_v2c: false")
        if open_to_all(snmp.listen) and not snmp.allowed_senders:
            out.append(f"{where}:{line('listen', 'snmp')}: snmp.listen: warning: {snmp.listen} is outside "
                       "loopback and snmp.allowed_senders is empty: traps from any address are accepted")
    events = cfg.redfish_events
    if events.destination and open_to_all(cfg.http.listen) and not events.allowed_senders:
        out.append(f"{where}:{line('listen', 'http')}: redfish_events.allowed_senders: warning: the Redfish "
                   f"event listener on {cfg.http.listen} is outside loopback and accepts pushes from any "
                   "address (each BMC still needs its token)")
    return out


def _line_finder(path: Path | None) -> Any:
    """line(key, section): the 1-based line of `key:` inside top-level `section:` (1 when not found)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path else []
    except OSError:
        lines = []

    def line(key: str, section: str) -> int:
        inside = False
        for n, text in enumerate(lines, start=1):
            if text and not text[0].isspace() and not text.startswith("#"):
                inside = text.split(":", 1)[0].strip() == section
                continue
            if inside and text.strip().startswith(f"{key}:"):
                return n
        for n, text in enumerate(lines, start=1):
            if text.split(":", 1)[0].strip() == section:
                return n
        return 1

    return line


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    if path is None:
        print(no_config_note(load_config(None)))
    problems, warnings = check_config(args.config)
    for w in warnings:
        print(w)
    for p in problems:
        print(p)
    what = f"config {path}" if path is not None else "the built-in defaults (no config file)"
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {what}", file=sys.stderr)
        return 1
    print(f"OK: {what}" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0


# --- API clients --------------------------------------------------------------------------------


async def _failover(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    base, token = api_base(loaded, args.api), api_token(loaded)
    status, data = await api_call(base, "POST", "/api/v1/failovers", token=token,
                                  body={"server": args.server, "reason": args.reason})
    if status != 202:
        print(f"failover-monitor: {data.get('error', data)} (HTTP {status})", file=sys.stderr)
        return 1
    print(f"job {data['job']}")
    if not args.wait:
        return 0
    job = await follow_job(base, int(data["job"]), token=token)
    print(f"job {job['job']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
    return 0 if job["state"] == "completed" else 1


async def _jobs(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    base, token = api_base(loaded, args.api), api_token(loaded)
    if args.job is not None:
        path = f"/api/v1/jobs/{args.job}"
    else:
        from urllib.parse import urlencode

        query = {k: v for k, v in (("state", args.state), ("server", args.server), ("limit", args.limit))
                 if v is not None}
        path = "/api/v1/jobs" + (f"?{urlencode(query)}" if query else "")
    status, data = await api_call(base, "GET", path, token=token)
    if status != 200:
        print(f"failover-monitor: {data.get('error', data)} (HTTP {status})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.job is not None:
        print(format_job(data))
    elif not data:
        print("no jobs" + (" matching" if args.state or args.server else ""))
    else:
        print(f"{'JOB':>6}  {'STATE':<10} {'SERVER':<14}    {'SPARE':<14} {'CREATED':<25} ERROR")
        for j in data:
            print(f"{j['job']:>6}  {j['state']:<10} {j['server']:<14} -> {j.get('spare') or '-':<14} "
                  f"{j['created']:<25} {j.get('error') or ''}".rstrip())
    return 0


async def _load_inventory(loaded: LoadedConfig) -> tuple[Any, str]:
    """The inventory for explanations: the static file, or the lab's manager API (5 s at most)."""
    cfg = loaded.config.inventory
    if cfg.source == "static" and loaded.inventory_file is not None:
        from monitor.core.inventory_file import load_inventory_file

        return load_inventory_file(loaded.inventory_file), f"inventory file {loaded.inventory_file}"
    from adapters.lab_manager import LabClient, LabManager
    from monitor.core.errors import AdapterError

    manager = LabManager(LabClient(cfg.lab.url, timeout=5.0,
                                   token=cfg.lab.token.get_secret_value() if cfg.lab.token else None))
    try:
        return await manager.inventory(), f"inventory from {cfg.lab.url}"
    except AdapterError as exc:
        return None, f"no inventory ({exc}): servers are not resolved"
    finally:
        await manager.close()


def _print_explained(n: int, d: dict[str, Any], show_all: bool) -> None:
    event = d.get("event", {})
    what = event.get("trap_oid") or event.get("message_id") or event.get("health") or "event"
    print(f"\nevent {n}: {event.get('source')} {what} from {event.get('sender') or '?'} -> "
          f"server {d.get('server') or 'unknown'} ({d.get('resolved_by')})")
    for m in d.get("matched", []):
        print(f"  matched      {m['rule']} ({m['action']}){': ' + m['note'] if m.get('note') else ''}")
    near = d.get("near_misses", [])
    shown = near if show_all else near[:10]
    for m in shown:
        print(f"  not matched  {m['rule']}: {m['why']}")
    if len(near) > len(shown):
        print(f"  ... and {len(near) - len(shown)} more (--all lists them)")
    for note in d.get("notes", []):
        print(f"  note: {note}")
    conf = d.get("confirmation")
    if conf:
        if "verdict" in conf:
            print(f"  confirmation: {conf['verdict']}: {conf['reason']}")
        else:
            print(f"  confirmation: {conf['requirement']}")
    verdict = f"{d['action']}" + (f" by {d['rule']}" if d.get("rule") else " (no rule fired)")
    print(f"  decision: {verdict}" + (f"; guard: {d['guard']}" if d.get("guard") else ""))


def _explain(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from monitor.api import EventBatch
    from monitor.core.clock import SystemClock
    from monitor.pipeline import confirmation
    from monitor.pipeline.pipeline import explain_mode
    from monitor.pipeline.resolve import Resolver
    from rules.engine import Decider
    from rules.loader import load_policy

    loaded = _load(args.config)
    try:
        raw = args.event_file.read_bytes()
        batch = EventBatch.model_validate_json(raw)
    except OSError as exc:
        print(f"{args.event_file}: {exc.strerror}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(f"{args.event_file}:1: {where}: {err['msg']}", file=sys.stderr)
        return 1
    items = batch.root if isinstance(batch.root, list) else [batch.root]
    out: list[dict[str, Any]] = []
    if args.live:
        base, token = api_base(loaded, args.api), api_token(loaded)
        body = [i.event for i in items]
        status, data = asyncio.run(api_call(base, "POST", "/api/v1/rules/explain?mode=live", token=token,
                                            body=body, timeout=60.0))
        if status != 200 or not isinstance(data, list):
            error = data.get("error", data) if isinstance(data, dict) else data
            print(f"failover-monitor: {error} (HTTP {status})", file=sys.stderr)
            return 1
        out = list(data)
        header = f"the monitor at {base}"
        mode = explain_mode(True)
    else:
        rules_cfg = loaded.config.rules
        policy = load_policy([loaded.resolve(f) for f in rules_cfg.files], builtin=rules_cfg.builtin,
                             packs=rules_cfg.packs)
        inventory, where_from = asyncio.run(_load_inventory(loaded))
        resolver = Resolver(inventory) if inventory is not None else None
        decider = Decider(policy.ruleset, policy.guards, policy.silences)
        now = SystemClock().now()
        header = f"{policy.summary()}; {where_from}"
        mode = ("offline: " + explain_mode(False) + " (--live asks the running monitor)")
        for item in items:
            event = item.to_event(now)
            sid, how = resolver.resolve(event) if resolver else (None, "no inventory")
            server = resolver.server(sid) if resolver else None
            enclosure = resolver.enclosure(event, sid)[0] if resolver else None
            d = decider.decide(event.model_copy(update={"server": sid, "enclosure": enclosure}), server)
            row = {**d.public(), "resolved_by": how, "mode": mode}
            if d.action == "failover" and d.rule is not None:
                row["confirmation"] = {"requirement": confirmation.requirement(
                    loaded.config.failover.confirm, d.rule, policy.ruleset.rules[d.rule].spec)}
            out.append(row)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{header}\nmode: {mode}")
    for n, row in enumerate(out, start=1):
        _print_explained(n, row, args.all)
    return 0


async def _pause(args: argparse.Namespace, reason: str | None) -> int:
    loaded = _load(args.config)
    base, token = api_base(loaded, args.api), api_token(loaded)
    if reason is None:
        status, data = await api_call(base, "DELETE", "/api/v1/pause", token=token)
    else:
        status, data = await api_call(base, "POST", "/api/v1/pause", token=token, body={"reason": reason})
    if status != 200:
        print(f"failover-monitor: {data.get('error', data)} (HTTP {status})", file=sys.stderr)
        return 1
    print(f"automatic failover paused: {data['paused']}" if data["paused"] else "automatic failover resumed")
    return 0


async def _lab_fault(args: argparse.Namespace) -> int:
    import os

    base = (args.lab_url or os.environ.get("LAB_URL") or "http://127.0.0.1:8163").rstrip("/")
    status, data = await api_call(base, "POST", f"/lab/v1/servers/{args.server}/hardware-fault",
                                  token=os.environ.get("LAB_API_TOKEN") or None, body={"kind": args.kind},
                                  token_hint="LAB_API_TOKEN to the lab's api_token")
    if status != 200:
        print(f"failover-monitor: the lab at {base}: {data.get('error', data)} (HTTP {status})",
              file=sys.stderr)
        return 1
    trap = data["trap"]
    event = data["event"]["Events"][0]
    print(f"{args.server}: {args.kind}; health Critical")
    print(f"  SNMPv2c trap {trap['oid']} from {trap['from']} to {', '.join(trap['to']) or 'nobody'}"
          + (f" (not sent to {', '.join(trap['failed'])})" if trap["failed"] else ""))
    print(f"  Redfish event {event['MessageId']} to {data['subscriptions']} subscription(s)")
    return 0


# --- operator views: plan, status, spares (issue 13) ---------------------------------------------


def _operator_parsers(sub: Any) -> None:
    p = sub.add_parser("plan", help="what a failover of SERVER would do now, touching nothing")
    p.add_argument("server")
    p.add_argument("--rule", default=None, help="plan an automatic failover by this rule")
    p.add_argument("--json", action="store_true", help="print JSON")
    _api_args(p)
    p = sub.add_parser("status", help="one screen: monitors, groups and locks, spare pool, jobs, pause")
    p.add_argument("--json", action="store_true", help="print JSON")
    _api_args(p)
    p = sub.add_parser("spares", help="the spare pool: each spare's BMC reading, capacity against N+k")
    p.add_argument("--group", default=None, help="one domain group")
    p.add_argument("--fresh", action="store_true", help="check every spare now (else: the last check)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _api_args(p)


async def _get(args: argparse.Namespace, path: str) -> tuple[int, Any]:
    loaded = _load(args.config)
    status, data = await api_call(api_base(loaded, args.api), "GET", path, token=api_token(loaded))
    if status != 200:
        print(f"failover-monitor: {data.get('error', data)} (HTTP {status})", file=sys.stderr)
    return status, data


def format_plan(p: dict[str, Any]) -> str:
    verdict = "WOULD FAIL OVER" if p["would_fail_over"] else "WOULD NOT FAIL OVER"
    lines = [f"plan for {p['server']} ({p['product']}, profile {p['profile'] or '-'}, "
             f"group {p['domain_group']}): {verdict}"]
    lines += [f"  blocker: {b}" for b in p["blockers"]]
    lock = p["lock"]
    lines.append(f"  group lock: {lock['group']} " + (f"held by job {lock['locked_by']}"
                                                      if lock["locked_by"] is not None else "free"))
    auto = p["automatic"]
    rules = ", ".join(r["rule"] for r in auto["rules"][:8]) or "none"
    more = f" (+{len(auto['rules']) - 8} more)" if len(auto["rules"]) > 8 else ""
    lines.append(f"  failover rules for this server: {rules}{more}")
    if auto["rule"]:
        g = auto["guards"]
        lines.append(f"  guards ({auto['rule']}): {g['action']}" + (f": {g['guard']}" if g["guard"] else
                                                                     ": passes"))
        c = auto["confirmation"]
        lines.append(f"  confirmation: {c['verdict']}: {c['reason']}")
    lines.append(f"  manual: {p['manual']}")
    for f in p["fence_levels"]:
        lines.append(f"  fence level {f['level']:<8} " + (f"answers: {f['power']}" if f["answers"]
                                                           else f"does not answer: {f['error']}"))
    sp = p["spare"]
    if sp["spare"]:
        bmc = sp["bmc"] or {}
        said = (f"answers: power {bmc.get('power')}, health {bmc.get('health')}" if bmc.get("answers")
                else f"does not answer: {bmc.get('error')}")
        lines.append(f"  spare: {sp['spare']} (BMC {said})")
    else:
        lines.append("  spare: none qualifies")
    lines += [f"  passed over: {r['server']}: {r['reason']}" for r in sp["passed_over"]]
    lines.append(f"  touched: {p['touched']}")
    return "\n".join(lines)


def format_status(s: dict[str, Any]) -> str:
    lines = [f"failover-monitor status at {s['time']} (from {s['instance']})",
             "automatic failover: " + (f"PAUSED: {s['paused']}" if s["paused"] else "active"), "",
             "Monitors:"]
    for m in s["monitors"]:
        lease = f"lease {m['lease_left']} s left" if m["alive"] else "lease over"
        lines.append(f"  {m['instance']:<20} {m['address'] or '-':<22} {lease}")
    lines += ["", "Groups:"]
    for g in s["groups"]:
        lock = f"locked by job {g['locked_by']}" if g["locked_by"] is not None else "unlocked"
        queue = f", waiting: {', '.join(map(str, g['waiting']))}" if g["waiting"] else ""
        lines.append(f"  {g['group']:<12} {lock}{queue}")
    lines += ["", "Spare pool:"]
    pool = s["spare_pool"]
    if pool is None or pool["checked"] is None:
        lines.append("  not checked yet")
    else:
        lines.append(f"  checked {pool['checked']}")
        for c in pool["capacity"]:
            mark = "ok" if c["ok"] else f"SHORT by {c['short']}"
            lines.append(f"  {c['domain_group']:<12} {c['model']:<28} {c['ready']}/{c['min']} ready  {mark}")
    lines += ["", "Jobs:"]
    for j in s["jobs"]:
        lines.append(f"  job {j['job']:<5} {j['server']:<14} {j['state']:<8} step {j['step'] or '-'}"
                     f" (owner {j['owner']})" + (f": {j['detail']}" if j["detail"] else ""))
    if not s["jobs"]:
        lines.append("  none active")
    lines += ["", "Silences:"]
    lines += [f"  {x['id']} ({x.get('origin')}"
              + (f", {x['kind']} {x['target']} by {x['author']} until {x['ends']}, {x['state']}"
                 if x.get("origin") == "store" else "") + ")"
              + (f": {x['comment']}" if x.get("comment") else "") for x in s["silences"]] or ["  none"]
    return "\n".join(lines)


def format_spares(r: dict[str, Any]) -> str:
    lines = [f"spare pool, checked {r['checked'] or 'not yet'}"]
    for sp in r["spares"]:
        state = "ready" if sp["ready"] else "NOT READY: " + "; ".join(sp["problems"])
        lines.append(f"  {sp['server']:<14} {sp['domain_group']:<10} {sp['model']:<28} "
                     f"power {sp['power'] or '?':<4} health {sp['health'] or '?':<8} {state}")
    lines.append("capacity (ready / wanted):")
    for c in r["capacity"]:
        mark = "ok" if c["ok"] else f"SHORT by {c['short']}"
        lines.append(f"  {c['domain_group']:<10} {c['model']:<28} {c['ready']}/{c['min']}  {mark}")
    return "\n".join(lines)


async def _operator(args: argparse.Namespace) -> int:
    from urllib.parse import quote, urlencode

    fmt: Any
    if args.command == "plan":
        query = f"?{urlencode({'rule': args.rule})}" if args.rule else ""
        status, data = await _get(args, f"/api/v1/plan/{quote(args.server, safe='')}{query}")
        fmt = format_plan
    elif args.command == "status":
        status, data = await _get(args, "/api/v1/status")
        fmt = format_status
    else:
        params = {k: v for k, v in (("group", args.group), ("fresh", "1" if args.fresh else None)) if v}
        status, data = await _get(args, "/api/v1/spares" + (f"?{urlencode(params)}" if params else ""))
        fmt = format_spares
    if status != 200:
        return 1
    print(json.dumps(data, indent=2) if args.json else fmt(data))
    if args.command == "spares":
        return 0 if all(c["ok"] for c in data["capacity"]) else 1
    return 0


# --- db upgrade ----------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from monitor.core.errors import StoreError
    from monitor.store import upgrade_store

    loaded = _load(args.config)
    try:
        before, after = asyncio.run(upgrade_store(loaded.config, loaded.store_path))
    except StoreError as exc:
        print(f"failover-monitor: {exc}", file=sys.stderr)
        return 1
    what = "up to date" if before == after else "upgraded"
    print(f"store schema {before} -> {after} ({what})")
    return 0


def _api_command_sync(fn: Any, args: argparse.Namespace) -> int:
    try:
        return int(fn(args))
    except ApiError as exc:
        print(f"failover-monitor: {exc}", file=sys.stderr)
        return 1


def _api_command(coro: Any) -> int:
    try:
        return int(asyncio.run(coro))
    except ApiError as exc:
        print(f"failover-monitor: {exc}", file=sys.stderr)
        return 1


MAINTENANCE_COMMANDS: dict[str, Any] = {"silence": _silence, "guards": _guards, "spare": _spare,
                                        "failback": _failback}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "check-config":
            return cmd_check_config(args)
        if args.command == "failover":
            return _api_command(_failover(args))
        if args.command == "jobs":
            return _api_command(_jobs(args))
        if args.command == "rules":
            return _api_command_sync(_explain, args)
        if args.command == "pause":
            return _api_command(_pause(args, args.reason))
        if args.command == "resume":
            return _api_command(_pause(args, None))
        if args.command in ("plan", "status", "spares"):
            return _api_command(_operator(args))
        if args.command == "db":
            return cmd_db_upgrade(args)
        if args.command == "lab" and args.lab_command == "fault":
            return _api_command(_lab_fault(args))
        if args.command == "completion":
            from monitor.app.completion import bash_completion

            print(bash_completion(parser()))
            return 0
        if args.command in MAINTENANCE_COMMANDS:
            return _api_command(MAINTENANCE_COMMANDS[args.command](args))
        if args.command == "lab":
            from lab.main import main as lab_main

            lab_argv = (["-c", str(args.config)] if args.config else []) + (
                ["--ready-file", str(args.ready_file)] if args.ready_file else [])
            return lab_main(lab_argv)
        if args.command == "demo":
            from monitor.app.demo import run_demo

            return run_demo(server=args.server, keep=args.keep)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2
