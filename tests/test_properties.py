"""Property tests (hypothesis): cursors, event names, SSE framing, tickets, the phase graph.

Each property is stated over all inputs hypothesis can think of, not a few examples: a
parser that raises the wrong error, a frame a browser splits differently, a ticket that
verifies after tampering, a phase move the Lua script lets through when Python forbids it.
"""

from __future__ import annotations

import itertools
import re
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fakeredis
import orjson
import pytest
import sseclient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runlog.errors import InvalidPhaseMove, InvalidRow, RunTerminal
from runlog.ids import IdCursor, TimeCursor, format_event_id, parse_cursor
from runlog.phases import ALLOWED_MOVES, PHASES, QUEUED, RESERVED_EVENT_NAMES, TERMINAL_PHASES
from runlog.records import event_name_for, row_record
from runner_bridge import Bridge
from service.sse import encode_event, gap_frame
from service.tickets import ExpiredTicket, InvalidTicket, TicketBook

TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
BASE36 = string.digits + string.ascii_lowercase

# -- a spec-faithful SSE parser (WHATWG HTML, "event stream interpretation") -----------


def parse_sse(stream: bytes) -> list[dict[str, Any]]:
    """Dispatched events as a browser's EventSource would see them (name, id, data)."""
    text = stream.decode("utf-8")
    lines = re.split(r"\r\n|\r|\n", text)
    events: list[dict[str, Any]] = []
    name, data, event_id, saw_id = "", [], None, False
    for line in lines:
        if line == "":
            if data:
                events.append({"event": name or "message", "data": "\n".join(data),
                               "id": event_id if saw_id else None})
            name, data, saw_id = "", [], False
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            event_id, saw_id = value, True
    return events


# -- cursors -------------------------------------------------------------------------

epochs = st.text(alphabet=BASE36, min_size=11, max_size=12)
numbers = st.integers(min_value=0, max_value=10**19 - 1)


@given(epochs, numbers, st.sampled_from(["", " ", "\t", "  \n"]))
def test_every_emitted_id_parses_back_to_its_position(epoch: str, n: int, pad: str) -> None:
    raw = format_event_id(epoch, n)
    cursor = parse_cursor(pad + raw + pad)
    assert cursor == IdCursor(epoch=epoch, n=n, raw=raw)


offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))


@given(st.datetimes(timezones=st.one_of(st.just(UTC), st.builds(timezone, offsets))))
def test_every_iso_timestamp_is_a_time_cursor_at_that_instant(moment: datetime) -> None:
    cursor = parse_cursor(moment.isoformat())
    assert isinstance(cursor, TimeCursor)
    assert cursor.t_us == (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@given(st.datetimes())
def test_a_timestamp_without_a_zone_means_utc(moment: datetime) -> None:
    cursor = parse_cursor(moment.isoformat())
    assert isinstance(cursor, TimeCursor)
    assert cursor.t_us == parse_cursor(moment.replace(tzinfo=UTC).isoformat()).t_us  # type: ignore[union-attr]


@given(st.text(max_size=300))
def test_any_text_is_a_cursor_or_a_value_error_naming_it(raw: str) -> None:
    try:
        cursor = parse_cursor(raw)
    except ValueError as exc:
        message = str(exc)
        assert "cursor" in message and len(message) < 300
        return
    if raw.strip() == "":
        assert cursor is None
    else:
        assert isinstance(cursor, IdCursor | TimeCursor)


# -- event names ---------------------------------------------------------------------

# What JSON rows hold as orjson writes them: 64-bit integers, finite floats.
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80)
)
labels = st.one_of(json_scalars, st.sampled_from(["step", "phase", "terminal", "gap", "a.b-c_1"]),
                   st.text(alphabet=string.ascii_letters, min_size=60, max_size=70))


@st.composite
def rows(draw: Any) -> dict[str, Any]:
    row: dict[str, Any] = draw(st.dictionaries(st.text(max_size=10), json_scalars, max_size=4))
    for key in ("kind", "type"):
        if draw(st.booleans()):
            row[key] = draw(labels)
        else:
            row.pop(key, None)
    return row


@given(rows())
def test_an_event_name_is_always_a_short_token_from_kind_then_type(row: dict[str, Any]) -> None:
    name = event_name_for(row)
    assert TOKEN.fullmatch(name)
    label = row.get("kind") if row.get("kind") is not None else row.get("type")
    if isinstance(label, str) and TOKEN.fullmatch(label):
        assert name == label
    else:
        assert name == "message"


@given(rows())
def test_no_row_becomes_a_lifecycle_event(row: dict[str, Any]) -> None:
    row.pop("ts", None)
    try:
        record = row_record(row)
    except InvalidRow as exc:
        assert "reserved" in str(exc)
        return
    assert record.event not in RESERVED_EVENT_NAMES
    assert orjson.loads(record.data) == {**row, "ts": orjson.loads(record.data)["ts"]}


# -- SSE framing ---------------------------------------------------------------------

json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
event_ids = st.builds(format_event_id, epochs, numbers)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6), event_ids)
def test_any_json_row_round_trips_through_an_sse_parser_unchanged(
    row: dict[str, Any], event_id: str
) -> None:
    data = orjson.dumps(row)
    name = event_name_for(row).encode()
    events = parse_sse(encode_event(name, event_id.encode(), data))
    assert len(events) == 1
    (event,) = events
    assert event == {"event": name.decode(), "id": event_id, "data": data.decode()}
    assert orjson.loads(event["data"]) == row


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6), event_ids)
def test_sseclient_reads_the_same_event(row: dict[str, Any], event_id: str) -> None:
    # A second, independent parser (sseclient-py, what many Python consumers use).
    data = orjson.dumps(row)
    name = event_name_for(row)
    frame = encode_event(name.encode(), event_id.encode(), data)
    events = list(sseclient.SSEClient(iter([b"retry: 2000\n\n", frame])).events())
    assert [(e.event, e.id, e.data) for e in events] == [(name, event_id, data.decode())]


@given(st.binary(max_size=100), st.text(max_size=200), event_ids)
def test_hostile_names_and_data_still_make_exactly_one_event(
    name: bytes, data: str, event_id: str
) -> None:
    # Data a bridge never writes (raw line breaks, not JSON) still frames as one event.
    events = parse_sse(encode_event(name, event_id.encode(), data.encode()))
    assert len(events) == 1
    (event,) = events
    assert TOKEN.fullmatch(event["event"])
    assert event["event"] == (name.decode() if TOKEN.fullmatch(name.decode("latin-1")) and
                              name.isascii() else "message")
    assert event["id"] == event_id
    assert "\n" not in event["data"]


@given(st.lists(st.tuples(rows(), numbers), min_size=1, max_size=6))
def test_a_burst_of_frames_parses_to_the_same_events_in_order(
    burst: list[tuple[dict[str, Any], int]],
) -> None:
    frames = [
        encode_event(event_name_for(row).encode(), format_event_id("a" * 11, n).encode(),
                     orjson.dumps(row))
        for row, n in burst
    ]
    events = parse_sse(b"retry: 2000\n\n" + b": ping\n\n".join(frames))
    assert [orjson.loads(e["data"]) for e in events] == [row for row, _ in burst]


@given(epochs, numbers)
def test_the_gap_event_carries_no_id(epoch: str, n: int) -> None:
    (event,) = parse_sse(gap_frame({"run_id": "r1", "after": "x", "resumed_from": None}))
    assert event["event"] == "gap" and event["id"] is None


# -- tickets ---------------------------------------------------------------------------

TENANTS = ("acme", "other", "t.e_s-t")
run_ids = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
moments = st.floats(min_value=1e9, max_value=4e9, allow_nan=False)


def book(key: bytes = b"k" * 32) -> TicketBook:
    return TicketBook(key, tenants=TENANTS, ttl_s=300, max_life_s=3600)


@given(st.sampled_from(TENANTS), run_ids, moments, st.floats(min_value=0, max_value=299))
def test_a_ticket_verifies_for_its_run_while_fresh(
    tenant: str, run_id: str, now: float, age: float
) -> None:
    ticket = book().issue(tenant, run_id, now=now)
    assert book().verify(ticket.token, run_id, now=now + age) == tenant


@given(st.sampled_from(TENANTS), run_ids, run_ids, moments)
def test_a_ticket_opens_no_other_run(tenant: str, run_id: str, other: str, now: float) -> None:
    assume(run_id != other)
    ticket = book().issue(tenant, run_id, now=now)
    with pytest.raises(InvalidTicket):
        book().verify(ticket.token, other, now=now)


@given(st.sampled_from(TENANTS), run_ids, moments, st.data())
def test_a_tampered_ticket_is_refused_or_means_the_same(
    tenant: str, run_id: str, now: float, data: st.DataObject
) -> None:
    token = book().issue(tenant, run_id, now=now).token
    at = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    char = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_.="))
    assume(token[at] != char)
    tampered = token[:at] + char + token[at + 1 :]
    try:
        holder = book().verify(tampered, run_id, now=now)
    except InvalidTicket:
        return
    # Only a change base64 cannot see (the unused low bits of a last character) survives.
    assert holder == tenant


@given(st.sampled_from(TENANTS), run_ids, moments, st.floats(min_value=300, max_value=1e5))
def test_an_old_ticket_opens_only_resuming_streams_within_its_max_life(
    tenant: str, run_id: str, now: float, age: float
) -> None:
    token = book().issue(tenant, run_id, now=now).token
    with pytest.raises(ExpiredTicket):
        book().verify(token, run_id, now=now + age)
    if age < 3600:
        assert book().verify(token, run_id, now=now + age, resuming=True) == tenant
    else:
        with pytest.raises(ExpiredTicket):
            book().verify(token, run_id, now=now + age, resuming=True)


@given(st.text(max_size=200), run_ids)
def test_any_string_is_refused_with_invalid_ticket_only(token: str, run_id: str) -> None:
    with pytest.raises(InvalidTicket):
        book().verify(token, run_id, now=2e9)


@given(st.sampled_from(TENANTS), run_ids, moments)
def test_another_key_refuses_the_ticket(tenant: str, run_id: str, now: float) -> None:
    token = book(b"a" * 32).issue(tenant, run_id, now=now).token
    with pytest.raises(InvalidTicket):
        book(b"b" * 32).verify(token, run_id, now=now)


# -- the phase graph, through the SET_PHASE script --------------------------------------

_server = fakeredis.FakeServer()
_run_numbers = itertools.count()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.sampled_from(PHASES), max_size=8))
def test_random_moves_are_accepted_exactly_when_the_graph_allows(moves: list[str]) -> None:
    client = fakeredis.FakeRedis(server=_server)
    bridge = Bridge(client)
    run_id = f"p{next(_run_numbers)}"
    run = bridge.open_run(run_id, tenant="acme")
    phase, written = QUEUED, 1
    for move in moves:
        allowed = move in ALLOWED_MOVES.get(phase, frozenset())
        try:
            run.set_phase(move)
        except (InvalidPhaseMove, RunTerminal):
            assert not allowed, f"{phase} -> {move} refused"
            assert client.xlen(f"mantis:{{{run_id}}}:log") == written  # refused: nothing written
            continue
        assert allowed, f"{phase} -> {move} accepted"
        phase = move
        written += 2 if move in TERMINAL_PHASES else 1
        assert client.xlen(f"mantis:{{{run_id}}}:log") == written
        assert client.hget(f"mantis:{{{run_id}}}:meta", "phase") == move.encode()
    client.close()
