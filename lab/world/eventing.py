"""Redfish eventing: each BMC's EventService, its subscriptions, and the events it raises and
delivers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from lab.traps import HARDWARE_FAULTS, SYS_NAME
from lab.world.catalogue import (
    EVENT_TYPES,
    FOREIGN_CONTEXT,
    FOREIGN_DESTINATION,
    PROTOCOLS,
    REGISTRY_PREFIXES,
    RETRY_POLICIES,
    Health,
    HttpHeaderForm,
)
from lab.world.errors import BadRequest, Conflict, NotFound, RedfishBadRequest
from lab.world.power import PowerPart
from lab.world.state import EventServiceState, EventSink, Subscription, is_loopback_host


class EventingPart(PowerPart):
    def event_service(self, server_id: str) -> EventServiceState:
        server = self.server(server_id)
        if server.product is None:
            raise NotFound(f"bay {server.id} is empty: there is no BMC")
        state = self.event_services.get(server.id)
        if state is None:
            state = self.event_services[server.id] = EventServiceState()
        return state

    def add_event_sink(self, sink: EventSink) -> None:
        self._event_sinks.append(sink)

    def remove_event_sink(self, sink: EventSink) -> None:
        if sink in self._event_sinks:
            self._event_sinks.remove(sink)

    def configure_event_service(
        self, server_id: str, enabled: bool | None = None, http_headers: HttpHeaderForm | None = None
    ) -> EventServiceState:
        state = self.event_service(server_id)
        if enabled is not None:
            state.enabled = enabled
        if http_headers is not None:
            state.http_headers = http_headers
        return state

    def add_subscription(self, server_id: str, body: object) -> Subscription:
        """POST /redfish/v1/EventService/Subscriptions: validate like a BMC, refuse non-loopback targets."""
        state = self.event_service(server_id)
        if not isinstance(body, dict):
            raise RedfishBadRequest("The request body must be a JSON object.", "Base.1.4.MalformedJSON")
        missing = [p for p in ("Destination", "Protocol") if p not in body]
        if missing:
            raise RedfishBadRequest(
                f"The create operation requires the properties {', '.join(missing)}.",
                "Base.1.4.CreateFailedMissingReqProperties",
            )
        destination = body["Destination"]
        if not isinstance(destination, str):
            raise RedfishBadRequest("Destination must be a string.", "Base.1.4.PropertyValueTypeError")
        _check_destination(destination)
        protocol = body["Protocol"]
        if protocol not in PROTOCOLS:
            raise RedfishBadRequest(
                f"The value {protocol!r} for the property Protocol is not in the list of acceptable values.",
                "Base.1.4.PropertyValueNotInList",
            )
        context = body.get("Context")
        if context is not None and not isinstance(context, str):
            raise RedfishBadRequest("Context must be a string.", "Base.1.4.PropertyValueTypeError")
        event_types = _string_list(body, "EventTypes", EVENT_TYPES)
        prefixes = _string_list(body, "RegistryPrefixes", REGISTRY_PREFIXES)
        policy = body.get("DeliveryRetryPolicy", "RetryForever")
        if policy not in RETRY_POLICIES:
            raise RedfishBadRequest(
                f"The value {policy!r} for DeliveryRetryPolicy is not in the list of acceptable values.",
                "Base.1.4.PropertyValueNotInList",
            )
        for key in ("SubscriptionType", "EventFormatType"):
            value = body.get(key)
            if value is not None and value not in ("RedfishEvent", "Event"):
                raise RedfishBadRequest(
                    f"The value {value!r} for {key} is not supported.", "Base.1.4.PropertyValueNotInList"
                )
        headers = _http_headers(body.get("HttpHeaders"), state.http_headers)
        sid = str(state.next_subscription)
        state.next_subscription += 1
        sub = Subscription(sid, destination, "Redfish", context, event_types, prefixes, headers, policy)
        state.subscriptions[sid] = sub
        return sub

    def subscription(self, server_id: str, sid: str) -> Subscription:
        try:
            return self.event_service(server_id).subscriptions[sid]
        except KeyError:
            raise NotFound(f"unknown subscription {sid}") from None

    def patch_subscription(self, server_id: str, sid: str, body: object) -> Subscription:
        sub = self.subscription(server_id, sid)
        if not isinstance(body, dict):
            raise RedfishBadRequest("The request body must be a JSON object.", "Base.1.4.MalformedJSON")
        writable = {"Context", "DeliveryRetryPolicy", "HttpHeaders"}
        readonly = sorted(set(body) - writable)
        if readonly:
            raise RedfishBadRequest(
                f"The properties {', '.join(readonly)} cannot be changed.", "Base.1.4.PropertyNotWritable"
            )
        if "Context" in body:
            if body["Context"] is not None and not isinstance(body["Context"], str):
                raise RedfishBadRequest("Context must be a string.", "Base.1.4.PropertyValueTypeError")
            sub.context = body["Context"]
        if "DeliveryRetryPolicy" in body:
            if body["DeliveryRetryPolicy"] not in RETRY_POLICIES:
                raise RedfishBadRequest(
                    "DeliveryRetryPolicy is not in the list of acceptable values.",
                    "Base.1.4.PropertyValueNotInList",
                )
            sub.retry_policy = body["DeliveryRetryPolicy"]
        if "HttpHeaders" in body:
            sub.http_headers = _http_headers(body["HttpHeaders"], self.event_service(server_id).http_headers)
        return sub

    def delete_subscription(self, server_id: str, sid: str) -> Subscription:
        sub = self.subscription(server_id, sid)
        del self.event_service(server_id).subscriptions[sid]
        return sub

    def seed_foreign_subscription(self, server_id: str) -> Subscription:
        """The subscription of another consumer (a different management tool) on this BMC."""
        return self.add_subscription(
            server_id,
            {
                "Destination": FOREIGN_DESTINATION,
                "Protocol": "Redfish",
                "Context": FOREIGN_CONTEXT,
                "EventTypes": ["Alert"],
                "HttpHeaders": [{"Authorization": "Bearer other-consumer-secret"}],
            },
        )

    def raise_event(
        self,
        server_id: str,
        message_id: str,
        *,
        severity: str | None = None,
        message: str | None = None,
        message_args: list[str] | None = None,
        health: Health | None = None,
        event_type: str = "Alert",
        origin: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Raise one event on a blade's BMC (optionally setting its health); returns the Event payload.

        The payload goes to every sink (lab.bmc delivers it to the subscriptions and the SSE streams)."""
        server = self.server(server_id)
        state = self.event_service(server.id)
        if not server.installed:
            raise Conflict(f"server {server.id} is not inserted: its BMC is not running")
        if not message_id.strip():
            raise BadRequest("message_id must not be empty")
        if health is not None:
            server.health = health
        seq = state.next_event
        state.next_event += 1
        origin_path = origin or "/redfish/v1/Systems/1"
        key = message_id.rsplit(".", 1)[-1]
        record: dict[str, Any] = {
            "MemberId": "0",
            "EventId": event_id or str(seq),
            "EventType": event_type,
            "EventTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "MessageId": message_id,
            "Message": message if message is not None else f"{key} on {server.enclosure} bay {server.bay}.",
            "MessageArgs": [str(a) for a in (message_args or [])],
            "OriginOfCondition": {"@odata.id": origin_path},
            "Oem": {
                "Hpe": {
                    "@odata.type": "#HpeEvent.v2_1_0.HpeEvent",
                    "Resource": origin_path,
                    "EnclosureName": server.enclosure,
                    "BayNumber": server.bay,
                }
            },
        }
        if severity is not None:
            record["MessageSeverity"] = severity
            record["Severity"] = severity
        payload: dict[str, Any] = {
            "@odata.type": "#Event.v1_7_0.Event",
            "Id": str(seq),
            "Name": "Events",
            "Events": [record],
        }
        state.events.append({"time": time.time(), "id": seq, "event": payload})
        if state.enabled and not self._closed:
            for sink in list(self._event_sinks):
                sink(server, payload)
        return payload

    def hardware_fault(self, server_id: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A hardware fault on a blade as its iLO reports it: the health turns Critical, the Redfish event
        goes to the BMC's subscriptions; returns that event and the trap the iLO sends (to send by the
        caller: {"source", "trap_oid", "varbinds"})."""
        fault = HARDWARE_FAULTS.get(kind)
        if fault is None:
            raise BadRequest(f"unknown hardware fault {kind!r}; known: {', '.join(sorted(HARDWARE_FAULTS))}")
        server = self.server(server_id)
        if server.product is None:
            raise NotFound(f"bay {server.id} is empty: there is no BMC")
        payload = self.raise_event(server.id, fault.message_id, severity=fault.severity,
                                   message=f"{fault.description} on {server.enclosure} bay {server.bay}",
                                   health="Critical", origin="/redfish/v1/Systems/1/Processors/1")
        host = self.hosts.get(server.id)
        varbinds: dict[str, str | int] = {SYS_NAME: host.name if host else server.id, **fault.varbinds}
        trap = {"source": server.bmc_ip, "trap_oid": fault.trap_oid, "varbinds": varbinds}
        return payload, trap

    def record_delivery(self, server_id: str, entry: dict[str, Any]) -> None:
        state = self.event_services.get(server_id)
        if state is not None:
            state.deliveries.append({"time": time.time(), **entry})

    def close(self) -> None:
        """Cancel every pending transition (at shutdown)."""
        self._closed = True
        for server in self.servers.values():
            self._cancel_timer(server)



def _check_destination(destination: str) -> None:
    """The lab delivers only to loopback addresses: http(s)://127.x.y.z|[::1]|localhost[:port]/..."""
    parts = urlsplit(destination)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RedfishBadRequest(
            f"The value {destination!r} for Destination is not an http(s) URL.",
            "Base.1.4.PropertyValueFormatError",
        )
    if not is_loopback_host(parts.hostname):
        raise RedfishBadRequest(
            f"The lab delivers events only to loopback addresses, not to {parts.hostname}.",
            "Base.1.4.PropertyValueFormatError",
        )
    try:
        _ = parts.port
    except ValueError:
        raise RedfishBadRequest(
            f"The value {destination!r} for Destination has an invalid port.",
            "Base.1.4.PropertyValueFormatError",
        ) from None


def _string_list(body: dict[str, Any], key: str, allowed: tuple[str, ...]) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RedfishBadRequest(f"{key} must be an array of strings.", "Base.1.4.PropertyValueTypeError")
    bad = [v for v in value if v not in allowed]
    if bad:
        raise RedfishBadRequest(
            f"The value {bad[0]!r} for the property {key} is not in the list of acceptable values.",
            "Base.1.4.PropertyValueNotInList",
        )
    return list(value)


def _http_headers(value: object, form: HttpHeaderForm) -> dict[str, str]:
    """HttpHeaders as the schema says (an array of {name: value} objects) or as iLO 6 documents it (one
    object); `form` says which shapes this BMC accepts."""
    if value is None:
        return {}
    accepted: tuple[str, ...] = {"any": ("array", "object"), "array": ("array",), "object": ("object",)}.get(
        form, ()
    )
    if isinstance(value, list):
        shape, items = "array", value
    elif isinstance(value, dict):
        shape, items = "object", [value]
    else:
        raise RedfishBadRequest("HttpHeaders must be an array of objects.", "Base.1.4.PropertyValueTypeError")
    if shape not in accepted:
        raise RedfishBadRequest(
            f"HttpHeaders as an {shape} is not supported by this service.",
            "Base.1.4.PropertyValueTypeError" if accepted else "Base.1.4.PropertyUnknown",
        )
    headers: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in item.items()
        ):
            raise RedfishBadRequest(
                "HttpHeaders entries must map header names to strings.", "Base.1.4.PropertyValueTypeError"
            )
        headers.update(item)
    return headers
