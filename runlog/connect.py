"""Redis clients for a URL: a plain client, or a cluster client when the node is in a cluster.

The contract lets one ``MANTIS_REDIS_URL`` name either a standalone Redis or any node of a
Redis Cluster; which one it is can only be learnt by asking the node (``INFO cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

SyncClient = redis.Redis | RedisCluster
AsyncClient = aredis.Redis | AsyncRedisCluster


def _cluster_enabled(info: dict[str, Any]) -> bool:
    return bool(int(info.get("cluster_enabled", 0)))


# A server without INFO (the embedded store) is no cluster node.
_NO_INFO = ResponseError


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (sync or asyncio)."""
    return isinstance(client, RedisCluster | AsyncRedisCluster)


# Every client this project makes bounds its connections and, at the bound, waits for one
# (up to POOL_TIMEOUT_S, then redis's ConnectionError "No connection available") instead of
# failing at once: a runner with 500 runs writing at once shares the pool, it does not
# crash on it. redis-py 8's default pool would raise MaxConnectionsError past 100.
DEFAULT_MAX_CONNECTIONS = 32
POOL_TIMEOUT_S = 30


def sync_client(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> SyncClient:
    """A sync client for ``url``, cluster-aware, with a bounded pool that threads wait on."""
    probe = redis.Redis.from_url(url)
    try:
        clustered = _cluster_enabled(probe.info("cluster"))
    except _NO_INFO:
        clustered = False
    finally:
        probe.close()
    if clustered:
        # Each node's pool a blocking one too (``timeout``: how long a caller waits; redis
        # 5.0 ignores it and waits its default 20 s).
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            connection_pool_class=redis.BlockingConnectionPool,
            timeout=POOL_TIMEOUT_S,
        )
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_TIMEOUT_S, socket_connect_timeout=5
    )
    return redis.Redis(connection_pool=pool)


async def async_client(
    url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS, *, socket_timeout: float | None = None
) -> AsyncClient:
    """An asyncio client for ``url``, cluster-aware, with a bounded pool that callers wait on.

    ``socket_timeout`` bounds each reply (the service sets one so an unreachable store turns
    into a prompt 503; runners leave it unset so blocking reads of the queue may wait).
    """
    probe = aredis.Redis.from_url(url)
    try:
        clustered = _cluster_enabled(await probe.info("cluster"))
    except _NO_INFO:
        clustered = False
    finally:
        await probe.aclose()
    if clustered:
        cluster = AsyncRedisCluster.from_url(url, max_connections=max_connections)
        # Learn the slot map now, once: left to the first commands, many concurrent first
        # calls each rebuild it and close connections that others are using.
        try:
            await cluster.initialize()
        except BaseException:
            await cluster.aclose()
            raise
        return cluster
    # A blocking pool: past the bound, a request waits for a connection instead of opening
    # one more, so the connection count stays fixed under any load.
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        # A request waits this long for a pooled connection. It is generous on purpose: in a
        # reconnect storm queueing is right, and a browser's EventSource never retries
        # after a 503.
        timeout=POOL_TIMEOUT_S,
        health_check_interval=30,
        # An unreachable store must turn into a prompt error, not a hung request.
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
    )
    return aredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


def call_gate(client: object) -> contextlib.AbstractAsyncContextManager[Any]:
    """What an asyncio caller holds around one command or pipeline on ``client``.

    redis-py's asyncio cluster client has no waiting pool: past ``max_connections`` on a
    node it raises ``MaxConnectionsError``. A call in flight holds at most one connection
    per node, so a semaphore of that size makes callers wait instead, as they do on the
    blocking pool of a plain client (for which the gate is a no-op).
    """
    if isinstance(client, AsyncRedisCluster):
        bound = client.get_connection_kwargs().get("max_connections")
        return asyncio.Semaphore(int(bound or DEFAULT_MAX_CONNECTIONS))
    return contextlib.nullcontext()
