"""The embedded store: an in-memory Redis-compatible server inside the service process.

It is fakeredis's TCP server on a loopback port, so the service, ``runner_bridge`` in
another terminal and the tests all speak the same Redis protocol and run the same Lua
scripts as in production. It keeps nothing on disk and is slow next to a real Redis:
it is the zero-setup default for trying the product and for fast tests, not for
production.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from fakeredis import TcpFakeServer

from runlog.store_url import embedded_url_file

DEFAULT_PORT = 7379


class EmbeddedStore:
    """Start with ``start()``; ``url`` is where it listens; ``stop()`` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self._host = host
        self._port = DEFAULT_PORT if port is None else port
        self._server: TcpFakeServer | None = None
        self._thread: threading.Thread | None = None
        self._published: Path | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded store is not started")
        port = self._server.server_address[1]
        return f"redis://{self._host}:{port}/0"

    def start(self) -> str:
        """Listen (on the default port, else any free one) and serve in a thread."""
        try:
            server = TcpFakeServer((self._host, self._port), server_type="redis")
        except OSError:
            server = TcpFakeServer((self._host, 0), server_type="redis")
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="embedded-store", daemon=True
        )
        self._thread.start()
        return self.url

    def publish_url(self) -> Path:
        """Write the discovery file that lets ``runner_bridge`` find this store."""
        path = embedded_url_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(self.url + "\n")
        tmp.replace(path)
        self._published = path
        return path

    def stop(self) -> None:
        if self._published is not None:
            with contextlib.suppress(FileNotFoundError):
                if self._published.read_text().strip() == self.url:
                    self._published.unlink()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
