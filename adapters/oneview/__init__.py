"""HPE OneView as the profile manager (`manager.kind: oneview`): `client` speaks the REST API (version,
session, errors, collections), `manager` maps it onto the monitor's ports (inventory, spare labels, the
profile move as a followed task, power through the appliance)."""

from __future__ import annotations

from adapters.oneview.client import OneViewClient, OneViewFenceRejected, error_for, oneview_message
from adapters.oneview.manager import BmcAccess, OneViewManager, ProfileInTransition, task_status

__all__ = [
    "BmcAccess",
    "OneViewClient",
    "OneViewFenceRejected",
    "OneViewManager",
    "ProfileInTransition",
    "error_for",
    "oneview_message",
    "task_status",
]
