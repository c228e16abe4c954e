"""Every Redis key and channel of a run's log, named in one place.

All of a run's keys share the ``{run_id}`` hash tag so that in Redis Cluster they live in
one slot and a Lua script may touch them together.
"""

import hashlib

PREFIX = "mantis"


def meta_key(run_id: str) -> str:
    """Hash: tenant, phase, timestamps, halt_class, epoch, last event number, terminal;
    ``s:<seq>`` (exactly-once records), ``pos:<source>``, ``exp_at`` (see docs/perf.md)."""
    return f"{PREFIX}:{{{run_id}}}:meta"


def log_key(run_id: str) -> str:
    """Stream: the run's append-only event log; entry ids are ``<n>-0``."""
    return f"{PREFIX}:{{{run_id}}}:log"


def dedup_key(run_id: str) -> str:
    """Hash: ``s:<seq>`` records of runs created before the row path moved them into meta
    (one HMGET reads them with the rest); read for those runs only (no ``sm`` in meta)."""
    return f"{PREFIX}:{{{run_id}}}:dedup"


def live_channel(run_id: str) -> str:
    """Pub/sub channel on which every appended event is announced to the service pods."""
    return f"{PREFIX}:{{{run_id}}}:live"


def run_keys(run_id: str) -> list[str]:
    """The keys every log script takes, in the order the scripts expect them."""
    return [meta_key(run_id), log_key(run_id), dedup_key(run_id), live_channel(run_id)]


def request_key(run_id: str) -> str:
    """String: the submitted request body of a run (JSON), kept as long as its log."""
    return f"{PREFIX}:{{{run_id}}}:request"


# A tenant's feed is a log of the same shape as a run's (meta, log, dedup, live), so every
# reader of a run's log reads it too. Its name cannot be a run id: run ids have no ``:``.
FEED_PREFIX = "tenant:"


def feed_name(tenant: str) -> str:
    """The log name of ``tenant``'s lifecycle feed (``GET /v1/events``)."""
    return f"{FEED_PREFIX}{tenant}"


def feed_keys(tenant: str) -> list[str]:
    """The feed's keys, in the order of ``run_keys``."""
    return run_keys(feed_name(tenant))


QUEUE_GROUP = "workers"


def queue_key() -> str:
    """Stream: submitted runs waiting for (or held by) a worker; consumer group ``workers``."""
    return f"{PREFIX}:{{queue}}:jobs"


def idempotency_key(tenant: str, key_digest: str) -> str:
    """String: the run an ``Idempotency-Key`` created, with the digest of its body (24 h)."""
    return f"{PREFIX}:{{idem}}:{tenant}:{key_digest}"


# Durable Streams (``/v1/stream/{path}``): every stream's keys share one hash tag made of its
# tenant and a digest of its path, so a Lua script may touch them together in a Cluster,
# a path may hold any characters (a ``}`` would end a tag early), and the same path under
# two tenants is two streams.
DURABLE_PREFIX = "ds:"


def durable_tag(tenant: str, path: str) -> str:
    """The hash tag of ``tenant``'s stream at ``path``."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:40]
    return f"{DURABLE_PREFIX}{tenant}:{digest}"


def durable_meta_key(tag: str) -> str:
    """Hash: content type, TTL/expiry, closed, entry count, byte count, producer closing."""
    return f"{PREFIX}:{{{tag}}}:meta"


def durable_log_key(tag: str) -> str:
    """Stream: the stream's data; entry ``<n>-0`` holds one append (or one JSON message)."""
    return f"{PREFIX}:{{{tag}}}:log"


def durable_producers_key(tag: str) -> str:
    """Hash: idempotent producer id -> ``<epoch>:<last seq>``."""
    return f"{PREFIX}:{{{tag}}}:producers"


def durable_live_channel(tag: str) -> str:
    """Pub/sub channel on which every append, close and delete is announced to the pods."""
    return f"{PREFIX}:{{{tag}}}:live"


def durable_keys(tag: str) -> list[str]:
    """The keys every durable-stream script takes, in the order the scripts expect them."""
    return [
        durable_meta_key(tag),
        durable_log_key(tag),
        durable_producers_key(tag),
        durable_live_channel(tag),
    ]


# Webhooks. Every key of a tenant's webhooks carries the tag of that tenant's feed
# (``{tenant:<tenant>}``), so one script may read the feed and write deliveries together.
def _hook_base(tenant: str) -> str:
    return f"{PREFIX}:{{{feed_name(tenant)}}}:wh:"


def webhooks_key(tenant: str) -> str:
    """Hash: endpoint id -> the endpoint as JSON (url, events, secret, feed position)."""
    return _hook_base(tenant) + "endpoints"


def webhook_cursor_key(tenant: str) -> str:
    """Hash: ``epoch`` and ``n`` of the last feed event already turned into deliveries."""
    return _hook_base(tenant) + "cursor"


def webhook_phases_key(tenant: str) -> str:
    """Hash: run id -> the phase last seen in the feed, so only phase moves send run.phase."""
    return _hook_base(tenant) + "phases"


def webhook_due_prefix(tenant: str) -> str:
    """What ``webhook_due_key`` puts before the endpoint id (the scripts build keys from it)."""
    return _hook_base(tenant) + "due:"


def webhook_due_key(tenant: str, endpoint_id: str) -> str:
    """Sorted set: an endpoint's pending delivery ids -> when each is due (ms); a claimed
    one's lease end. One set per endpoint, so one endpoint's backlog never hides another's."""
    return webhook_due_prefix(tenant) + endpoint_id


def webhook_delivery_prefix(tenant: str) -> str:
    """What ``webhook_delivery_key`` puts before the delivery id (the scripts build keys
    from it)."""
    return _hook_base(tenant) + "d:"


def webhook_delivery_key(tenant: str, delivery_id: str) -> str:
    """Hash: one delivery: endpoint, type, data, status, claims, attempts ``a:<k>``."""
    return webhook_delivery_prefix(tenant) + delivery_id


def webhook_recent_prefix(tenant: str) -> str:
    """What ``webhook_recent_key`` puts before the endpoint id."""
    return _hook_base(tenant) + "recent:"


def webhook_recent_key(tenant: str, endpoint_id: str) -> str:
    """List: an endpoint's most recent delivery ids, newest first (bounded)."""
    return webhook_recent_prefix(tenant) + endpoint_id
