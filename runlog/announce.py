"""The live announcement: how a written event is told to the service pods over pub/sub.

One format, both directions: the scripts build it in Lua (``LUA_ANNOUNCE``) and the hub
reads it with ``decode``. An announcement is ``<n>:<t>:<event>:<data>``: the event's
number in its log, its ts in microseconds, its SSE event name and its JSON data. ``n``,
``t`` and the name never contain ``:`` (digits, and a name matching
``[A-Za-z0-9_.-]{1,64}`` or a reserved one), so splitting on the first three colons is
exact whatever the data holds.
"""

from __future__ import annotations

from typing import NamedTuple

SEPARATOR = b":"

# Lua expression building the announcement from locals ``n``, ``t``, ``name``, ``data``.
LUA_ANNOUNCE = "n .. ':' .. t .. ':' .. name .. ':' .. data"


class Announcement(NamedTuple):
    """One announced event."""

    n: int
    t: int
    name: bytes
    data: bytes


def encode(n: int, t: int, name: bytes, data: bytes) -> bytes:
    """The announcement of event ``n`` (what the scripts publish)."""
    return b"%d:%d:%s:%s" % (n, t, name, data)


def decode(payload: bytes) -> Announcement:
    """Read an announcement; ``ValueError`` when it is not one (anyone may PUBLISH)."""
    n_raw, t_raw, name, data = payload.split(SEPARATOR, 3)
    return Announcement(int(n_raw), int(t_raw), name, data)
