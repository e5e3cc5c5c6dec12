"""The built-in rule packs (rules/packs/*.yaml): every rule fires on a real signal and not on its nearest
neighbour; storage never fails over; clears reset pending windows; enclosure-wide traps fence their
enclosure.

The cases are keyed by rule id and the suite iterates the *loaded* rules: a new rule without a case here
fails `test_every_rule_has_a_case`. Events are built from the MIB OIDs and registry names (see
tests/fixtures/events/README.md for the captured payloads used as they are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.core.events import Event
from monitor.core.model import Server
from rules.engine import Decider, Decision, Rule
from rules.loader import Policy, load_policy
from rules.schema import GuardsSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "events"
T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
SERVER = Server(id="enc1-bay3", domain_group="prod", domain="vc-enc1", enclosure="enc1", bay=3,
                product="ProLiant BL460c Gen10", profile="app01")
GUARDS = GuardsSpec(storm=None, rate_limit=None)

PACK_PREFIX = {"hpe-insight": "hpe-", "dell-idrac": "dell-", "hpe-ilo-redfish": "ilo-",
               "dmtf-redfish": "dmtf-", "dell-idrac-redfish": "dell-rf-"}

# --- event builders -----------------------------------------------------------------------------------

SYS_NAME = "1.3.6.1.2.1.1.5.0"
HO_TRAP_FLAGS = "1.3.6.1.4.1.232.11.2.11.1.0"  # CPQHOST-MIB cpqHoTrapFlags.0
OK, DEGRADED, FAILED = 2, 3, 4  # the condition in bits 2-4 of cpqHoTrapFlags

DELL_SYSTEM_TRAP = "1.3.6.1.4.1.674.10892.5.3.2.1.0."
DELL_STORAGE_TRAP = "1.3.6.1.4.1.674.10892.5.3.2.2.0."
DELL_ALERT = "1.3.6.1.4.1.674.10892.5.3.1."  # IDRAC-MIB-SMIv2 alert varbinds, .<k>.0
DELL_STATUS = {3: "ok", 4: "nonCritical", 5: "critical", 6: "nonRecoverable"}


def hpe(n: int, condition: int = FAILED, /, **varbinds: str) -> Event:
    """An HPE Insight trap as the receiver delivers it (v2c or mapped v1): sysName.0 and cpqHoTrapFlags.0,
    and more varbinds given as OID=value with dots written as underscores."""
    extra = {k.lstrip("_").replace("_", "."): v for k, v in varbinds.items()}
    return Event(source="snmp", time=T0, sender="10.0.1.3", trap_oid=f"1.3.6.1.4.1.232.0.{n}",
                 snmp_version="2c",
                 varbinds={SYS_NAME: "enc1-bay3", HO_TRAP_FLAGS: str(condition << 2), **extra})


SHUTDOWN_CAUSE = "_1_3_6_1_4_1_232_9_2_2_33_0"  # CPQSM2-MIB cpqSm2CntlrSysAutoShutdownCause.0
FAILURE_TYPE = "_1_3_6_1_4_1_232_6_2_20_2_1_8_1"  # CPQHLTH-MIB cpqHePowerFailureType.1
FAILURE_AREA = "_1_3_6_1_4_1_232_6_2_20_2_1_4_1"  # CPQHLTH-MIB cpqHePowerFailureArea.1


def power_failure(kind: int, area: int = 1) -> Event:
    return hpe(6074, **{FAILURE_TYPE: str(kind), FAILURE_AREA: str(area)})


def dell(n: int, message_id: str | None = None, status: int = 5, *, storage: bool = False) -> Event:
    """An iDRAC trap with the IDRAC-MIB alert varbinds (alertMessageID only where one is known)."""
    varbinds = {
        f"{DELL_ALERT}3.0": str(status),
        f"{DELL_ALERT}4.0": "7XK2Q33",
        f"{DELL_ALERT}5.0": "enc1-bay3.example.net",
        f"{DELL_ALERT}7.0": f"status {DELL_STATUS.get(status, status)}",
        f"{DELL_ALERT}9.0": "CH12345",
        f"{DELL_ALERT}10.0": "chassis-1",
        f"{DELL_ALERT}11.0": "idrac-enc1-bay3.example.net",
    }
    if message_id is not None:
        varbinds[f"{DELL_ALERT}1.0"] = message_id
    prefix = DELL_STORAGE_TRAP if storage else DELL_SYSTEM_TRAP
    return Event(source="snmp", time=T0, sender="10.0.2.3", trap_oid=f"{prefix}{n}", snmp_version="2c",
                 varbinds=varbinds)


def rf(message_id: str, severity: str = "Critical", **extra: Any) -> Event:
    """A Redfish event record as the push/SSE sources normalize it."""
    return Event(source="redfish", time=T0, sender="10.0.3.3", message_id=message_id, severity=severity,
                 event_type="Alert", origin="/redfish/v1/Systems/1", **extra).with_message_id()


def ilo(name: str, severity: str = "Critical") -> Event:
    return rf(f"iLOEvents.2.3.{name}", severity)


def dmtf(registry: str, name: str, severity: str = "Critical") -> Event:
    version = {"Platform": "1.3.2", "ResourceEvent": "1.4.3", "Environmental": "1.4.0", "Power": "1.2.0",
               "StorageDevice": "1.5.1"}[registry]
    return rf(f"{registry}.{version}.{name}", severity)


def fixture(name: str) -> Event:
    return Event.model_validate(json.loads((FIXTURES / f"{name}.json").read_text())).with_message_id()


@dataclass
class Case:
    fire: list[Event]
    """The rule's decision comes on the last event (thresholds: N events; correlations: partner first)."""
    misses: list[list[Event]] = field(default_factory=list)
    """Sequences whose last event must not fire the rule."""


def case(fire: Event | list[Event], *misses: Event | list[Event]) -> Case:
    def seq(x: Event | list[Event]) -> list[Event]:
        return x if isinstance(x, list) else [x]
    return Case(seq(fire), [seq(m) for m in misses])


CASES: dict[str, Case] = {
    # --- hpe-insight: failover --------------------------------------------------------------------------
    "hpe-cpu-uncorrectable": case(hpe(1026), hpe(1005, DEGRADED)),
    "hpe-cpu-internal-error": case(hpe(1027), hpe(1005, DEGRADED)),
    "hpe-cpu-status-failed": case(hpe(1006, FAILED), hpe(1006, DEGRADED), hpe(1006, OK)),
    "hpe-server-fatal-error": case(hpe(9014), hpe(9001)),
    "hpe-server-power-on-failure": case(hpe(9019), hpe(9002)),
    "hpe-system-power-on-denied": case(hpe(6073), hpe(6070, DEGRADED)),
    "hpe-auto-shutdown": case(hpe(9024, **{SHUTDOWN_CAUSE: "3"}), hpe(9024, **{SHUTDOWN_CAUSE: "2"}),
                              hpe(9001)),
    "hpe-auto-shutdown-enclosure-cause": case(hpe(9024, **{SHUTDOWN_CAUSE: "1"}), hpe(9024),
                                              hpe(9024, **{SHUTDOWN_CAUSE: "3"})),
    "hpe-auto-shutdown-cancelled": case(hpe(9025, OK, **{SHUTDOWN_CAUSE: "131"}), hpe(9024)),
    "hpe-interlock-failure": case(hpe(6075), hpe(6074)),
    "hpe-memory-uncorrectable": case(hpe(6096), hpe(6064, DEGRADED)),
    "hpe-no-power-supply-detected": case(hpe(6103), hpe(6050)),
    "hpe-power-fuse-degraded": case(hpe(6105), hpe(6104)),
    "hpe-power-failure-thermal": case(power_failure(9), power_failure(6)),
    "hpe-power-failure-input-loss": case(power_failure(3), power_failure(5)),
    "hpe-power-failure-enclosure-area": case(power_failure(6, area=13), power_failure(6, area=1)),
    "hpe-power-failure-standby": case(power_failure(5), power_failure(3)),
    "hpe-blade-power-on-refused": case(hpe(22023), hpe(22021)),
    "hpe-thermal-shutdown": case(hpe(6017), hpe(6018, DEGRADED)),
    "hpe-temperature-failed": case(hpe(6040), hpe(6041, DEGRADED)),
    "hpe-power-converter-failed": case(hpe(6044), hpe(6049, DEGRADED)),
    "hpe-power-failure-error": case(hpe(6074), power_failure(3), power_failure(6, area=11), hpe(6048, OK)),
    "hpe-power-protection-fault": case(hpe(6104), hpe(6032, DEGRADED)),
    "hpe-memory-board-bus-error": case(hpe(6067), hpe(6064, DEGRADED)),
    "hpe-blade-status-critical": case(fixture("hpe-22054-v2c"), hpe(22053, DEGRADED)),
    "hpe-blade-not-responding": case(hpe(22055), hpe(22052, OK)),  # an alert now: reset the iLO
    "hpe-blade-power-shed-shutdown": case(hpe(22021), hpe(22018, DEGRADED)),
    "hpe-psu-failed-no-redundancy": case(
        [hpe(6032, DEGRADED), fixture("hpe-6050-v1")],
        hpe(6050),                                          # no redundancy loss seen
        [hpe(6032, DEGRADED), hpe(6054, OK), hpe(6050)],    # redundancy restored in between
    ),
    "hpe-power-redundancy-lost-after-psu-failure": case(
        [hpe(6069), hpe(6032, DEGRADED)],
        hpe(6032, DEGRADED),                                # no supply failure seen
        [hpe(6049, DEGRADED), hpe(6032, DEGRADED)],         # a degraded supply is not a failed one
        [hpe(6050), hpe(6048, OK), hpe(6032, DEGRADED)],    # the supply came back in between
    ),
    # --- hpe-insight: alert -----------------------------------------------------------------------------
    "hpe-psu-failed": case(fixture("hpe-6050-v1"), hpe(6049, DEGRADED)),
    "hpe-power-redundancy-lost": case(hpe(6032, DEGRADED), hpe(6054, OK)),
    "hpe-psu-degraded": case(hpe(6049, DEGRADED), hpe(6048, OK)),
    "hpe-cpu-status-changed": case(hpe(1006, DEGRADED), hpe(1006, FAILED)),
    "hpe-cpu-threshold-passed": case(hpe(1005, DEGRADED), hpe(1006, DEGRADED)),
    "hpe-memory-correctable": case(
        [hpe(6015, DEGRADED), hpe(6056, DEGRADED), hpe(6015, DEGRADED)],
        [hpe(6015, DEGRADED), hpe(6015, DEGRADED)],
        [hpe(6015, DEGRADED), hpe(6015, DEGRADED), hpe(22052, OK), hpe(6015, DEGRADED)],
    ),
    "hpe-memory-replace-module": case(hpe(6064, DEGRADED), hpe(6056, DEGRADED)),
    "hpe-memory-protection-engaged": case(hpe(6051, DEGRADED), hpe(6064, DEGRADED)),
    "hpe-thermal-degraded": case(hpe(6041, DEGRADED), hpe(6042, OK)),
    "hpe-fan-failed": case(hpe(6036), hpe(6035, DEGRADED)),
    "hpe-fan-degraded": case(hpe(6035, DEGRADED), hpe(6037, DEGRADED)),
    "hpe-fan-redundancy-lost": case(hpe(6037, DEGRADED), hpe(6055, OK)),
    "hpe-system-battery-failed": case(hpe(6070, DEGRADED), hpe(6027, DEGRADED)),
    "hpe-post-error": case(hpe(6027, DEGRADED), hpe(6063)),
    "hpe-ilo-failed": case(hpe(6063), hpe(6027, DEGRADED)),
    "hpe-server-reset": case(hpe(9001), hpe(9019)),
    "hpe-storage": case(hpe(3034), dell(4353, status=5, storage=True)),
    "hpe-blade-degraded": case(hpe(22053, DEGRADED), hpe(22054)),
    "hpe-blade-unexpected-shutdown": case(hpe(22056, OK), hpe(22070, OK)),
    "hpe-blade-ekeying-failed": case(hpe(22042, DEGRADED), hpe(22051, OK)),
    "hpe-enclosure-fault": case(hpe(22013), hpe(22050, OK)),
    # --- hpe-insight: clears, ignore ----------------------------------------------------------------------
    "hpe-temperature-ok": case(hpe(6019, OK), hpe(6018, DEGRADED)),
    "hpe-psu-ok": case(hpe(6048, OK), hpe(6050)),
    "hpe-power-redundancy-restored": case(hpe(6054, OK), hpe(6032, DEGRADED)),
    "hpe-fan-redundancy-restored": case(hpe(6122, OK), hpe(6121, DEGRADED)),
    "hpe-blade-repaired": case(hpe(22052, OK), hpe(22053, DEGRADED)),
    "hpe-blade-lifecycle": case(hpe(22070, OK), hpe(22056, OK)),
    # --- dell-idrac ----------------------------------------------------------------------------------------
    "dell-cpu-ierr": case(dell(2241, "CPU0000", 5), dell(2242, "CPU0000", 4), dell(2241, "CPU0001", 5)),
    "dell-cpu-failure": case(dell(2241, "CPU0011", 5), dell(2241, "CPU0011", 4), dell(2241, "CPU0000", 5),
                             dell(2241, "CPU0001", 5)),
    "dell-cpu-thermal-trip": case(dell(2241, "CPU0001", 5), dell(2241, "CPU0000", 5)),
    "dell-memory-multibit": case(fixture("dell-2265-mem0001-v3"), dell(2265, "MEM0004", 5)),
    "dell-temperature-nonrecoverable": case(dell(2161, "TMP0110", 6), dell(2161, "TMP0110", 5)),
    "dell-psu-failure-no-redundancy": case(
        [dell(2473), dell(2185, "PSU0003")],
        dell(2185, "PSU0003"),
        [dell(2473), dell(2475, status=3), dell(2185, "PSU0003")],
    ),
    "dell-redundancy-lost-after-psu-failure": case(
        [dell(2185, "PSU0003"), dell(2473)],
        dell(2473),
        [dell(2186, status=4), dell(2473)],
        [dell(2185, "PSU0003"), dell(2187, status=3), dell(2473)],
    ),
    "dell-memory-failure": case(fixture("dell-2265-mem0001-v3").model_copy(
        update={"varbinds": {f"{DELL_ALERT}1.0": "MEM0004", f"{DELL_ALERT}3.0": "5"}}),
        fixture("dell-2265-mem0001-v3")),
    "dell-temperature-failure": case(dell(2161, "TMP0110", 5), dell(2161, "TMP0110", 6)),
    "dell-fan-failure": case(dell(2153, "FAN0001", 5), dell(2154, status=4)),
    "dell-psu-failure": case(dell(2185, "PSU0003", 5), dell(2186, status=4)),
    "dell-redundancy-lost": case(dell(2473), dell(2474, status=4)),
    "dell-voltage-amperage-failure": case(dell(2169), dell(2161, "TMP0110", 5)),
    "dell-automatic-system-recovery": case(dell(2233), dell(2409)),
    "dell-bios-post-failure": case(dell(2425), dell(2233)),
    "dell-hardware-failure": case(dell(2417), dell(2425)),
    "dell-os-failure": case(dell(2409), dell(2233)),
    "dell-cmc-failure": case(dell(2545), dell(2417)),
    # near miss: the same number under the system-trap subtree
    "dell-storage-failure": case(dell(4345, storage=True), dell(4345)),
    "dell-warning": case(dell(2266, status=4), dell(2265, "MEM0004", 5)),
    "dell-psu-normal": case(dell(2187, status=3), dell(2185, "PSU0003")),
    "dell-redundancy-regained": case(dell(2475, status=3), dell(2473)),
    "dell-normal": case(dell(2163, status=3), dell(2162, "TMP0120", 4)),
    # --- hpe-ilo-redfish -------------------------------------------------------------------------------
    "ilo-processor-failed": case(ilo("ProcessorStatusFailed"), ilo("ProcessorStatusDegraded", "Warning")),
    "ilo-cpu-uncorrectable": case(ilo("SeCpuUncorrectableError"), rf("Oem.1.0.SeCpuUncorrectableError")),
    "ilo-power-fault-shutdown": case(ilo("PowerFailureRuntime"), ilo("PowerFailureStandby"),
                                     ilo("PowerFailureCpuThermalTrip")),
    "ilo-power-fault-thermal": case(ilo("PowerFailureCpuThermalTrip"), ilo("PowerFailureRuntime")),
    "ilo-power-fault-uncertain": case(ilo("PowerFailureUnknown"), ilo("PowerFailureStandby"),
                                      ilo("PowerFailureErrorInputPowerLoss")),
    "ilo-power-input-loss": case(ilo("PowerFailureErrorInputPowerLoss"), ilo("PowerSupplyACPowerLoss")),
    "ilo-auto-shutdown-cancelled": case(ilo("AutoShutdownCancelled", "OK"), ilo("AutoShutdownInitiated")),
    "ilo-memory-uncorrectable": case(ilo("NvdimmMemoryMapChanged", "Warning"),
                                     ilo("CorrectableOrUncorrectableMemoryErrors", "Warning")),
    "ilo-power-protection-fault": case(ilo("PowerProtectionFault"), ilo("PowerDegradedEventDetected")),
    "ilo-power-on-failure": case(ilo("SystemPowerOnDenied"), ilo("ServerPoweredOn", "OK")),
    "ilo-thermal-failure": case(ilo("ThermalStatusFailure"), ilo("ThermalStatusDegradedSysContinue")),
    "ilo-auto-shutdown": case(ilo("AutoShutdownInitiated"), ilo("AutoShutdownCancelled", "OK")),
    "ilo-psu-failed-no-redundancy": case(
        [ilo("PowerRedundancyLost", "Warning"), ilo("PowerSupplyFailed")],
        ilo("PowerSupplyFailed"),
        [ilo("PowerRedundancyLost", "Warning"), ilo("PowerRedundancyRestored", "OK"),
         ilo("PowerSupplyFailed")],
    ),
    "ilo-power-redundancy-lost-after-psu-failure": case(
        [ilo("PowerSupplyACPowerLoss"), ilo("PowerRedundancyLost", "Warning")],
        ilo("PowerRedundancyLost", "Warning"),
        [ilo("PowerSupplyFailed"), ilo("PowerSupplyOK", "OK"), ilo("PowerRedundancyLost", "Warning")],
    ),
    "ilo-psu-failed": case(ilo("PowerSupplyFailed"), ilo("PowerSupplyDegraded")),
    "ilo-power-redundancy-lost": case(ilo("PowerRedundancyLost", "Warning"),
                                      ilo("PowerRedundancyRestored", "OK")),
    "ilo-psu-degraded": case(fixture("ilo-powersupplyremoved"), ilo("PowerSupplyInserted", "OK")),
    "ilo-power-degraded": case(ilo("PowerDegradedEventDetected"), ilo("PowerProtectionFault")),
    "ilo-power-fault-standby": case(ilo("PowerFailureStandby"), ilo("PowerFailureRuntime")),
    "ilo-fan-failed": case(ilo("FanFailed"), dmtf("Environmental", "FanFailed")),
    "ilo-fan-redundancy-lost": case(ilo("FanRedundancyLost", "Warning"), ilo("FanRemoved", "Warning")),
    "ilo-thermal-degraded": case(ilo("ThermalStatusDegradedSysContinue"), ilo("ThermalStatusOK", "OK")),
    "ilo-memory-errors": case(ilo("CorrectableOrUncorrectableMemoryErrors", "Warning"),
                              dmtf("Platform", "MemoryContainedError", "Warning")),
    "ilo-processor-degraded": case(ilo("ProcessorStatusDegraded", "Warning"), ilo("ProcessorStatusOK", "OK")),
    "ilo-post-errors": case(ilo("POSTErrorsOccurred", "Warning"), ilo("ServerPostComplete", "OK")),
    "ilo-server-reset": case(ilo("ServerResetDetected", "Warning"), ilo("iLOReset", "OK")),
    "ilo-nic-all-links-down": case(ilo("NicAllLinksDown"), ilo("NicConnectivityLost", "Warning")),
    "ilo-storage": case(ilo("DrvArrLogDrvFailed"), ilo("DrvArrLogDrvRebuilding", "Warning")),
    "ilo-psu-ok": case(ilo("PowerSupplyOK", "OK"), ilo("PowerSupplyInserted", "OK")),
    "ilo-power-redundancy-restored": case(ilo("PowerRedundancyRestored", "OK"),
                                          ilo("PowerRedundancyLost", "Warning")),
    "ilo-fan-redundancy-restored": case(ilo("FanRedundancyRestored", "OK"), ilo("FanInserted", "OK")),
    "ilo-thermal-ok": case(ilo("ServerOperational", "Warning"), ilo("ThermalStatusDegradedSysContinue")),
    "ilo-post-discovery-complete": case(ilo("ServerPostDiscoveryComplete", "OK"),
                                        ilo("ServerPostComplete", "OK")),
    "ilo-lifecycle": case(fixture("ilo-resourceupdated"), ilo("UpdateTaskStateChanged", "OK")),
    # --- dmtf-redfish ----------------------------------------------------------------------------------
    "dmtf-memory-uncorrectable": case(dmtf("Platform", "MemoryUncorrectableError"),
                                      dmtf("Platform", "MemoryContainedError", "Warning")),
    "dmtf-voltage-regulator-fault": case(dmtf("Platform", "VoltageRegulatorFault"),
                                         dmtf("Power", "VoltageWarning", "Warning")),
    "dmtf-temperature-fatal": case(dmtf("Environmental", "TemperatureAboveUpperFatalThreshold"),
                                   dmtf("Environmental", "TemperatureBelowUpperFatalThreshold")),
    "dmtf-psu-failed-no-redundancy": case(
        [dmtf("Power", "PowerSupplyGroupWarning", "Warning"), dmtf("Power", "PowerSupplyFailed")],
        dmtf("Power", "PowerSupplyFailed"),
        [dmtf("Power", "PowerSupplyGroupWarning", "Warning"), dmtf("Power", "PowerSupplyGroupNormal", "OK"),
         dmtf("Power", "PowerSupplyFailed")],
    ),
    "dmtf-psu-group-degraded-after-psu-failure": case(
        [dmtf("Power", "PowerSupplyFailed"), dmtf("Power", "PowerSupplyGroupCritical")],
        dmtf("Power", "PowerSupplyGroupWarning", "Warning"),
        [dmtf("Power", "PowerSupplyFailed"), dmtf("Power", "PowerSupplyRestored", "OK"),
         dmtf("Power", "PowerSupplyGroupWarning", "Warning")],
    ),
    "dmtf-psu-failed": case(dmtf("Power", "PowerSupplyFailed"), ilo("PowerSupplyDegraded")),
    "dmtf-psu-group-degraded": case(dmtf("Power", "PowerSupplyGroupWarning", "Warning"),
                                    dmtf("Power", "PowerSupplyGroupNormal", "OK")),
    "dmtf-power-warning": case(dmtf("Power", "PowerSupplyPredictiveFailure", "Warning"),
                               dmtf("Power", "LineInputPowerRestored", "OK")),
    "dmtf-voltage-critical": case(dmtf("Power", "VoltageCritical"),
                                  dmtf("Power", "VoltageWarning", "Warning")),
    "dmtf-temperature-critical": case(
        dmtf("Environmental", "TemperatureAboveUpperCriticalThreshold"),
        dmtf("Environmental", "TemperatureAboveUpperCautionThreshold", "Warning")),
    "dmtf-fan-failed": case(dmtf("Environmental", "FanFailed"), ilo("FanFailed")),
    "dmtf-leak-detected": case(dmtf("Environmental", "LeakDetectedCritical"),
                               dmtf("Environmental", "LeakDetectedWarning", "Warning")),
    "dmtf-os-crash": case(dmtf("Platform", "OperatingSystemCrash"), dmtf("Platform", "PlatformReset", "OK")),
    "dmtf-pcie-device-fault": case(dmtf("Platform", "PCIeLinkDown"), dmtf("Platform", "PCIeLinkRestored")),
    "dmtf-platform-warning": case(dmtf("Platform", "MemoryContainedError", "Warning"),
                                  dmtf("Platform", "MemoryUncorrectableError")),
    "dmtf-resource-errors": case(dmtf("ResourceEvent", "ResourceErrorsDetected", "Warning"),
                                 dmtf("ResourceEvent", "ResourceErrorsCorrected", "OK")),
    "dmtf-system-critical": case(dmtf("ResourceEvent", "ResourceStatusChangedCritical"),
                                 dmtf("ResourceEvent", "ResourceStatusChangedCritical").model_copy(
                                     update={"origin": "/redfish/v1/Systems/1/Processors/CPU1"})),
    "dmtf-openbmc-cpu-error": case(rf("OpenBMC.0.1.CPUError"), rf("OpenBMC.0.1.CPUMismatch")),
    "dmtf-openbmc-cpu-thermal-trip": case(rf("OpenBMC.0.1.CPUThermalTrip"), rf("OpenBMC.0.1.CPUError")),
    "dmtf-openbmc-memory-uncorrectable": case(rf("OpenBMC.0.1.MemoryECCUncorrectable"),
                                              rf("OpenBMC.0.1.MemoryECCCorrectable", "Warning")),
    "dmtf-resource-critical": case(dmtf("ResourceEvent", "ResourceStatusChangedCritical").model_copy(
                                       update={"origin": "/redfish/v1/Chassis/1/Thermal"}),
                                   dmtf("ResourceEvent", "ResourceStatusChangedWarning", "Warning")),
    "dmtf-resource-warning": case(dmtf("ResourceEvent", "ResourceSelfTestFailed"),
                                  dmtf("ResourceEvent", "ResourceSelfTestCompleted", "OK")),
    "dmtf-storage": case(dmtf("StorageDevice", "DriveFailure"),
                         dmtf("StorageDevice", "DrivePredictiveFailure", "Warning")),
    "dmtf-psu-restored": case(dmtf("Power", "PowerSupplyInserted", "OK"),
                              dmtf("Power", "PowerSupplyRemoved", "OK")),
    "dmtf-psu-group-normal": case(dmtf("Power", "PowerSupplyGroupNormal", "OK"),
                                  dmtf("Power", "PowerSupplyGroupWarning", "Warning")),
    "dmtf-temperature-normal": case(dmtf("Environmental", "TemperatureNormal", "OK"),
                                    dmtf("Environmental", "TemperatureWarning", "Warning")),
    # --- dell-idrac-redfish ------------------------------------------------------------------------------
    "dell-rf-cpu-ierr": case(rf("CPU0000", event_id="2241"), rf("CPU0001", event_id="2241")),
    "dell-rf-memory-multibit": case(rf("IDRAC.2.8.MEM0001", event_id="2265"), fixture("idrac-mem0004")),
    "dell-rf-memory-disabled": case(fixture("idrac-mem0004"), rf("MEM0001", event_id="2265")),
    "dell-rf-psu-input-lost": case(rf("PSU0003", event_id="2185"), rf("PSU0001", event_id="2185")),
    "dell-rf-cpu-machine-check": case(rf("IDRAC.2.8.CPU0011", event_id="2241"),
                                      rf("CPU0000", event_id="2241")),
    "dell-rf-cpu-thermal-trip": case(rf("CPU0001", event_id="2241"), rf("CPU0011", event_id="2241")),
    "dell-rf-psu-failure": case(rf("IDRAC.2.8.PSU0001", event_id="2185"), rf("PSU0001", event_id="2186"),
                                ilo("PowerSupplyFailed")),
    "dell-rf-redundancy-lost": case(rf("RDU0012", event_id="2473"), rf("RDU0001", event_id="2475")),
    "dell-rf-psu-failure-no-redundancy": case(
        [rf("RDU0012", event_id="2473"), rf("PSU0003", event_id="2185")],
        rf("PSU0003", event_id="2185"),
        [rf("RDU0012", event_id="2473"), rf("RDU0001", event_id="2475"), rf("PSU0003", event_id="2185")],
    ),
    "dell-rf-redundancy-lost-after-psu-failure": case(
        [rf("PSU0003", event_id="2185"), rf("RDU0012", event_id="2473")],
        rf("RDU0012", event_id="2473"),
        [rf("PSU0003", event_id="2185"), rf("PSU0000", "OK", event_id="2187"),
         rf("RDU0012", event_id="2473")],
    ),
    "dell-rf-psu-normal": case(rf("PSU0000", "OK", event_id="2187"), rf("PSU0003", event_id="2185")),
    "dell-rf-redundancy-regained": case(rf("RDU0001", "OK", event_id="2475"), rf("RDU0012", event_id="2473")),
    "dell-rf-fan-failure": case(fixture("idrac-fan0001"), rf("FAN0000", "OK", event_id="2155")),
    "dell-rf-temperature-critical": case(fixture("idrac-tmp0110"), fixture("idrac-tmp0120")),
    "dell-rf-temperature-warning": case(fixture("idrac-tmp0120"), fixture("idrac-tmp0110")),
}

# --- helpers ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy([], builtin=True)


def _rule_ids() -> list[str]:
    return sorted(load_policy([], builtin=True).ruleset.rules)


def run(policy: Policy, events: list[Event]) -> tuple[Decider, list[Decision]]:
    """A fresh Decider (guards off) fed the events one minute apart, all for SERVER."""
    decider = Decider(policy.ruleset, GUARDS, [])
    decisions = [decider.decide(e.model_copy(update={"time": T0 + timedelta(minutes=i)}), SERVER)
                 for i, e in enumerate(events)]
    return decider, decisions


def fired(decision: Decision) -> set[str]:
    return {rule for rule, _action, _note in decision.matched}


def pack_of(rule: Rule) -> str:
    return Path(rule.origin.rsplit(":", 1)[0]).stem


# --- the packs load, and every rule has a case ------------------------------------------------------------


def test_packs_load(policy: Policy) -> None:
    assert sorted(p.stem for p in policy.files) == sorted(PACK_PREFIX)
    assert len(policy.ruleset) == len(CASES)
    for rule in policy.ruleset.rules.values():
        spec = rule.spec
        assert spec.cites.strip(), rule.id
        assert spec.description.strip(), rule.id
        assert spec.source in ("snmp", "redfish"), rule.id
        assert spec.labels.get("vendor") in ("hpe", "dell", "dmtf", "openbmc"), rule.id
        assert rule.id.startswith(PACK_PREFIX[pack_of(rule)]), rule.id


def test_every_rule_has_a_case(policy: Policy) -> None:
    loaded = set(policy.ruleset.rules)
    assert sorted(loaded - set(CASES)) == [], "rules without a test case"
    assert sorted(set(CASES) - loaded) == [], "test cases for rules that do not exist"


@pytest.mark.parametrize("rule_id", _rule_ids())
def test_rule_fires(policy: Policy, rule_id: str) -> None:
    assert rule_id in CASES, f"{rule_id}: add a case to CASES"
    spec = policy.ruleset.rules[rule_id].spec
    _decider, decisions = run(policy, CASES[rule_id].fire)
    last = decisions[-1]
    assert last.rule == rule_id, (last.rule, last.near)
    assert last.action == spec.action
    assert last.severity == spec.severity
    assert last.confirm == spec.confirm
    if spec.threshold is not None or spec.requires is not None:
        # the earlier events of the sequence alone do not fire it
        assert all(rule_id not in fired(d) for d in decisions[:-1])


@pytest.mark.parametrize("rule_id", _rule_ids())
def test_rule_near_miss(policy: Policy, rule_id: str) -> None:
    assert rule_id in CASES, f"{rule_id}: add a case to CASES"
    misses = CASES[rule_id].misses
    assert misses, f"{rule_id}: give at least one near miss"
    for events in misses:
        _decider, decisions = run(policy, events)
        assert rule_id not in fired(decisions[-1]), [e.trap_oid or e.message_id for e in events]


def test_every_listed_signal_matches(policy: Policy) -> None:
    """Each trap OID or message name a rule lists reaches it through the engine's index, alone."""
    checked = 0
    for rule in policy.ruleset.rules.values():
        match = rule.spec.match
        events: list[Event] = []
        oids, ids = match.get("trap_oid"), match.get("message_id")
        if set(match) == {"trap_oid"} and isinstance(oids, list):
            events = [Event(source="snmp", time=T0, trap_oid=str(oid)) for oid in oids]
        elif set(match) == {"message_id"}:
            patterns = ids if isinstance(ids, list) else [ids]
            events = [rf(str(pattern).replace("*", "1.0")) for pattern in patterns]
        for event in events:
            decision = Decider(policy.ruleset, GUARDS, []).decide(event, SERVER)
            waiting = [why for rid, why in decision.near if rid == rule.id
                       and why.startswith(("threshold", "waiting"))]
            assert rule.id in fired(decision) or waiting, (rule.id, event.trap_oid or event.message_id)
            checked += 1
    assert checked > 150


# --- safety properties ------------------------------------------------------------------------------------


def test_failover_rules_cite_a_source_and_are_critical(policy: Policy) -> None:
    failover = [r for r in policy.ruleset.rules.values() if r.spec.action == "failover"]
    assert len(failover) >= 30
    for rule in failover:
        cites = rule.spec.cites
        assert any(word in cites for word in ("-MIB", "registry", "Dell iDRAC message")), rule.id
        assert rule.spec.severity == "critical", rule.id
        assert rule.spec.threshold is None, rule.id


def test_correlated_failovers_confirm_first(policy: Policy) -> None:
    """A correlation of two signals (power supply + redundancy) never fences without the BMC's word."""
    for rule in policy.ruleset.rules.values():
        if rule.spec.action == "failover" and rule.spec.requires is not None:
            assert rule.spec.confirm, rule.id


STORAGE_EVENTS = [
    *(hpe(n) for n in (3046, 3034, 3033)),
    *(dell(n, storage=True) for n in (4329, 4345, 4353)),
    *(ilo(n) for n in ("DrvArrLogDrvFailed", "DrvArrControllerFailed", "DrvArrPhysDrvFailed", "DriveFailed",
                       "DriveFailed2", "PCIeDriveConditionFailed", "DrvArrSpareDriveBuilding")),
    *(dmtf("StorageDevice", n)
      for n in ("DriveFailure", "ControllerFailure", "VolumeFailure", "VolumeOffline")),
]


def test_storage_never_fails_over(policy: Policy) -> None:
    storage_rules = [r for r in policy.ruleset.rules.values() if r.spec.labels.get("component") == "storage"]
    assert {r.id for r in storage_rules} == {"hpe-storage", "dell-storage-failure", "ilo-storage",
                                             "dmtf-storage"}
    assert all(r.spec.action == "alert" for r in storage_rules)
    for event in STORAGE_EVENTS:
        _decider, (decision,) = run(policy, [event])
        assert decision.action == "alert", (event.trap_oid or event.message_id, decision.rule)
        assert all(action != "failover" for _rule, action, _note in decision.matched)


def test_clear_rules_take_no_action(policy: Policy) -> None:
    clears = [r for r in policy.ruleset.rules.values() if r.spec.clears]
    assert len(clears) >= 15
    for rule in clears:
        assert rule.spec.action == "ignore", rule.id


def test_clear_resets_a_pending_correctable_memory_window(policy: Policy) -> None:
    corr, repaired = hpe(6015, DEGRADED), hpe(22052, OK)
    decider, decisions = run(policy, [corr, corr, repaired, corr, corr])
    assert [d.rule for d in decisions] == [None, None, "hpe-blade-repaired", None, None]
    assert any(why.startswith("threshold: 2 of 3") for rid, why in decisions[-1].near
               if rid == "hpe-memory-correctable")
    third = decider.decide(corr.model_copy(update={"time": T0 + timedelta(minutes=10)}), SERVER)
    assert (third.rule, third.action, third.severity) == ("hpe-memory-correctable", "alert", "major")


def test_correctable_memory_window_expires(policy: Policy) -> None:
    decider = Decider(policy.ruleset, GUARDS, [])
    corr = hpe(6056, DEGRADED)
    for minutes in (0, 30, 61):  # the first has left the 1 h window when the third arrives
        decision = decider.decide(corr.model_copy(update={"time": T0 + timedelta(minutes=minutes)}), SERVER)
    assert decision.rule is None


def test_power_supply_correlation_is_per_server(policy: Policy) -> None:
    other = Server(id="enc1-bay4", domain_group="prod", domain="vc-enc1", enclosure="enc1", bay=4,
                   product="ProLiant BL460c Gen10", profile="app02")
    decider = Decider(policy.ruleset, GUARDS, [])
    decider.decide(hpe(6032, DEGRADED), other)
    decision = decider.decide(hpe(6050).model_copy(update={"time": T0 + timedelta(minutes=1)}), SERVER)
    assert (decision.rule, decision.action) == ("hpe-psu-failed", "alert")


def test_power_supply_correlation_window(policy: Policy) -> None:
    decider = Decider(policy.ruleset, GUARDS, [])
    decider.decide(ilo("PowerRedundancyLost", "Warning"), SERVER)
    late = decider.decide(ilo("PowerSupplyFailed").model_copy(update={"time": T0 + timedelta(minutes=11)}),
                          SERVER)
    assert (late.rule, late.action) == ("ilo-psu-failed", "alert")


@pytest.mark.parametrize("trap", [22013, 22018, 22008, 22005, 22027, 22046])
def test_enclosure_wide_oa_traps_set_enclosure_fault(policy: Policy, trap: int) -> None:
    decider, (decision,) = run(policy, [hpe(trap)])
    assert (decision.rule, decision.action) == ("hpe-enclosure-fault", "alert")
    assert decider.state.faulted_enclosures(T0.timestamp()) == {"enc1"}
    assert policy.ruleset.rules["hpe-enclosure-fault"].spec.enclosure_fault


def test_power_shed_fails_over_and_fences_the_enclosure(policy: Policy) -> None:
    decider, (decision,) = run(policy, [hpe(22021)])
    assert (decision.rule, decision.action) == ("hpe-blade-power-shed-shutdown", "failover")
    assert decider.state.faulted_enclosures(T0.timestamp()) == {"enc1"}


def test_blade_traps_do_not_fence_the_enclosure(policy: Policy) -> None:
    decider, _ = run(policy, [hpe(22054), hpe(22053, DEGRADED), hpe(1026), dell(2241, "CPU0011")])
    assert decider.state.faulted_enclosures(T0.timestamp()) == set()


def test_ambiguous_hpe_cpu_trap_keys_on_condition_bits(policy: Policy) -> None:
    """cpqSeCpuStatusChange: failed (flags 16) fails over; degraded (12), ok (8) or no flags only alert."""
    for flags, action in (("16", "failover"), ("17", "failover"), ("12", "alert"), ("8", "alert")):
        event = hpe(1006).model_copy(update={"varbinds": {SYS_NAME: "enc1-bay3", HO_TRAP_FLAGS: flags}})
        _decider, (decision,) = run(policy, [event])
        assert decision.action == action, flags
    bare = Event(source="snmp", time=T0, trap_oid="1.3.6.1.4.1.232.0.1006")
    _decider, (decision,) = run(policy, [bare])
    assert (decision.rule, decision.action) == ("hpe-cpu-status-changed", "alert")


@pytest.mark.parametrize("message_id", ["CPU0000", "IDRAC.2.8.CPU0000", "IDRAC.2.9.CPU0000"])
def test_dell_message_ids_match_bare_and_prefixed(policy: Policy, message_id: str) -> None:
    _decider, (decision,) = run(policy, [rf(message_id, event_id="2241")])
    assert (decision.rule, decision.action) == ("dell-rf-cpu-ierr", "failover")


@pytest.mark.parametrize("version", ["1.0", "2.3", "3.11"])
def test_ilo_rules_match_any_registry_version(policy: Policy, version: str) -> None:
    _decider, (decision,) = run(policy, [rf(f"iLOEvents.{version}.SeCpuUncorrectableError")])
    assert (decision.rule, decision.action) == ("ilo-cpu-uncorrectable", "failover")


def test_snmp_rules_ignore_redfish_events_and_back(policy: Policy) -> None:
    """A Redfish record carrying an iDRAC EventId (= trap number) does not reach the SNMP rules."""
    decision = run(policy, [fixture("idrac-tmp0110")])[1][0]
    assert decision.rule == "dell-rf-temperature-critical"
    assert all(not rid.startswith("dell-temperature") for rid, _why in decision.near)


def test_unknown_server_never_fails_over(policy: Policy) -> None:
    decision = Decider(policy.ruleset, GUARDS, []).decide(hpe(1026), None)
    assert decision.rule == "hpe-cpu-uncorrectable"
    assert decision.action == "alert" and decision.guard is not None


# --- the packs review's principles (2026-12-01) ------------------------------------------------------------


def test_power_supply_correlations_fail_over_only_on_the_servers_power(policy: Policy) -> None:
    """One failed hot-swap supply of two is also the redundancy loss: the pair fails over only when the
    BMC reads the server Off, and never onto a spare in the same enclosure."""
    pairs = [r for r in policy.ruleset.rules.values()
             if r.spec.action == "failover" and r.spec.labels.get("component") == "power-supply"]
    assert len(pairs) == 10
    for rule in pairs:
        assert rule.spec.requires is not None, rule.id
        assert rule.spec.confirm_by == "powered_off" and rule.spec.enclosure_fault, rule.id


def test_supply_and_fan_failures_are_enclosure_faults_and_alerts(policy: Policy) -> None:
    ids = ["hpe-psu-failed", "hpe-power-redundancy-lost", "hpe-fan-failed", "hpe-fan-redundancy-lost",
           "ilo-psu-failed", "ilo-power-redundancy-lost", "ilo-fan-failed", "ilo-fan-redundancy-lost",
           "dmtf-psu-failed", "dmtf-psu-group-degraded", "dmtf-fan-failed", "dell-psu-failure",
           "dell-fan-failure", "dell-rf-psu-failure", "dell-rf-psu-input-lost", "dell-rf-fan-failure",
           "hpe-enclosure-fault", "hpe-blade-power-on-refused"]
    for rid in ids:
        spec = policy.ruleset.rules[rid].spec
        assert (spec.action, spec.enclosure_fault) == ("alert", True), rid


def test_thermal_and_outside_power_failovers_leave_the_enclosure(policy: Policy) -> None:
    """A blade shut down by heat or by power from outside it fails over only to another enclosure."""
    for rule in policy.ruleset.rules.values():
        component = rule.spec.labels.get("component", "")
        thermal = component == "thermal" and rule.id != "ilo-auto-shutdown"  # its cause is not said
        if rule.spec.action == "failover" and (thermal or component.startswith("enclosure")):
            assert rule.spec.enclosure_fault, rule.id


def test_an_ilo_that_does_not_answer_the_power_capper_is_not_a_dead_blade(policy: Policy) -> None:
    _decider, (decision,) = run(policy, [hpe(22055)])
    assert (decision.rule, decision.action) == ("hpe-blade-not-responding", "alert")


@pytest.mark.parametrize(("cause", "rule"), [(None, "hpe-auto-shutdown"), ("3", "hpe-auto-shutdown"),
                                             ("1", "hpe-auto-shutdown-enclosure-cause"),
                                             ("2", "hpe-auto-shutdown-enclosure-cause"),
                                             ("4", "hpe-auto-shutdown-enclosure-cause"),
                                             ("5", "hpe-auto-shutdown-enclosure-cause")])
def test_auto_shutdown_reads_its_cause(policy: Policy, cause: str | None, rule: str) -> None:
    event = hpe(9024, **({SHUTDOWN_CAUSE: cause} if cause else {}))
    decider, (decision,) = run(policy, [event])
    assert (decision.rule, decision.action) == (rule, "failover")
    fenced = decider.state.faulted_enclosures(T0.timestamp())
    assert fenced == ({"enc1"} if rule.endswith("enclosure-cause") else set())


@pytest.mark.parametrize(("kind", "area", "rule", "action"), [
    (6, 1, "hpe-power-failure-error", "failover"), (4, 2, "hpe-power-failure-error", "failover"),
    (7, 1, "hpe-power-failure-error", "failover"), (8, 1, "hpe-power-failure-error", "failover"),
    (2, 1, "hpe-power-failure-thermal", "failover"), (9, 2, "hpe-power-failure-thermal", "failover"),
    (3, 1, "hpe-power-failure-input-loss", "failover"), (3, 13, "hpe-power-failure-input-loss", "failover"),
    (6, 11, "hpe-power-failure-enclosure-area", "failover"), (6, 13, "hpe-power-failure-enclosure-area",
                                                             "failover"),
    (5, 1, "hpe-power-failure-standby", "alert"), (5, 13, "hpe-power-failure-standby", "alert")])
def test_power_failure_error_reads_its_type_and_area(policy: Policy, kind: int, area: int, rule: str,
                                                     action: str) -> None:
    _decider, (decision,) = run(policy, [power_failure(kind, area)])
    assert (decision.rule, decision.action) == (rule, action)
    spec = policy.ruleset.rules[rule].spec
    assert spec.confirm_by == ("powered_off" if "input" in rule or "area" in rule else "unhealthy")


def test_the_auto_shutdown_cancel_clears_it(policy: Policy) -> None:
    assert "hpe-auto-shutdown" in policy.ruleset.rules["hpe-auto-shutdown-cancelled"].spec.clears
    assert "ilo-auto-shutdown" in policy.ruleset.rules["ilo-auto-shutdown-cancelled"].spec.clears


def test_the_builtin_packs_take_the_fast_parser() -> None:
    """Every daemon loads the packs at start: a pack with no `&` is parsed by libyaml's C parser (no
    anchor, so no alias can appear), four times faster than the alias-refusing Python loader."""
    from rules.loader import builtin_packs

    assert [p.name for p in builtin_packs() if "&" in p.read_text(encoding="utf-8")] == []
