"""The reference in docs/ stays true where that is cheap to check: every route the app
serves, every MANTIS_* variable the code reads, every doc listed in the index, every link
pointing at something."""

from __future__ import annotations

import re

from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import ROOT

DOCS = ROOT / "docs"
CODE_PACKAGES = ["runlog", "runner_bridge", "service", "mantis_agent"]
ENV_NAME = re.compile(r"\bMANTIS_[A-Z0-9_]*[A-Z0-9]\b")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")
# Docs the index lists that other branches add; a link to one is fine before it exists.
PLANNED: set[str] = set()  # docs linked before they are written (none now)


def _docs_text() -> str:
    return "\n".join(path.read_text() for path in sorted(DOCS.glob("*.md")))


def _routes() -> set[tuple[str, str]]:
    settings = Settings(tenant_tokens="acme=secret")
    app = create_app(settings, TokenTable.parse("acme=secret"), "redis://127.0.0.1:1/0")
    found = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue  # HEAD comes with GET; OPTIONS is the CORS preflight (tickets.md)
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path:
            found.add((route.method, path))
    return found


def test_every_route_is_documented() -> None:
    routes = _routes()
    assert ("GET", "/v1/runs/{run_id}/events") in routes
    lines = _docs_text().splitlines()
    missing = [
        f"{method} {path}"
        for method, path in sorted(routes)
        if not any(method in line and path in line for line in lines)
    ]
    assert not missing, f"routes no doc in docs/ names (method and path on one line): {missing}"


def _env_names_in_code() -> set[str]:
    names: set[str] = set()
    for package in CODE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names |= set(ENV_NAME.findall(path.read_text()))
    return names


def test_every_setting_is_in_settings_md() -> None:
    names = _env_names_in_code()
    # The ones each part must read: if these vanish, the scan is broken, not the code.
    assert {"MANTIS_REDIS_URL", "MANTIS_ENDPOINT", "MANTIS_STATE_DIR"} <= names
    documented = set(ENV_NAME.findall((DOCS / "settings.md").read_text()))
    assert not names - documented, f"add to docs/settings.md: {sorted(names - documented)}"
    # And the other way: a documented variable that nothing reads any more misleads.
    assert not documented - names, f"read by no code: {sorted(documented - names)}"


def test_settings_md_defaults_match_the_code() -> None:
    defaults = Settings()
    table = (DOCS / "settings.md").read_text()
    expected = {
        "MANTIS_PORT": defaults.port,
        "MANTIS_HEARTBEAT_S": defaults.heartbeat_s,
        "MANTIS_STREAM_MAX_S": defaults.stream_max_s,
        "MANTIS_STREAM_MAXLEN": defaults.stream_maxlen,
        "MANTIS_RETENTION_S": defaults.retention_s,
        "MANTIS_CLIENT_BACKLOG_BYTES": defaults.client_backlog_bytes,
        "MANTIS_REDIS_MAX_CONNECTIONS": defaults.redis_max_connections,
        "MANTIS_REPLAY_CACHE_BYTES": defaults.replay_cache_bytes,
        "MANTIS_TICKET_TTL_S": defaults.ticket_ttl_s,
        "MANTIS_TICKET_MAX_LIFE_S": defaults.ticket_max_life_s,
    }
    for name, value in expected.items():
        row = re.search(rf"^\| `{name}` \| `([^`]+)`", table, re.MULTILINE)
        assert row is not None, f"{name} has no row with a default in docs/settings.md"
        assert float(row.group(1)) == float(value), (name, row.group(1), value)


def test_index_lists_every_doc_and_links_resolve() -> None:
    index = (DOCS / "README.md").read_text()
    listed = set(LINK.findall(index))
    present = {path.name for path in DOCS.glob("*.md")} - {"README.md"}
    assert not present - listed, f"add to docs/README.md: {sorted(present - listed)}"
    dangling = []
    for path in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for target in LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            resolved = (path.parent / target).resolve()
            planned = resolved.parent == DOCS and resolved.name in PLANNED
            if not resolved.exists() and not planned:
                dangling.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not dangling, dangling


def test_stream_doc_names_every_error_of_the_events_endpoint() -> None:
    from service import errors, views

    # The ApiErrors the events handler raises: its module imports each one it uses.
    raised = [
        value for value in vars(views).values()
        if isinstance(value, type) and issubclass(value, errors.ApiError)
        and value is not errors.ApiError  # the base, imported to let API errors through
    ]
    assert len(raised) >= 5
    text = (DOCS / "stream.md").read_text()
    missing = [
        f"{cls.status} {cls.code}" for cls in raised
        if not re.search(rf"{cls.status}.*`{cls.code}`", text)
    ]
    assert not missing, f"errors of the events endpoint missing from docs/stream.md: {missing}"
