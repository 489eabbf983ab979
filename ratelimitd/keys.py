"""Counter keys: one injective encoding of domain and descriptor entries.

A key is `PREFIX{IDENTITY}:COUNTER_ID`. The identity escapes `%`, `|`, `=`, `{`, `}` and
control characters in every part before joining them, so no two different
domain/key/value combinations share a key whatever the values hold, and the braces around it
are the Redis Cluster hash tag: every limit of one descriptor lands on one slot. Identities
longer than `MAX_PLAIN_IDENTITY` are replaced by their SHA-256, marked so that the two forms
cannot meet (a plain identity always has a `|`, a hashed one never does).
"""

from __future__ import annotations

import hashlib

from ratelimitd.model import Entry

MAX_PLAIN_IDENTITY = 256

_ESCAPES = {ord(char): f"%{ord(char):02X}" for char in "%|={}"}
_ESCAPES.update({code: f"%{code:02X}" for code in range(32)})
_ESCAPES[127] = "%7F"


def escape(part: str) -> str:
    return part.translate(_ESCAPES)


def identity(domain: str, entries: tuple[Entry, ...]) -> str:
    plain = escape(domain) + "".join(f"|{escape(key)}={escape(value)}" for key, value in entries)
    if len(plain) <= MAX_PLAIN_IDENTITY:
        return plain
    return "sha256=" + hashlib.sha256(plain.encode("utf-8", "surrogatepass")).hexdigest()


def counter_base(prefix: str, domain: str, entries: tuple[Entry, ...]) -> str:
    """The part of a key shared by every limit of one descriptor, hash tag included."""
    return f"{prefix}{{{identity(domain, entries)}}}"
