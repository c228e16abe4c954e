"""Redis clients for a URL: a plain client, or a cluster client when the node is in a cluster.

The contract lets one ``MANTIS_REDIS_URL`` name either a standalone Redis or any node of a
Redis Cluster; which one it is can only be learnt by asking the node (``INFO cluster``).
"""

from __future__ import annotations

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
        # A request waits this long for a pooled connection before answering 503. It is
        # generous on purpose: in a reconnect storm queueing is right, and a browser's
        # EventSource never retries after a 503.
        timeout=30,
        health_check_interval=30,
        # An unreachable store must turn into a prompt 503, not a hung request.
        socket_connect_timeout=2,
        socket_timeout=10,
    )
    return aredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
