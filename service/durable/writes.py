"""PUT (create), POST (append, close) and DELETE of a durable stream."""

from __future__ import annotations

import secrets

from aiohttp import web

from ..appkeys import DURABLE_STORE, SETTINGS
from . import protocol as p
from .access import target_of
from .errors import (
    BadRequest,
    PayloadTooLarge,
    StaleEpoch,
    StreamConflict,
    StreamGone,
    StreamNotFound,
)
from .forks import plan_fork, release_source

READ_CHUNK = 65536


async def read_body(request: web.Request) -> bytes:
    """The whole body, refused past ``MANTIS_STREAMS_MAX_BODY_BYTES``."""
    limit = request.app[SETTINGS].streams_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


# One request's messages are written by one script, which holds Redis meanwhile: a JSON
# batch larger than this is refused (413) rather than stalling every other client.
MAX_MESSAGES = 10_000


def messages_of(body: bytes, content_type: str, *, creating: bool) -> list[bytes]:
    if not body:
        return []
    if not p.is_json(content_type):
        return [body]
    messages = p.json_messages(body, allow_empty=creating)
    if len(messages) > MAX_MESSAGES:
        raise PayloadTooLarge(
            f"a JSON batch holds at most {MAX_MESSAGES} messages, got {len(messages)}"
        )
    return messages


def _closed_headers(headers: dict[str, str], closed: bool) -> dict[str, str]:
    if closed:
        headers[p.CLOSED] = "true"
    return headers


async def create_stream(request: web.Request) -> web.Response:
    """``PUT``: create (201), or confirm the same configuration (200); else 409."""
    target = target_of(request, writing=True)
    content_type = p.parse_content_type(request.headers.get("Content-Type"))
    ttl = p.parse_ttl(request.headers.get(p.TTL))
    expires = p.parse_expires_at(request.headers.get(p.EXPIRES_AT))
    if ttl is not None and expires is not None:
        raise BadRequest("give Stream-TTL or Stream-Expires-At, not both")
    closed = p.is_true(request.headers.get(p.CLOSED))
    fork = await plan_fork(request, target, ttl, expires)
    if fork is not None:
        content_type, ttl, expires = fork.content_type, fork.ttl, fork.expires
    body = await read_body(request)
    messages = messages_of(body, content_type, creating=True)
    store = request.app[DURABLE_STORE]
    status, n, size, now_closed = await store.create(
        target.tag,
        content_type=content_type,
        ttl=ttl,
        expires=expires,
        closed=closed,
        incarnation=secrets.token_hex(6),
        messages=messages,
        fork_spec=fork.spec if fork else "",
        source_tag=fork.source_tag if fork else "",
        inherited=fork.inherited if fork else None,
    )
    if status == "created" and fork is not None:
        await store.add_fork(fork.source_tag)
    headers = _closed_headers(
        {"Content-Type": content_type, p.NEXT_OFFSET: p.format_offset(n, size)}, now_closed
    )
    if status == "conflict":
        raise StreamConflict("the stream exists with another configuration", headers)
    if status == "gone":
        raise StreamConflict("a deleted stream that forks still use holds this path")
    if status == "created":
        headers["Location"] = str(request.url.with_query(None))
        return web.Response(status=201, headers=headers)
    return web.Response(status=200, headers=headers)


async def append_stream(request: web.Request) -> web.Response:
    """``POST``: append, and/or close with ``Stream-Closed: true``."""
    target = target_of(request, writing=True)
    close = p.is_true(request.headers.get(p.CLOSED))
    producer = p.parse_producer(
        request.headers.get(p.PRODUCER_ID),
        request.headers.get(p.PRODUCER_EPOCH),
        request.headers.get(p.PRODUCER_SEQ),
    )
    stream_seq = request.headers.get(p.SEQ)
    body = await read_body(request)
    if not body and not close:
        raise BadRequest("an append needs a body (or Stream-Closed: true to close)")
    content_type = ""
    messages: list[bytes] = []
    if body:
        raw_type = request.headers.get("Content-Type")
        if raw_type is None or not raw_type.strip():
            raise BadRequest("an append with a body needs a Content-Type")
        content_type = p.parse_content_type(raw_type)
        messages = messages_of(body, content_type, creating=False)
    reply = await request.app[DURABLE_STORE].append(
        target.tag,
        content_type=content_type,
        close=close,
        producer=producer,
        stream_seq=stream_seq,
        joiner=b"," if p.is_json(content_type) else b"",
        messages=messages,
    )
    return _append_response(reply, producer)


def _append_response(reply: list[str], producer: p.Producer | None) -> web.Response:
    status = reply[0]
    if status == "missing":
        raise StreamNotFound("no such stream")
    if status == "gone":
        raise StreamGone("the stream was deleted")
    if status == "stale":
        raise StaleEpoch("a newer producer epoch exists", {p.PRODUCER_EPOCH: reply[1]})
    if status == "epoch_seq":
        raise BadRequest("a new producer epoch must start at Producer-Seq 0")
    if status == "gap":
        raise StreamConflict(
            "Producer-Seq skips ahead",
            {p.PRODUCER_EXPECTED_SEQ: reply[1], p.PRODUCER_RECEIVED_SEQ: reply[2]},
        )
    offset = p.format_offset(int(reply[1]), int(reply[2]))
    if status == "closed":
        raise StreamConflict("the stream is closed", {p.CLOSED: "true", p.NEXT_OFFSET: offset})
    if status == "content_type":
        raise StreamConflict("Content-Type differs from the stream's", {p.NEXT_OFFSET: offset})
    if status == "seq":
        raise StreamConflict("Stream-Seq must increase", {p.NEXT_OFFSET: offset})
    headers = {p.NEXT_OFFSET: offset}
    if status == "closed_ok":
        headers[p.CLOSED] = "true"
        if producer is not None and len(reply) > 3:
            headers[p.PRODUCER_EPOCH] = reply[3]
            headers[p.PRODUCER_SEQ] = reply[4]
        return web.Response(status=204, headers=headers)
    # dup / ok: [status, n, b, closed, epoch, seq]
    _closed_headers(headers, reply[3] == "1")
    if producer is not None:
        headers[p.PRODUCER_EPOCH] = reply[4]
        headers[p.PRODUCER_SEQ] = reply[5]
        # 200 for new data; a duplicate, or a close with no data, appends nothing: 204.
        appended = status == "ok" and int(reply[1]) > int(reply[6])
        return web.Response(status=200 if appended else 204, headers=headers)
    return web.Response(status=204, headers=headers)


async def delete_stream(request: web.Request) -> web.Response:
    target = target_of(request, writing=True)
    store = request.app[DURABLE_STORE]
    status, source_tag = await store.delete(target.tag)
    if status == "missing":
        raise StreamNotFound("no such stream")
    if status == "gone":
        raise StreamGone("the stream was deleted")
    if source_tag:
        await release_source(store, source_tag)
    return web.Response(status=204)
