"""Redis clients for a URL: a plain client, or a cluster client when the node is in a cluster.

The contract lets one ``MANTIS_REDIS_URL`` name either a standalone Redis or any node of a
Redis Cluster; which one it is can only be learnt by asking the node (``INFO cluster``).
"""

from __future__ import annotations

import socket
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

SyncClient = redis.Redis | RedisCluster
AsyncClient = aredis.Redis | AsyncRedisCluster


_KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 30),
        (getattr(socket, "TCP_KEEPINTVL", None), 10),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}


def _cluster_enabled(info: dict[str, Any]) -> bool:
    return bool(int(info.get("cluster_enabled", 0)))


# A server without INFO (the embedded store) is no cluster node.
_NO_INFO = ResponseError


def sync_client(url: str) -> SyncClient:
    """A sync client for ``url``, cluster-aware."""
    probe = redis.Redis.from_url(url)
    try:
        clustered = _cluster_enabled(probe.info("cluster"))
    except _NO_INFO:
        clustered = False
    finally:
        probe.close()
    return RedisCluster.from_url(url) if clustered else redis.Redis.from_url(url)


async def async_client(url: str, max_connections: int | None = None) -> AsyncClient:
    """An asyncio client for ``url``, cluster-aware; ``max_connections`` bounds its pool."""
    probe = aredis.Redis.from_url(url)
    try:
        clustered = _cluster_enabled(await probe.info("cluster"))
    except _NO_INFO:
        clustered = False
    finally:
        await probe.aclose()
    if clustered:
        if max_connections is None:
            return AsyncRedisCluster.from_url(url)
        return AsyncRedisCluster.from_url(url, max_connections=max_connections)
    if max_connections is None:
        return aredis.Redis.from_url(url)
    # A blocking pool: past the bound, a request waits for a connection instead of opening
    # one more, so the pod's connection count stays fixed under any load.
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        health_check_interval=30,
        # An unreachable store must turn into a prompt 503, not a hung request.
        socket_connect_timeout=2,
        socket_timeout=10,
    )
    return aredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


def pubsub_client(url: str) -> aredis.Redis:
    """A client for the pod's one pub/sub connection.

    In a cluster, PUBLISH reaches every node, so subscribing on the node the URL names
    hears every run's announcements.
    """
    # RESP2 framing: the hub reads raw replies ([b"message", channel, data]) for speed.
    # The connection may be silent for long; TCP keepalive finds a store that vanished.
    # No silent retry: announcements sent while it reconnected would be lost unseen, so a
    # broken connection must surface to the hub, which then ends its streams (they resume
    # by cursor from the log).
    return aredis.Redis.from_url(
        url,
        protocol=2,
        retry=AsyncRetry(NoBackoff(), 0),
        socket_connect_timeout=2,
        socket_keepalive=True,
        socket_keepalive_options=_KEEPALIVE,
    )
