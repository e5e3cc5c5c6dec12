"""Matchers: the small language rule files use to test one value.

A matcher is written as:
- a scalar: equality (`trap_oid: 1.3.6.1.4.1.232.0.1026`; strings compare exactly, numbers numerically);
- a list: any of (`severity: [Warning, Critical]`);
- a mapping with one operator:
  `eq`, `ne`, `in`, `not_in`, `glob` ("enc1-*"), `regex` (searched), `gt`/`ge`/`lt`/`le` (numbers),
  `oid_prefix` ("1.3.6.1.4.1.232.0." matches the OID itself and everything below it),
  `message_id` ("iLOEvents.*.PowerSupplyFailed": registry and name, any registry version; on the
  `message_id` field a plain string or list of strings already means this),
  `at_least` (severity: OK < Warning < Major < Critical), `exists` (true/false),
  `bits` ({shift: 2, mask: 7, eq: 4} on an integer, e.g. HPE cpqHoTrapFlags condition = failed),
  `not` (a matcher), `any` / `all` (lists of matchers).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.core.events import severity_rank, split_message_id

Scalar = str | int | float | bool

_OPS = {"eq", "ne", "in", "not_in", "glob", "regex", "gt", "ge", "lt", "le", "oid_prefix", "message_id",
        "at_least", "exists", "bits", "not", "any", "all"}


@dataclass(frozen=True, slots=True)
class Matcher:
    test: Callable[[Any], bool]
    text: str
    """How the matcher reads, for explanations: `== 1.3.6…`, `glob enc1-*`."""
    key: tuple[str, str] | None = None
    """An index key when the matcher pins the value: ("eq", value), ("prefix", oid), ("msg", name)."""
    keys: tuple[tuple[str, str], ...] = ()
    """Several index keys (a list of values)."""


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _same(a: Any, b: Scalar) -> bool:
    if a is None:
        return False
    if isinstance(b, bool):
        return str(a).strip().lower() == str(b).lower()
    if isinstance(b, int | float):
        n = _num(a)
        return n is not None and n == float(b)
    return str(a) == b


def _scalar(v: Any, where: str) -> Scalar:
    if isinstance(v, str | int | float | bool):
        return v
    raise ValueError(f"{where}: expected a string or number, got {type(v).__name__}")


def message_id_pattern(pattern: str) -> tuple[str | None, str, Callable[[Any], bool]]:
    """"iLOEvents.*.PowerSupplyFailed" or "iLOEvents.PowerSupplyFailed" or "FAN0001" (any registry)."""
    parts = pattern.split(".")
    name = parts[-1]
    registry = parts[0] if len(parts) > 1 else None
    if not name or ("*" in name and registry is None):
        raise ValueError(f"message_id pattern {pattern!r} needs a message name")
    name_re = re.compile(fnmatch.translate(name), re.IGNORECASE)
    reg_re = re.compile(fnmatch.translate(registry), re.IGNORECASE) if registry else None

    def test(value: Any) -> bool:
        if not isinstance(value, str) or not value:
            return False
        reg, key = split_message_id(value)
        if not name_re.match(key):
            return False
        if reg_re is None:
            return True
        return reg is not None and bool(reg_re.match(reg))

    return registry, name, test


def field_matcher(field: str, spec: Any, where: str) -> Matcher:
    """The matcher for an event field: on `message_id`, plain strings are message-id patterns that
    ignore the registry version ("iLOEvents.*.PowerSupplyFailed", "iLOEvents.PowerSupplyFailed",
    "FAN0001"), and a list of them matches any."""
    if field == "message_id":
        if isinstance(spec, str):
            return compile_matcher({"message_id": spec}, where)
        if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
            parts = [compile_matcher({"message_id": s}, where) for s in spec]
            return Matcher(lambda v: any(p.test(v) for p in parts), " or ".join(p.text for p in parts),
                           keys=tuple(p.key for p in parts if p.key) if all(p.key for p in parts) else ())
    return compile_matcher(spec, where)


def compile_matcher(spec: Any, where: str = "matcher") -> Matcher:
    """Compile a matcher spec; ValueError (with `where`) when it is malformed."""
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where}: an empty list matches nothing")
        values = [_scalar(v, where) for v in spec]
        return Matcher(lambda v: any(_same(v, x) for x in values), f"in {values}",
                       keys=tuple(("eq", str(x)) for x in values))
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise ValueError(f"{where}: a matcher mapping has exactly one operator, got {sorted(spec)}")
        ((op, arg),) = spec.items()
        if op not in _OPS:
            raise ValueError(f"{where}: unknown operator {op!r} (known: {', '.join(sorted(_OPS))})")
        return _operator(str(op), arg, where)
    value = _scalar(spec, where)
    return Matcher(lambda v: _same(v, value), f"== {value}", key=("eq", str(value)))


def _operator(op: str, arg: Any, where: str) -> Matcher:
    if op == "eq":
        return compile_matcher(_scalar(arg, where), where)
    if op == "ne":
        value = _scalar(arg, where)
        return Matcher(lambda v: not _same(v, value), f"!= {value}")
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"{where}: {op} takes a non-empty list")
        inner = compile_matcher(arg, where)
        if op == "in":
            return inner
        return Matcher(lambda v: v is not None and not inner.test(v), f"not {inner.text}")
    if op == "glob":
        pattern = str(_scalar(arg, where))
        rx = re.compile(fnmatch.translate(pattern))
        return Matcher(lambda v: v is not None and bool(rx.match(str(v))), f"glob {pattern}")
    if op == "regex":
        try:
            rx = re.compile(str(_scalar(arg, where)))
        except re.error as exc:
            raise ValueError(f"{where}: bad regular expression: {exc}") from None
        return Matcher(lambda v: v is not None and bool(rx.search(str(v))), f"regex {rx.pattern}")
    if op in ("gt", "ge", "lt", "le"):
        bound = _num(arg)
        if bound is None:
            raise ValueError(f"{where}: {op} takes a number")
        cmp: Callable[[float, float], bool] = {
            "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
            "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}[op]

        def numeric(v: Any) -> bool:
            n = _num(v)
            return n is not None and cmp(n, bound)

        return Matcher(numeric, f"{op} {arg}")
    if op == "oid_prefix":
        prefix = str(_scalar(arg, where)).strip(".")
        if not re.fullmatch(r"\d+(\.\d+)*", prefix):
            raise ValueError(f"{where}: oid_prefix {prefix!r} is not a dotted OID")

        def under(v: Any) -> bool:
            s = str(v).strip(".") if v is not None else ""
            return s == prefix or s.startswith(prefix + ".")

        return Matcher(under, f"under {prefix}", key=("prefix", prefix))
    if op == "message_id":
        pattern = str(_scalar(arg, where))
        _registry, name, test = message_id_pattern(pattern)
        key = ("msg", name.lower()) if "*" not in name and "?" not in name else None
        return Matcher(test, f"message id {pattern}", key=key)
    if op == "at_least":
        word = str(_scalar(arg, where))
        rank = severity_rank(word)
        if rank < 0:
            raise ValueError(f"{where}: unknown severity {word!r} (OK, Warning, Major, Critical)")
        return Matcher(lambda v: severity_rank(v if isinstance(v, str) else None) >= rank,
                       f"severity at least {word}")
    if op == "exists":
        want = bool(arg)
        return Matcher(lambda v: (v is not None) == want, "exists" if want else "absent")
    if op == "bits":
        if not isinstance(arg, dict) or not set(arg) <= {"shift", "mask", "eq", "in"} or (
                ("eq" in arg) == ("in" in arg)):
            raise ValueError(f"{where}: bits takes {{shift, mask, eq}} or {{shift, mask, in}}")
        shift, mask = int(arg.get("shift", 0)), int(arg.get("mask", -1))
        wanted = {int(x) for x in (arg["in"] if "in" in arg else [arg["eq"]])}

        def bits(v: Any) -> bool:
            n = _num(v)
            return n is not None and n == int(n) and ((int(n) >> shift) & mask) in wanted

        return Matcher(bits, f"(value >> {shift}) & {mask} in {sorted(wanted)}")
    if op == "not":
        inner = compile_matcher(arg, where)
        return Matcher(lambda v: not inner.test(v), f"not ({inner.text})")
    # any / all
    if not isinstance(arg, list) or not arg:
        raise ValueError(f"{where}: {op} takes a non-empty list of matchers")
    parts = [compile_matcher(a, f"{where}.{op}[{i}]") for i, a in enumerate(arg)]
    if op == "any":
        return Matcher(lambda v: any(p.test(v) for p in parts), " or ".join(p.text for p in parts))
    return Matcher(lambda v: all(p.test(v) for p in parts), " and ".join(p.text for p in parts))
