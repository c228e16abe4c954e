"""GET /openapi.json: every route documented, and schemathesis finds the live service true to it.

The schemathesis run spawns ``python -m service`` on a real redis-server with a short
stream limit (streaming operations end within about a second), seeds a finished and a
running run, and sends up to 25 generated requests per operation with a valid token:
no 500, no status, header, content type or body outside the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runner_bridge import Bridge
from service.app import create_app
from service.auth import TokenTable
from service.openapi import OPERATIONS, build_document, router_operations, shape, undocumented
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS


def app() -> Any:
    return create_app(Settings(tenant_tokens=TOKEN_SPEC), TokenTable.parse(TOKEN_SPEC),
                      "redis://127.0.0.1:1")


def test_every_route_of_the_app_is_documented() -> None:
    missing = undocumented(app())
    assert not missing, f"routes without an OpenAPI description in service/openapi.py: {missing}"


def test_the_document_lists_exactly_the_routes_the_app_serves() -> None:
    the_app = app()
    document = build_document(the_app)
    documented = {
        (method.upper(), shape(path))
        for path, item in document["paths"].items()
        for method in item
    }
    served = {(method, shape(path)) for method, path in router_operations(the_app)}
    assert documented == served


def test_a_new_route_without_a_description_is_caught() -> None:
    the_app = app()

    async def handler(request: Any) -> Any:
        raise NotImplementedError

    the_app.router.add_get("/v1/undocumented", handler)
    assert undocumented(the_app) == {("GET", "/v1/undocumented")}


def test_the_catalogue_describes_the_contract_routes() -> None:
    contract = {
        ("GET", "/v1/runs/{}/events"), ("GET", "/v1/runs/{}"), ("POST", "/v1/runs/{}/cancel"),
        ("POST", "/v1/predict"), ("GET", "/v1/events"), ("POST", "/v1/webhooks"),
        ("GET", "/v1/webhooks"), ("DELETE", "/v1/webhooks/{}"),
        ("GET", "/v1/webhooks/{}/deliveries"), ("GET", "/dashboard"), ("GET", "/healthz"),
        ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
    }
    assert contract <= {(method, shape(path)) for method, path in OPERATIONS}


async def test_the_service_serves_a_valid_openapi_31_document(make_service) -> None:
    svc = await make_service()
    resp = await svc.client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    document = await resp.json()
    assert document["openapi"] == "3.1.0"
    assert "/v1/runs/{run_id}/events" in document["paths"]
    events = document["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]
    assert {"application/json", "text/event-stream"} <= events["content"].keys()
    # schemathesis reads every operation of it without an error.
    loaded = schemathesis.openapi.from_dict(document)
    labels = [result.ok().label for result in loaded.get_all_operations()]
    assert "GET /v1/runs/{run_id}/events" in labels
    assert len(labels) == sum(len(item) for item in document["paths"].values())


# -- schemathesis against a live service -----------------------------------------------


@pytest.fixture
def live_schema(spawn_service, redis_url: str) -> Iterator[Any]:
    with Bridge.from_url(redis_url) as bridge:
        done = bridge.open_run("r-example", tenant="acme")
        done.set_phase("running")
        done.append({"kind": "step", "type": "click"})
        done.finish("complete")
        bridge.open_run("r-running", tenant="acme").set_phase("running")
    svc = spawn_service(
        redis_url,
        MANTIS_STREAM_MAX_S="1",
        MANTIS_HEARTBEAT_S="0.5",
        MANTIS_WEBHOOK_ALLOW_PRIVATE="1",
        MANTIS_WEBHOOK_ALLOW_HTTP="1",
    )
    document = httpx.get(f"{svc.base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=svc.base)
    yield schema


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25


def check_operation(operation: Any) -> None:
    """Up to EXAMPLES_PER_OPERATION generated requests; raises on the first failure."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        # Every request carries a valid token; 401s are covered by the contract tests.
        response = case.call(headers={"X-Mantis-Token": TOKENS["acme"]}, timeout=10)
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_live_service_keeps_to_its_document(live_schema: Any) -> None:
    failures = []
    labels = []
    for result in live_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        try:
            check_operation(operation)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert "GET /v1/runs/{run_id}/events" in labels
    assert not failures, "\n\n".join(failures)
