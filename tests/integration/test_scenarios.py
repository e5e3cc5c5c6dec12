"""The labelled scenario corpus (tests/scenarios/*.yaml): short stories of blade faults, each with the MIB
object or registry message it comes from, an event sequence in the normalized event format with times,
the server, what its BMC reads at confirmation, and the expected final decision with a one-line reason.

Every scenario runs through the same code path as live events: the daemon (monitor.app.daemon.Daemon) with
the built-in packs, its pipeline (resolution, rules, guards, the confirmation step), a real job runner,
the static-inventory adapters over tests/scenarios/inventory.yaml and a SQLite store. Only the clock
(monitor.core.clock.FakeClock) and the BMCs (FakeBmc: the reading, and power that follows ForceOff/On) are
fakes. Every failover rule of the packs has a scenario where it must fire and a near one where it must not.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.static_inventory import StaticDiscovery, StaticInventory, StaticManager
from monitor.app.daemon import Adapters, Daemon
from monitor.core.clock import FakeClock
from monitor.core.config import LoadedConfig, MonitorConfig
from monitor.core.errors import AdapterTimeout, AdapterUnavailable
from monitor.core.events import Event
from monitor.core.inventory_file import load_inventory_file
from monitor.core.model import Health, Inventory, Job, PowerState, Server, identify_product
from monitor.core.ports import HealthReading
from rules.engine import Decision
from rules.loader import load_policy
from tests.support.wait import eventually

HERE = Path(__file__).parents[1] / "scenarios"
INVENTORY = HERE / "inventory.yaml"
FAMILY_NAME = {"proliant": "ProLiant", "integrity": "Integrity", "poweredge": "Dell blade"}


# --- the corpus' format ---------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BmcSpec(_Strict):
    """What a fake BMC reads. `unreachable`: connection refused; `timeout`: no answer."""

    health: Literal["OK", "Warning", "Critical", "Unknown"] = "OK"
    rollup: Literal["OK", "Warning", "Critical", "Unknown"] | None = None
    """HealthRollup (default: the same as health)."""
    power: Literal["On", "Off", "PoweringOn", "PoweringOff", "Unknown"] = "On"
    state: str | None = "Enabled"
    unreachable: bool = False
    timeout: bool = False


class StepExpect(_Strict):
    decision: Literal["failover", "declined", "alert", "ignore", "none"]
    rule: str | None = None


class Expect(_Strict):
    decision: Literal["failover", "declined", "alert", "ignore", "none"]
    rule: str | None = None
    """The deciding rule (null: no rule fired)."""
    why: str = Field(min_length=10)
    """The one-line reason, for people (not compared)."""
    guard: str | None = None
    """A part of the decision's guard text."""
    confirmation: str | None = None
    """A part of the confirmation's reason."""
    spare: str | None = None
    """The spare the job chose (the job is followed to its end)."""
    enclosures_faulted: list[str] | None = None
    """The enclosures marked faulted after the last event."""
    job: Literal["completed", "failed"] | None = None
    """How the job ends (it is followed to its end)."""


class Step(_Strict):
    at: float = Field(ge=0)
    """Seconds from the start of the scenario, on the fake clock."""
    event: dict[str, Any] | None = None
    """A normalized event (source, trap_oid, varbinds, message_id, severity, health, …); `sender`
    defaults to the scenario's server's BMC address."""
    bmc: BmcSpec | None = None
    """A change of what a BMC reads from now on (of the scenario's server, or `of`)."""
    of: str | None = None
    pause: str | None = None
    """Pause automatic failover with this reason."""
    expect: StepExpect | None = None

    @model_validator(mode="after")
    def _one(self) -> Step:
        if sum(x is not None for x in (self.event, self.bmc, self.pause)) != 1:
            raise ValueError("a step is one of: event, bmc, pause")
        return self


class Scenario(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    story: str = Field(min_length=20)
    cites: str = Field(min_length=5)
    """The MIB object or registry message the events come from."""
    rule: str
    """The failover rule the scenario is about."""
    kind: Literal["fires", "near"]
    """`fires`: the rule must fail the server over; `near`: a close case where it must not."""
    server: str
    bmc: BmcSpec = BmcSpec()
    """What the server's BMC reads at confirmation (spares read Off and OK)."""
    confirm: Literal["always", "rule", "never"] = "always"
    site: dict[str, Any] | None = None
    """A site rule file (guards, silences, rules) loaded after the packs."""
    events: list[Step] = Field(min_length=1)
    expect: Expect

    @model_validator(mode="after")
    def _labelled(self) -> Scenario:
        if self.kind == "fires" and (self.expect.decision, self.expect.rule) != ("failover", self.rule):
            raise ValueError(f"{self.id}: a `fires` scenario expects a failover by {self.rule}")
        if self.kind == "near" and (self.expect.decision, self.expect.rule) == ("failover", self.rule):
            raise ValueError(f"{self.id}: a `near` scenario must not expect a failover by {self.rule}")
        return self


class CorpusFile(_Strict):
    scenarios: list[Scenario]


def load_corpus() -> list[Scenario]:
    out: list[Scenario] = []
    for path in sorted(HERE.glob("*.yaml")):
        if path == INVENTORY:
            continue
        out.extend(CorpusFile.model_validate(yaml.safe_load(path.read_text())).scenarios)
    return out


CORPUS = load_corpus()


# --- the fakes: the BMCs (and the clock, monitor.core.clock.FakeClock) ----------------------------------


class FakeBmc:
    """PowerControl for every server: a reading per server (spares Off), power following ForceOff/On."""

    def __init__(self, readings: dict[str, BmcSpec]) -> None:
        self.readings = dict(readings)
        self.power: dict[str, PowerState] = {}
        self.health_reads: list[str] = []

    def _spec(self, server: Server) -> BmcSpec:
        default = BmcSpec(power="Off") if server.spare or not server.profile else BmcSpec()
        return self.readings.get(server.id, default)

    def _check(self, server: Server) -> BmcSpec:
        spec = self._spec(server)
        url = server.bmc.url if server.bmc else None
        if spec.unreachable:
            raise AdapterUnavailable("connection refused", endpoint=url)
        if spec.timeout:
            raise AdapterTimeout("no answer within 10 s", endpoint=url)
        return spec

    async def power_state(self, server: Server) -> PowerState:
        spec = self._check(server)
        return self.power.get(server.id, PowerState.parse(spec.power))

    async def force_off(self, server: Server) -> None:
        self._check(server)
        self.power[server.id] = PowerState.OFF

    async def power_on(self, server: Server) -> None:
        self._check(server)
        self.power[server.id] = PowerState.ON

    async def health(self, server: Server) -> HealthReading:
        self.health_reads.append(server.id)
        spec = self._check(server)
        power = self.power.get(server.id, PowerState.parse(spec.power))
        return HealthReading(power, Health.parse(spec.health), Health.parse(spec.rollup or spec.health),
                             spec.state)

    async def close(self) -> None:
        """Nothing to close."""


# --- running one scenario ---------------------------------------------------------------------------------


@dataclass
class Run:
    decisions: list[Decision] = field(default_factory=list)
    jobs: dict[int, Job] = field(default_factory=dict)


def _config(tmp_path: Path, scenario: Scenario) -> MonitorConfig:
    files = []
    if scenario.site is not None:
        site = tmp_path / "site-rules.yaml"
        site.write_text(yaml.safe_dump(scenario.site))
        files.append(str(site))
    return MonitorConfig.model_validate({
        "instance": "scenarios",
        "http": {"listen": "127.0.0.1:0", "token": "scenario-token"},
        "store": str(tmp_path / "monitor.db"),
        "sqlite": {"synchronous": "normal"},
        "inventory": {"source": "static", "file": str(INVENTORY)},
        "redfish_events": {"poll_interval": 0},
        "rules": {"files": files},
        "failover": {"confirm": scenario.confirm, "confirm_window": 300, "poll_interval": 1,
                     "power_off_timeout": 30, "power_on_timeout": 30},
    })


def _event(step: Step, server: Server, inventory: Inventory, when: Any) -> Event:
    assert step.event is not None
    data = dict(step.event)
    if "sender" not in data and server.bmc is not None:
        data["sender"] = server.bmc.url.split("//", 1)[1]
    return Event.model_validate({"time": when, **data}).with_message_id()


async def _job_ends(run: Run, job_id: int, clock: FakeClock, timeout: float = 20.0) -> None:
    """Wait for the job to end, moving the fake clock on while it waits (a power-off that is not
    confirmed polls `power_off_timeout` seconds per attempt)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (job_id in run.jobs and not run.jobs[job_id].state.active):
        assert loop.time() < deadline, f"timed out waiting for job {job_id} to end"
        await asyncio.sleep(0.001)  # the job runs in other tasks: give them the loop
        await clock.advance(0.5)


async def run_scenario(scenario: Scenario, tmp_path: Path) -> Run:
    clock = FakeClock()
    loaded = LoadedConfig(_config(tmp_path, scenario), None)
    daemon = Daemon(loaded, clock=clock)
    bmc = FakeBmc({scenario.server: scenario.bmc})
    static = StaticInventory(INVENTORY, daemon.store)
    daemon._adapters = Adapters(bmc, StaticManager(static), StaticDiscovery(static, bmc))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    run = Run()
    try:
        await asyncio.wait_for(daemon.ready.wait(), 30)
        await eventually(lambda: daemon.inventory() is not None, 20.0, "the inventory", interval=0.001)
        assert daemon.runner is not None and daemon.pipeline is not None
        pipeline = daemon.pipeline

        async def on_job(job: Job) -> None:
            run.jobs[job.id] = job

        daemon.runner.add_listener(on_job)
        inventory = daemon.inventory()
        assert inventory is not None
        server = inventory.servers[scenario.server]
        start = clock.time()
        for i, step in enumerate(scenario.events):
            if start + step.at > clock.time():
                await clock.advance(start + step.at - clock.time())
            if step.bmc is not None:
                bmc.readings[step.of or scenario.server] = step.bmc
                bmc.power.pop(step.of or scenario.server, None)
                continue
            if step.pause is not None:
                await pipeline.set_paused(step.pause)
                continue
            decision = await pipeline.handle(_event(step, server, inventory, clock.now()))
            run.decisions.append(decision)
            if step.expect is not None:
                got = (decision.action, decision.rule)
                want = (step.expect.decision, step.expect.rule)
                assert got == want, f"step {i} (at {step.at:g} s): {got} != {want}: {decision.public()}"
        last = run.decisions[-1]
        faulted = pipeline.decider.state.faulted_enclosures(clock.time())
        if last.job is not None and (scenario.expect.spare or scenario.expect.job):
            await _job_ends(run, last.job, clock)
        check(scenario, last, run, faulted)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return run


def check(scenario: Scenario, last: Decision, run: Run, faulted: set[str]) -> None:
    e = scenario.expect
    shown = last.public()
    assert (last.action, last.rule) == (e.decision, e.rule), \
        f"{scenario.id}: got {last.action} by {last.rule}, want {e.decision} by {e.rule}: {shown}"
    if e.guard is not None:
        assert last.guard is not None and e.guard in last.guard, (last.guard, e.guard)
    if e.confirmation is not None:
        assert last.confirmation is not None and e.confirmation in last.confirmation["reason"], \
            (last.confirmation, e.confirmation)
    if e.decision == "failover":
        assert last.job is not None, shown
        assert last.confirmation is not None and last.confirmation["verdict"] == "confirmed", shown
    if e.decision == "declined":
        assert last.job is None and last.confirmation is not None
        assert last.confirmation["verdict"] == "declined" and last.confirmation["open_until"]
    if e.spare is not None:
        job = run.jobs[last.job or -1].public()
        assert job["state"] == "completed" and job["spare"] == e.spare, job
        assert job["trigger"]["confirmation"] == last.confirmation
    if e.job is not None:
        job = run.jobs[last.job or -1].public()
        assert job["state"] == e.job, job
    if e.enclosures_faulted is not None:
        assert faulted == set(e.enclosures_faulted), faulted


# --- the tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", CORPUS, ids=[s.id for s in CORPUS])
async def test_scenario(scenario: Scenario, tmp_path: Path) -> None:
    await run_scenario(scenario, tmp_path)


def family(server_id: str) -> str:
    """ProLiant, Integrity or Dell blade: the scenario's server's product family."""
    server = load_inventory_file(INVENTORY).servers[server_id]
    info = identify_product(server.product)
    assert info is not None, server.product
    return FAMILY_NAME[info.family]


def test_the_corpus_is_labelled_and_covers_every_failover_rule() -> None:
    ids = [s.id for s in CORPUS]
    assert len(ids) == len(set(ids)), "duplicate scenario ids"
    assert len(CORPUS) >= 60
    rules = load_policy([], builtin=True).ruleset.rules
    failover = {rid for rid, r in rules.items() if r.spec.action == "failover"}
    for s in CORPUS:
        assert s.rule in failover, f"{s.id}: {s.rule} is not a failover rule of the packs"
    fires = {s.rule for s in CORPUS if s.kind == "fires"}
    near = {s.rule for s in CORPUS if s.kind == "near"}
    assert sorted(failover - fires) == [], "failover rules without a scenario where they fire"
    assert sorted(failover - near) == [], "failover rules without a near case"
    per_family = Counter(family(s.server) for s in CORPUS)
    assert set(per_family) == set(FAMILY_NAME.values()), per_family
    assert all(n >= 10 for n in per_family.values()), per_family
    outcomes = Counter(s.expect.decision for s in CORPUS)
    assert outcomes["failover"] and outcomes["declined"] and outcomes["alert"], outcomes
