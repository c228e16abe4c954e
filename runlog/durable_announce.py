"""How a durable stream's change is told to the service pods over pub/sub.

One format, both directions: the scripts build it in Lua (``LUA_ANNOUNCE``) and the pods
read it with ``decode``. An announcement is ``<kind> <prev n> <n> <bytes> <closed>\\n<data>``:
``a`` (data appended and/or the stream closed) or ``d`` (deleted); the entry count before
and after the change, the byte count after it, ``1`` when the stream is now closed, then
the appended data as one body (JSON messages already joined with ``,``). A pod whose
reader sits at ``prev n`` can hand the data on without reading the store.
"""

from __future__ import annotations

from typing import NamedTuple

# Lua expression building the announcement from locals kind, prev, n, b, closed, data.
LUA_ANNOUNCE = (
    "kind .. ' ' .. prev .. ' ' .. n .. ' ' .. b .. ' ' .. "
    "(closed == '1' and '1' or '0') .. '\\n' .. data"
)

APPENDED = b"a"
DELETED = b"d"


class Change(NamedTuple):
    """One announced change of a durable stream."""

    kind: bytes
    prev_n: int
    n: int
    size: int
    closed: bool
    data: bytes


def encode(kind: bytes, prev_n: int, n: int, size: int, closed: bool, data: bytes) -> bytes:
    """The announcement of a change (what the scripts publish)."""
    return b"%s %d %d %d %d\n%s" % (kind, prev_n, n, size, 1 if closed else 0, data)


def decode(payload: bytes) -> Change:
    """Read an announcement; ``ValueError`` when it is not one (anyone may PUBLISH)."""
    head, _, data = payload.partition(b"\n")
    kind, prev_raw, n_raw, size_raw, closed_raw = head.split(b" ")
    if kind not in (APPENDED, DELETED):
        raise ValueError("not a durable stream announcement")
    return Change(kind, int(prev_raw), int(n_raw), int(size_raw), closed_raw == b"1", data)
