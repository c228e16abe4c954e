"""The reference: nginx with the Nchan module, on the same workloads as the service.

nginx runs as one process (``master_process off``: the pid the bench meters is the one
doing the work), pinned to the server core like the service, on a free loopback port, with
a configuration written here: ``/pub/<channel>`` (HTTP publisher) and ``/sub/<channel>``
(EventSource subscriber), Nchan's in-memory store or its Redis store (``nchan_redis_pass``
to the bench's own redis-server). Messages are published with ``X-EventSource-Event`` so a
subscriber sees ``event: step`` / ``event: terminal`` lines like the service's, and the
load generator needs no second parser.

Needs Debian's ``nginx`` and ``libnginx-mod-nchan``: installed with apt-get when missing
and the bench runs as root; otherwise the Nchan scenarios say what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .procs import ServiceProc, _stop, free_port, pinned

MODULE_DIRS = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"))
MODULE = "ngx_nchan_module.so"
PACKAGES = ("nginx", "libnginx-mod-nchan")
SUB_PATH = "/sub/{run}"
# Nchan keeps this many messages per channel (a new subscriber is sent the oldest kept):
# enough for the two phase events every stream starts with.
BUFFER_LENGTH = 100


class NchanMissing(RuntimeError):
    """nginx or its Nchan module is not installed and could not be installed."""


def _module() -> Path | None:
    for folder in MODULE_DIRS:
        if (folder / MODULE).exists():
            return folder / MODULE
    return None


def ensure_nchan() -> tuple[str, Path]:
    """The nginx binary and the Nchan module, installed with apt-get when missing (root)."""
    nginx, module = shutil.which("nginx") or "/usr/sbin/nginx", _module()
    if module is None or not os.path.exists(nginx):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], env=env,
                           capture_output=True, timeout=600, check=False)
        nginx, module = shutil.which("nginx") or "/usr/sbin/nginx", _module()
    if module is None or not os.path.exists(nginx):
        raise NchanMissing(f"needs the Debian packages {' '.join(PACKAGES)} "
                           "(apt-get install them, or run the bench as root)")
    return nginx, module


def config(workdir: Path, module: Path, port: int, redis_url: str | None) -> str:
    """One single-process nginx serving Nchan on 127.0.0.1:``port``."""
    store = "nchan_redis_pass bench_redis;" if redis_url else ""
    upstream = (
        f"upstream bench_redis {{ nchan_redis_server {redis_url}; }}" if redis_url else ""
    )
    tmp = workdir / "nginx-tmp"
    return f"""
load_module {module};
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 400000;
pid {workdir}/nginx-{port}.pid;
error_log {workdir}/nginx-{port}.log warn;
events {{ worker_connections 200000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  {upstream}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /readyz {{ return 200 "ok"; }}
    location ~ ^/pub/([A-Za-z0-9_.-]+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length {BUFFER_LENGTH};
      nchan_message_timeout 1h;
      {store}
    }}
    location ~ ^/sub/([A-Za-z0-9_.-]+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_subscriber_first_message oldest;
      {store}
    }}
  }}
}}
"""


@contextmanager
def nginx_process(workdir: Path, redis_url: str | None, core: int | None) -> Iterator[ServiceProc]:
    """nginx + Nchan on a free port (the caller awaits ``wait_service``: /readyz is 200)."""
    nginx, module = ensure_nchan()
    port = free_port()
    (workdir / "nginx-tmp").mkdir(exist_ok=True)
    conf = workdir / f"nginx-{port}.conf"
    conf.write_text(config(workdir, module, port, redis_url))
    log = workdir / f"nginx-{port}.log"
    out = workdir / f"nginx-{port}.out"
    with out.open("wb") as handle:
        proc = subprocess.Popen(
            pinned(core, [nginx, "-e", str(log), "-p", str(workdir), "-c", str(conf)]),
            stdout=handle, stderr=subprocess.STDOUT,
        )
    try:
        yield ServiceProc(port=port, proc=proc, log=log)
    finally:
        _stop(proc)
