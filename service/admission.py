"""Whether this pod takes a new stream: not while draining, not past a tenant's cap."""

from __future__ import annotations

from collections import Counter


class Admission:
    """The pod's draining flag and each tenant's count of open streams here."""

    def __init__(self, tenant_max_streams: int) -> None:
        self.tenant_max_streams = tenant_max_streams
        self.draining = False
        self._open: Counter[str] = Counter()

    def start_draining(self) -> None:
        """SIGTERM: readiness fails from now on and new streams are turned away."""
        self.draining = True

    def open_stream(self, tenant: str) -> bool:
        """Count a new stream of ``tenant``; False (nothing counted) when at its cap."""
        if self._open[tenant] >= self.tenant_max_streams:
            return False
        self._open[tenant] += 1
        return True

    def close_stream(self, tenant: str) -> None:
        """A stream counted by ``open_stream`` ended."""
        self._open[tenant] -= 1
        if self._open[tenant] <= 0:
            del self._open[tenant]

    def open_streams(self, tenant: str) -> int:
        return self._open[tenant]
