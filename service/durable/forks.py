"""Forks: a ``PUT`` with ``Stream-Forked-From`` makes a stream that starts with a copy of
another stream's data up to a divergence point (copy-on-fork, numbered as in the source,
so the fork's offsets equal the source's up to that point).

The copy is read from the source before the fork is created: a source's data before any
offset it returned never changes, so the copy cannot tear. The source then counts the
fork (``ADD_FORK``); deleting a source that forks still count only marks it deleted, and
the last fork's deletion removes it (``DROP_FORK``, cascading up a chain).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from runlog.keys import durable_tag

from ..appkeys import DURABLE_STORE
from . import protocol as p
from .access import Target
from .errors import BadRequest, StreamConflict, StreamNotFound
from .store import DurableStore, Entry

FORKED_FROM = "Stream-Forked-From"
FORK_OFFSET = "Stream-Fork-Offset"
FORK_SUB_OFFSET = "Stream-Fork-Sub-Offset"
STREAM_ROUTE = "/v1/stream/"
COPY_BATCH = 1000
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class Fork:
    """What a fork is made of: its settings (some inherited) and the copied entries."""

    content_type: str
    ttl: int | None
    expires: tuple[str, int] | None
    spec: str
    source_tag: str
    inherited: list[Entry]


def fork_headers_without_source(request: web.Request) -> None:
    if FORKED_FROM not in request.headers and (
        FORK_OFFSET in request.headers or FORK_SUB_OFFSET in request.headers
    ):
        raise BadRequest(f"{FORK_OFFSET} and {FORK_SUB_OFFSET} need {FORKED_FROM}")


async def plan_fork(
    request: web.Request, target: Target, ttl: int | None, expires: tuple[str, int] | None
) -> Fork | None:
    """The fork a PUT asks for, or None for a plain create; raises 400/404/409."""
    fork_headers_without_source(request)
    source_path = request.headers.get(FORKED_FROM)
    if source_path is None:
        return None
    if not source_path.startswith(STREAM_ROUTE) or len(source_path) == len(STREAM_ROUTE):
        raise BadRequest(f"{FORKED_FROM} must be a stream path such as /v1/stream/name")
    raw_offset = request.headers.get(FORK_OFFSET)
    raw_sub = request.headers.get(FORK_SUB_OFFSET)
    sub = 0
    if raw_sub is not None:
        if _DECIMAL.fullmatch(raw_sub) is None or len(raw_sub) > 15:
            raise BadRequest(f"{FORK_SUB_OFFSET} must be a non-negative integer")
        sub = int(raw_sub)
    if sub > 0 and raw_offset is None:
        raise BadRequest(f"{FORK_SUB_OFFSET} needs {FORK_OFFSET}")
    source_tag = durable_tag(target.tenant, source_path[len(STREAM_ROUTE) :])
    if source_tag == target.tag:
        raise BadRequest("a stream cannot fork itself")
    store = request.app[DURABLE_STORE]
    head = await store.read(source_tag, 0, 0, touch=False)
    if head is None:
        raise StreamNotFound(f"no stream at {FORKED_FROM}")
    if head.info.deleted:
        raise StreamConflict("the source stream was deleted")
    source = head.info
    content_type = source.content_type
    asked_type = request.headers.get("Content-Type")
    if asked_type and p.parse_content_type(asked_type) != content_type:
        raise StreamConflict("Content-Type differs from the source stream's")
    at = source.n
    if raw_offset is not None:
        offset = p.parse_offset([raw_offset])
        if offset is None or offset.now:
            raise BadRequest(f"{FORK_OFFSET} must be an offset this server returned")
        at = offset.after
        if at > source.n:
            raise BadRequest(f"{FORK_OFFSET} is past the source stream's tail")
    json_mode = p.is_json(content_type)
    inherited = await _copy(store, source_tag, at + (sub if json_mode else min(sub, 1)))
    inherited = _cut(inherited, at, sub, json_mode) if sub else inherited[:at]
    # An append cut by the fork point ends there, as far as the fork knows.
    last = inherited[-1].n if inherited else 0
    inherited = [Entry(e.n, e.size, e.data, min(e.end, last)) for e in inherited]
    if ttl is None and expires is None:
        if source.ttl:
            ttl = int(source.ttl)
        elif source.expires_at:
            expires = (source.expires_at, int(source.expires_ms))
    spec = f"{source_path}\n{raw_offset or ''}\n{sub}"
    return Fork(content_type, ttl, expires, spec, source_tag, inherited)


async def _copy(store: DurableStore, tag: str, upto: int) -> list[Entry]:
    """The source's entries 1..``upto`` (plus, for JSON, the rest of the last batch)."""
    entries: list[Entry] = []
    after = 0
    while after < upto:
        chunk = await store.read(tag, after, min(COPY_BATCH, upto - after), touch=False)
        if chunk is None or not chunk.entries:
            break
        entries += chunk.entries
        after = chunk.entries[-1].n
    return entries


def _cut(entries: list[Entry], at: int, sub: int, json_mode: bool) -> list[Entry]:
    """Keep ``sub`` messages (JSON) or bytes (other types) of the append after ``at``."""
    head = entries[:at]
    if len(entries) <= at:
        raise BadRequest(f"{FORK_SUB_OFFSET} points past the source stream's data")
    nxt = entries[at]
    if json_mode:
        batch = [e for e in entries[at:] if e.n <= nxt.end]
        if sub > nxt.end - at:
            raise BadRequest(f"{FORK_SUB_OFFSET} is more than the messages of that append")
        return head + [Entry(e.n, e.size, e.data, at + sub) for e in batch[:sub]]
    if sub > len(nxt.data):
        raise BadRequest(f"{FORK_SUB_OFFSET} is more than the bytes of that append")
    before = head[-1].size if head else 0
    return [*head, Entry(nxt.n, before + sub, nxt.data[:sub], nxt.n)]


async def release_source(store: DurableStore, source_tag: str) -> None:
    """A fork was deleted: release its source, and a deleted source's own source, ..."""
    hops = 0
    while source_tag and hops < 1000:
        source_tag = await store.drop_fork(source_tag)
        hops += 1
