"""Who is asking and which stream: the caller's tenant and the stream's Redis hash tag."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from runlog.keys import durable_tag

from ..appkeys import SETTINGS, TOKENS
from ..errors import Unauthorized
from .errors import BadRequest, ReadOnlyStream

MAX_PATH = 1024
# ``runs/<run_id>`` is where run logs are read as durable streams: no stream is made there.
RUNS_PREFIX = "runs/"


def tenant_of(request: web.Request) -> str:
    """``X-Mantis-Token`` or ``Authorization: Bearer``; without either, the anonymous
    tenant when ``MANTIS_STREAMS_ANONYMOUS_TENANT`` is set (loopback only), else 401."""
    token = request.headers.get("X-Mantis-Token")
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    if token is None:
        anonymous = request.app[SETTINGS].streams_anonymous_tenant
        if anonymous:
            return anonymous
        raise Unauthorized("a valid X-Mantis-Token or Authorization: Bearer header is required")
    tenant = request.app[TOKENS].tenant_for(token)
    if tenant is None:
        raise Unauthorized("a valid X-Mantis-Token or Authorization: Bearer header is required")
    return tenant


@dataclass(frozen=True, slots=True)
class Target:
    """One tenant's stream."""

    tenant: str
    path: str
    tag: str


def target_of(request: web.Request, *, writing: bool = False) -> Target:
    tenant = tenant_of(request)
    path = request.match_info["path"]
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise BadRequest(f"the stream path must be 1 to {MAX_PATH} characters")
    if writing and path.startswith(RUNS_PREFIX):
        raise ReadOnlyStream("runs/<run_id> streams are read-only views of run logs")
    return Target(tenant, path, durable_tag(tenant, path))
