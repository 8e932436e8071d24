"""kcat-style output formats for `pylog consume --format`.

Fields: ``%k`` key, ``%v`` (or ``%s``) value, ``%o`` offset, ``%p`` partition, ``%t``
timestamp (ms), ``%T`` topic, ``%h`` headers as ``name=value`` joined by commas, ``%K`` key
length and ``%S`` value length (-1 when null), ``%%`` a percent sign; escapes ``\\n``, ``\\t``,
``\\r``, ``\\\\``. A null key or value prints as nothing. The format is compiled once into a
list of byte strings and field getters, and every record is written as bytes (values are
arbitrary bytes, never decoded).
"""
from __future__ import annotations

from collections.abc import Callable

from pylog.client.decode import ConsumerRecord


def _headers(record: ConsumerRecord) -> bytes:
    return b",".join(name.encode("utf-8", "surrogateescape") + b"=" + (value or b"")
                     for name, value in record.headers)


_FIELDS: dict[str, Callable[[ConsumerRecord], bytes]] = {
    "k": lambda r: r.key or b"",
    "v": lambda r: r.value or b"",
    "s": lambda r: r.value or b"",
    "o": lambda r: b"%d" % r.offset,
    "p": lambda r: b"%d" % r.partition,
    "t": lambda r: b"%d" % r.timestamp,
    "T": lambda r: r.topic.encode(),
    "h": _headers,
    "K": lambda r: b"%d" % (len(r.key) if r.key is not None else -1),
    "S": lambda r: b"%d" % (len(r.value) if r.value is not None else -1),
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


class RecordFormat:
    """A compiled ``--format``; ``render(record)`` gives the bytes to print."""

    def __init__(self, spec: str):
        self.spec = spec
        parts: list[bytes | Callable[[ConsumerRecord], bytes]] = []
        literal: list[str] = []
        i = 0
        while i < len(spec):
            c = spec[i]
            nxt = spec[i + 1] if i + 1 < len(spec) else ""
            if c == "%" and nxt == "%":
                literal.append("%")
            elif c == "%" and nxt in _FIELDS:
                if literal:
                    parts.append("".join(literal).encode())
                    literal = []
                parts.append(_FIELDS[nxt])
            elif c == "%":
                raise ValueError(f"unknown format field %{nxt} in {spec!r} "
                                 f"(known: {' '.join('%' + f for f in _FIELDS)} %%)")
            elif c == "\\" and nxt in _ESCAPES:
                literal.append(_ESCAPES[nxt])
            else:
                literal.append(c)
                i += 1
                continue
            i += 2
        if literal:
            parts.append("".join(literal).encode())
        self._parts = parts

    def render(self, record: ConsumerRecord) -> bytes:
        return b"".join(p if isinstance(p, bytes) else p(record) for p in self._parts)
