"""The lab's errors; the HTTP front ends map each onto a status and a body."""

from __future__ import annotations

from typing import Any

from lab.fencing import FenceToken


class LabError(Exception):
    """A request the world refuses; `status` is the HTTP status the front ends answer with."""

    status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(LabError):
    status = 400


class NotFound(LabError):
    status = 404


class Conflict(LabError):
    status = 409


class InjectedFailure(LabError):
    status = 500


class StaleFence(Conflict):
    """A request whose fencing token is older than the newest seen for its job (refused, 409)."""

    def __init__(self, token: FenceToken, highest: int, highest_monitor: str) -> None:
        super().__init__(
            f"stale fencing token: job {token.job} epoch {token.epoch} < {highest} (monitor {token.monitor})"
        )
        self.token = token
        self.highest = highest
        self.highest_monitor = highest_monitor

    def view(self) -> dict[str, Any]:
        return {**self.token.fields(), "highest": self.highest, "highest_monitor": self.highest_monitor}


class InvalidPowerState(LabError):
    """The iLO quirk: a reset that makes no sense in the current power state (ForceOff on Off, On on On)."""

    status = 400


class UnknownResetType(LabError):
    status = 400


class RedfishBadRequest(BadRequest):
    """A Redfish request the EventService refuses, with the Base registry MessageId the BMC answers with."""

    def __init__(self, message: str, message_id: str = "Base.1.4.PropertyValueFormatError") -> None:
        super().__init__(message)
        self.message_id = message_id
