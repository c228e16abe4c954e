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
