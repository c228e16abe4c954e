"""The pod's Redis client, made on first use.

Whether ``MANTIS_REDIS_URL`` names a cluster node can only be learnt by asking the node.
Asking at start-up would make a pod whose store is down fail to start, where the contract
wants it up and answering ``503`` until the store is back: so the question is asked by the
first request, and again by the next one for as long as the store cannot be reached.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

from runlog.connect import AsyncClient, async_client, is_cluster


class StoreClient:
    """Hands out the one bounded-pool client of this pod."""

    def __init__(self, url: str, max_connections: int) -> None:
        self._url = url
        self._max_connections = max_connections
        self._client: AsyncClient | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> AsyncClient:
        """The client; raises redis's ConnectionError while the store is unreachable."""
        client = self._client
        if client is not None:
            return client
        async with self._lock:
            if self._client is None:
                self._client = await async_client(
                    self._url, self._max_connections, socket_timeout=10
                )
            return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def node_urls(self) -> list[str]:
        """Where the pub/sub connection may go: the configured URL first, then, on a Redis
        Cluster, every other known node with the same scheme and credentials.

        Classic pub/sub messages reach every node of a cluster, so when the configured node
        fails over (or dies) the pod keeps hearing announcements through another one.
        """
        urls = [self._url]
        client = self._client
        if client is None or not is_cluster(client):
            return urls
        parts = urlsplit(self._url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        for node in client.get_nodes():  # type: ignore[union-attr]
            host = f"[{node.host}]" if ":" in node.host else node.host
            netloc = f"{userinfo}{at}{host}:{node.port}"
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
            if url not in urls:
                urls.append(url)
        return urls
