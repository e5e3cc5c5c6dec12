"""Every error the monitor raises on purpose, under one root (`MonitorError`), in one module.

    MonitorError
    ├── ConfigError            configuration files: every problem as FILE:LINE: field: message
    ├── StartupError           the daemon cannot start (the message says why, for the operator)
    ├── StoreError             the store could not do what was asked
    │   ├── StoreUnavailable       cannot be reached right now: try again
    │   ├── LostOwnership          a save for a job another monitor took over
    │   ├── MembershipLost         another process holds this monitor's name
    │   └── ActiveJobExists        at most one active job per server
    ├── JobRejected            a job was not created
    │   ├── UnknownServer
    │   └── ShuttingDown
    ├── FenceLost              this monitor may no longer act for the job
    │   ├── LeaseLost              its lease ran out
    │   └── FenceRefused           the outside system refused a stale fencing token
    ├── Parked                 a job stopped at a safe point for shutdown
    ├── DuplicateInstance      another live monitor has this name
    ├── ApiError               the command line got no answer from the monitor's API
    └── AdapterError           an outside system (BMC, manager, discovery, broker) failed; leaves name what
        ├── AdapterTimeout, AdapterUnavailable, AuthenticationFailed, NotFound
        ├── OperationRejected      the system answered and refused (`status`: its HTTP status)
        └── IdentityMismatch       the endpoint leads to another machine than the inventory's

`error_for_status` is the one mapping from an HTTP answer to an adapter error.
"""

from __future__ import annotations

from dataclasses import dataclass


class MonitorError(Exception):
    """Root of every error the monitor raises on purpose."""


# --- operator actions (silences, guards, return to service) --------------------------------------


class OperatorRefused(MonitorError):
    """An operator's request (silence, guards reset, spare, failback) that was refused; the message says
    why, `status` is the HTTP answer (400 bad, 404 unknown, 409 conflict, 503 cannot be read now)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# --- configuration and start-up ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ConfigError(MonitorError):
    """One or more problems in configuration files; `issues` lists every one."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


class StartupError(MonitorError):
    """The daemon cannot start; the message says why, for the operator."""


# --- the store -----------------------------------------------------------------------------------


class StoreError(MonitorError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (a database restarting, a locked file): try again."""


class LostOwnership(StoreError):
    """This monitor no longer owns the job (another monitor took it over after our lease expired):
    the job must not act any further here."""

    def __init__(self, job: int, owner: str | None) -> None:
        super().__init__(f"job {job} is now owned by {owner or 'nobody'}")
        self.job = job
        self.owner = owner


class MembershipLost(StoreError):
    """Another process holds this monitor's name in the cluster (it joined after this one's lease and
    fence grace ran out): this process must stop acting and exit."""


class ActiveJobExists(StoreError):
    def __init__(self, server: str, job: int) -> None:
        super().__init__(f"server {server} already has active job {job}")
        self.server = server
        self.job = job


# --- jobs ------------------------------------------------------------------------------------------


class JobRejected(MonitorError):
    """A job was not created; the message says why."""


class UnknownServer(JobRejected):
    def __init__(self, server: str) -> None:
        super().__init__(f"unknown server {server}")
        self.server = server


class ShuttingDown(JobRejected):
    """The runner is stopping and accepts no new jobs."""


# --- leases and fencing ----------------------------------------------------------------------------


class FenceLost(MonitorError):
    """This monitor may no longer act for the job (its lease, or the action's deadline, ran out, or
    another monitor took the job over): the action was not sent."""


class FenceRefused(FenceLost):
    """The outside system refused the request for a stale fencing token: another monitor has acted for
    the job under a newer epoch; nothing was changed. Not an adapter error: the job stops here."""


class LeaseLost(FenceLost):
    """This monitor's lease ran out (or another process took its name): stop acting on the job;
    whoever holds the store next (another monitor, or this one once it is back) carries it on."""


class LeaseLapsed(LeaseLost):
    """The lease was renewed after it had ended (a pause, or the store away): the job may have been
    taken over meanwhile. Its task stops; it runs again at once if the store still says it is ours."""


class Parked(MonitorError):
    """The job stopped at a safe point for shutdown (waiting for its domain group, nothing in flight);
    it resumes at the next start."""


class DuplicateInstance(MonitorError):
    """Another live monitor has this monitor's instance name: this one refuses to start."""


# --- the command line's client -----------------------------------------------------------------------


class ApiError(MonitorError):
    """The command line could not get an answer from the monitor's API."""


# --- adapters --------------------------------------------------------------------------------------


class AdapterError(MonitorError):
    """Root of every error an adapter raises."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class AdapterTimeout(AdapterError):
    """The outside system did not answer in time."""


class AdapterUnavailable(AdapterError):
    """The outside system could not be reached (connection refused, TLS failure, DNS)."""


class AuthenticationFailed(AdapterError):
    """The outside system refused our credentials."""


class OperationRejected(AdapterError):
    """The outside system answered and refused the operation (with its own reason)."""

    def __init__(self, message: str, *, endpoint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.status = status


class NotFound(AdapterError):
    """The outside system does not know the object."""


class IdentityMismatch(AdapterError):
    """The machine the endpoint leads to is not the one the inventory describes (its serial number or
    UUID differs, or it does not report one the inventory gives): nothing was sent to it."""

    def __init__(self, message: str, *, endpoint: str | None = None, field: str = "",
                 expected: str = "", actual: str | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.field = field
        self.expected = expected
        self.actual = actual


def error_for_status(status: int, message: str, *, endpoint: str | None = None) -> AdapterError:
    """The one mapping from a refused HTTP request to an adapter error: 401/403 AuthenticationFailed,
    404 NotFound, any other status OperationRejected (with the status kept). `message` is what the
    outside system said, prefixed by what was asked."""
    if status in (401, 403):
        return AuthenticationFailed(message, endpoint=endpoint)
    if status == 404:
        return NotFound(message, endpoint=endpoint)
    return OperationRejected(message, endpoint=endpoint, status=status)
