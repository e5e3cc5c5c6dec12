"""The lab's fixed facts: products (models, generations, spans), faults, reset types, event types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

PowerState = Literal["On", "Off", "PoweringOn", "PoweringOff"]


Health = Literal["OK", "Warning", "Critical"]


BAYS_PER_ENCLOSURE: Final = 16


RESET_TYPES: Final = ("On", "ForceOn", "ForceOff", "GracefulShutdown", "ForceRestart", "PushPowerButton")


ONEVIEW_SERVER_FAULTS: Final = frozenset(
    {"oneview_task_error", "oneview_task_hangs", "oneview_etag_conflict"}
)
"""Faults of the OneView face (lab.oneview) for the tasks and profiles of one server (lab/API.md)."""
ONEVIEW_MANAGER_FAULTS: Final = frozenset({"oneview_unavailable", "oneview_sessions_expire"})
OME_SERVER_FAULTS: Final = frozenset({"ome_job_fails", "ome_job_hangs"})
"""Faults of the OME face (lab.ome) for the jobs that target or move off one server (lab/API.md)."""
OME_MANAGER_FAULTS: Final = frozenset({"ome_unavailable", "ome_session_expiry"})
SERVER_FAULTS: Final = frozenset(
    {"power_off_hangs", "power_on_fails", "bmc_timeout", "bmc_error", "move_error", "spare_missing",
     "bmc_slow", "bmc_down"} | ONEVIEW_SERVER_FAULTS | OME_SERVER_FAULTS
)
MANAGER_FAULTS: Final = frozenset({"manager_unavailable"} | ONEVIEW_MANAGER_FAULTS | OME_MANAGER_FAULTS)
"""Faults of a manager itself (no server or domain): `manager_unavailable` answers 503 to every
manager API call; the others are the OneView and OME faces' (lab.oneview, lab.ome)."""


DEFAULT_SLOW_S: Final = 1.0
"""`bmc_slow` without `delay_s`: seconds added to each of the BMC's answers."""


DOMAIN_FAULTS: Final = {
    "domain_incompatible": "incompatible",
    "domain_unmanaged": "unmanaged",
    "domain_unlicensed": "unlicensed",
}


FAULTS: Final = frozenset(SERVER_FAULTS | DOMAIN_FAULTS.keys() | MANAGER_FAULTS)


EVENT_TYPES: Final = ("StatusChange", "ResourceUpdated", "ResourceAdded", "ResourceRemoved", "Alert")
"""EventTypesForSubscription, as iLO 5 lists them."""


REGISTRY_PREFIXES: Final = ("iLOEvents", "ResourceEvent")


PROTOCOLS: Final = ("Redfish",)


RETRY_POLICIES: Final = ("TerminateAfterRetries", "SuspendRetries", "RetryForever", "RetryForeverWithBackoff")


DELIVERY_RETRY_ATTEMPTS: Final = 3
"""Retries after a failed delivery (so at most 1 + 3 POSTs per event and subscription)."""


FOREIGN_DESTINATION: Final = "https://127.0.0.9:9/other"


FOREIGN_CONTEXT: Final = "other-consumer"


FOREIGN_SUBSCRIPTION_SERVERS: Final = ("enc1-bay2",)
"""BMCs that start with a subscription of ANOTHER consumer (clients must never touch it)."""


HttpHeaderForm = Literal["any", "array", "object", "none"]


EVENT_HISTORY: Final = 500


@dataclass(frozen=True)
class Product:
    name: str
    family: Literal["ProLiant", "Integrity"]
    span: int
    ilo_model: str
    ilo_firmware: str
    bios_version: str
    cpu: str
    memory_gib: int


PRODUCTS: Final[dict[str, Product]] = {
    p.name: p
    for p in (
        Product(
            "ProLiant BL460c G7",
            "ProLiant",
            1,
            "iLO 3",
            "1.94 Jun 12 2019",
            "I27 05/05/2011",
            "Intel(R) Xeon(R) CPU X5675 @ 3.07GHz",
            96,
        ),
        Product(
            "ProLiant BL460c Gen8",
            "ProLiant",
            1,
            "iLO 4",
            "2.82 Feb 06 2023",
            "I31 05/24/2019",
            "Intel(R) Xeon(R) CPU E5-2670 v2 @ 2.50GHz",
            192,
        ),
        Product(
            "ProLiant BL460c Gen9",
            "ProLiant",
            1,
            "iLO 4",
            "2.82 Feb 06 2023",
            "I36 10/21/2019",
            "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz",
            256,
        ),
        Product(
            "ProLiant BL465c G5",
            "ProLiant",
            1,
            "iLO 2",
            "2.33 Apr 14 2016",
            "A13 02/23/2009",
            "Quad-Core AMD Opteron(tm) Processor 2384",
            32,
        ),
        Product(
            "ProLiant BL465c G7",
            "ProLiant",
            1,
            "iLO 3",
            "1.94 Jun 12 2019",
            "A19 05/05/2011",
            "AMD Opteron(tm) Processor 6176",
            128,
        ),
        Product(
            "Integrity BL860c i2",
            "Integrity",
            1,
            "iLO 3 (Integrity)",
            "T.01.25.03 Aug 03 2012",
            "01.21",
            "Intel(R) Itanium(R) Processor 9350",
            96,
        ),
        Product(
            "Integrity BL870c i2",
            "Integrity",
            2,
            "iLO 3 (Integrity)",
            "T.01.25.03 Aug 03 2012",
            "01.21",
            "Intel(R) Itanium(R) Processor 9350",
            192,
        ),
    )
}
