"""Request bodies for whatever version was negotiated, from plain Python values.

The client picks one version per api per broker (``BrokerConnection.api_version``), so the
same request must be buildable at, say, Metadata v1 and v8. kio has one generated dataclass
per version; ``build_request(api_key, version, values)`` fills the one of that version from a
dict of field values, recursively (nested entities as dicts, arrays as lists of dicts).

Rules: a value for a field the version does not have is dropped (e.g. ``rack_id`` below Fetch
v11), a field left out keeps its schema default, and a missing field without default is an
error naming it. Integer milliseconds are accepted for kio's timedelta fields. The plan of
each (schema) — which fields, which nested types, which conversions — is computed once.

Response bodies come back as kio objects; ``field(obj, name, default)`` reads a field that
older versions lack.
"""
from __future__ import annotations

import datetime
import functools
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, NamedTuple

from kio.index import load_request_schema

_TIMEDELTA_TYPES = ("timedelta_i32", "timedelta_i64")


class _FieldPlan(NamedTuple):
    name: str
    nested: type | None          # entity type of the field or of its array items
    is_array: bool
    is_timedelta: bool
    required: bool               # no default: a value must be given


def _unwrap(annotation: Any) -> tuple[type | None, bool]:
    """(nested entity type or None, is array) of a field annotation such as
    ``tuple[X, ...] | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        candidates = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = candidates[0] if len(candidates) == 1 else annotation
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return (item if is_dataclass(item) else None), True
    return (annotation if is_dataclass(annotation) else None), False


@functools.cache
def _plan(schema: type) -> tuple[_FieldPlan, ...]:
    plan = []
    for f in fields(schema):
        nested, is_array = _unwrap(f.type)
        required = f.default is MISSING and f.default_factory is MISSING  # type: ignore[misc]
        plan.append(_FieldPlan(f.name, nested, is_array,
                               f.metadata.get("kafka_type") in _TIMEDELTA_TYPES, required))
    return tuple(plan)


def build(schema: type, values: dict[str, Any]) -> Any:
    """An instance of the kio entity ``schema`` from ``values`` (see the module docstring)."""
    kwargs: dict[str, Any] = {}
    for p in _plan(schema):
        if p.name not in values:
            if p.required:
                if p.is_array:
                    kwargs[p.name] = ()
                    continue
                raise ValueError(f"{schema.__module__}.{schema.__qualname__} needs {p.name!r}")
            continue
        value = values[p.name]
        if value is None:
            kwargs[p.name] = None
        elif p.nested is not None and p.is_array:
            nested = p.nested
            kwargs[p.name] = tuple(v if isinstance(v, nested) else build(nested, v)
                                   for v in value)
        elif p.nested is not None:
            kwargs[p.name] = value if isinstance(value, p.nested) else build(p.nested, value)
        elif p.is_array:
            kwargs[p.name] = tuple(value)
        elif p.is_timedelta and not isinstance(value, datetime.timedelta):
            kwargs[p.name] = datetime.timedelta(milliseconds=value)
        else:
            kwargs[p.name] = value
    return schema(**kwargs)


def build_request(api_key: int, version: int, values: dict[str, Any]) -> Any:
    """The kio request body of (api_key, version) holding ``values``."""
    return build(load_request_schema(api_key, version), values)


def field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name``, or ``default`` when this version of the message has no such field."""
    return getattr(obj, name, default)


def millis(value: Any, default: int = -1) -> int:
    """Milliseconds of a kio time field (timedelta, aware datetime, int or None)."""
    if value is None:
        return default
    if isinstance(value, datetime.timedelta):
        return int(value / datetime.timedelta(milliseconds=1))
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    return int(value)
