"""Redfish `#Event` payloads → normalized `monitor.core.events.Event`s, bounded (records, args, depth,
text) so that no payload can grow without limit; `NotAnEvent` for what is not one."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from adapters.redfish.client import (
    path_of,
)
from monitor.core.events import BMC_SERVICE_ATTRIBUTE, Event, split_message_id

log = logging.getLogger(__name__)


CONTEXT_PREFIX = "failover-monitor:"


MAX_RECORDS = 64


_MAX_ARGS = 32


_MAX_DEPTH = 8


_MAX_ITEMS = 100


_MAX_TEXT = 4096


_MAX_ID = 256


_SEVERITIES = {"ok": "OK", "warning": "Warning", "critical": "Critical"}


class NotAnEvent(ValueError):
    """The body is not a Redfish Event (the listener answers 400 with this message)."""


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def get_field(record: Mapping[str, Any], key: str) -> Any:
    """A property by name, tolerating wrong case (`MessageID`, `messageid`)."""
    if key in record:
        return record[key]
    folded = key.casefold()
    for k, v in record.items():
        if isinstance(k, str) and k.casefold() == folded:
            return v
    return None


class _Props:
    """A record's properties by name, tolerating wrong case like `get_field`, with the case-folded
    names made once per record (not once per missing property)."""

    __slots__ = ("_folded", "_record")

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record
        self._folded: dict[str, Any] | None = None

    def get(self, key: str) -> Any:
        record = self._record
        if key in record:
            return record[key]
        folded = self._folded
        if folded is None:
            folded = self._folded = {}
            for k, v in record.items():
                if isinstance(k, str):
                    folded.setdefault(k.casefold(), v)  # the first of two spellings, as get_field
        return folded.get(key.casefold())


def _text(value: object, limit: int = _MAX_TEXT) -> str | None:
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return str(value)[:limit]
    return None


def _bounded(value: object, depth: int = 0) -> Any:
    """A JSON value cut to a safe size: depth, items and text limited; non-finite numbers as text."""
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            return "…"
        return {str(k)[:200]: _bounded(v, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    if isinstance(value, list):
        if depth >= _MAX_DEPTH:
            return "…"
        return [_bounded(v, depth + 1) for v in value[:_MAX_ITEMS]]
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:_MAX_TEXT]


def _redact_context(value: object) -> Any:
    """Our Context carries the BMC's token: never keep it in an Event."""
    if isinstance(value, str) and value.startswith(CONTEXT_PREFIX):
        return CONTEXT_PREFIX + "…"
    return _bounded(value)


def _severity(record: _Props) -> str | None:
    for key in ("MessageSeverity", "Severity"):
        value = _text(record.get(key), 64)
        if value and value.strip():
            return _SEVERITIES.get(value.strip().lower(), value.strip())
    return None


def _origin(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("@odata.id")
    if isinstance(value, str) and value.strip():
        return path_of(value)[:_MAX_TEXT]
    return None


def _message_args(value: object) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items[:_MAX_ARGS]:
        text = _text(item, 1024)
        if text is None:
            text = "" if item is None else json.dumps(_bounded(item), ensure_ascii=False)[:1024]
        out.append(text)
    return out


_ROOT_ATTRIBUTES = (("Id", "EventPayloadId"), ("@odata.type", "EventPayloadType"), ("Oem", "EventPayloadOem"))


_RECORD_ATTRIBUTES = ("EventTimestamp", "MemberId", "EventGroupId", "Resolution", "LogEntry",
                      "OriginOfConditionUnavailable", "Oem")


def _record_event(
    record: _Props, root: _Props, *, sender: str | None, source: str,
    received: datetime, service: str | None,
) -> Event | None:
    message_id = record.get("MessageId")
    if not isinstance(message_id, str) or not message_id.strip():
        return None  # a MessageId is a string (Registry.Major.Minor.Key, or a bare key)
    message_id = message_id[:_MAX_ID].strip()
    attributes: dict[str, Any] = {}
    for key in _RECORD_ATTRIBUTES:
        value = record.get(key)
        if value is not None:
            attributes[key] = _bounded(value)
    if isinstance(attributes.get("LogEntry"), dict):
        attributes["LogEntry"] = _origin(attributes["LogEntry"])
    context = record.get("Context")
    if context is None:
        context = root.get("Context")
    if context is not None:
        attributes["Context"] = _redact_context(context)
    for key, name in _ROOT_ATTRIBUTES:
        value = root.get(key)
        if value is not None:
            attributes[name] = _bounded(value)
    if service is not None:
        attributes[BMC_SERVICE_ATTRIBUTE] = service
    registry, message_key = split_message_id(message_id)
    return Event(
        source=source,  # type: ignore[arg-type]  # checked by pydantic
        time=received,
        sender=sender,
        message_id=message_id,
        registry=registry,
        message_key=message_key,
        message=_text(record.get("Message")),
        message_args=_message_args(record.get("MessageArgs")),
        severity=_severity(record),
        origin=_origin(record.get("OriginOfCondition")),
        event_type=_text(record.get("EventType"), 64),
        event_id=_text(record.get("EventId"), _MAX_ID),
        attributes=attributes,
    )


def parse_event_payload(
    body: object, *, sender: str | None, source: str, received: datetime, service: str | None = None
) -> list[Event]:
    """A Redfish `#Event` payload (as pushed, or an SSE `data:` frame) -> one Event per EventRecord.

    Tolerant: `OriginOfCondition` as a string or `{"@odata.id"}`; bare (`FAN0001`) and prefixed
    (`iLOEvents.2.3.X`, `IDRAC.2.8.TMP0110`) MessageIds; `MessageID` (any case); `MessageSeverity`
    before the deprecated `Severity`; a bare EventRecord without the `Events` wrapper. `EventTimestamp`,
    `Oem` and the other record properties go to `attributes` (bounded in depth and size; our Context is
    redacted). Records without a MessageId are skipped. `service` (the BMC service the payload came
    from, when known) goes to `attributes.bmc_service`. Raises `NotAnEvent` when nothing in the body is
    an event record."""
    if not isinstance(body, dict):
        raise NotAnEvent(f"expected a JSON object (a Redfish Event), got {_kind(body)}")
    odata_type = get_field(body, "@odata.type")
    if isinstance(odata_type, str) and "MetricReport" in odata_type:
        raise NotAnEvent(f"a {odata_type} is a metric report, not an Event")
    records = get_field(body, "Events")
    root: Mapping[str, Any] = body
    if records is None:
        if get_field(body, "MessageId") is None:
            raise NotAnEvent("not a Redfish Event: no Events array and no MessageId")
        records, root = [body], {}
    if not isinstance(records, list):
        raise NotAnEvent(f"not a Redfish Event: Events is {_kind(records)}, not an array")
    if not records:
        raise NotAnEvent("the Event has no EventRecords (Events is empty)")
    events: list[Event] = []
    root_props = _Props(root)
    for record in records[:MAX_RECORDS]:
        if isinstance(record, dict):
            event = _record_event(_Props(record), root_props, sender=sender, source=source,
                                  received=received, service=service)
            if event is not None:
                events.append(event)
    if not events:
        raise NotAnEvent("no EventRecord in the Event has a MessageId")
    return events
