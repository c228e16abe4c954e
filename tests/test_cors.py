"""CORS for the dashboard origins of MANTIS_CORS_ORIGINS, and none for anyone else."""

from __future__ import annotations

from runner_bridge import Bridge
from service.settings import Settings

DASH = "http://dash.example:8443"
EVIL = "http://evil.example"


def cors_headers(resp) -> dict[str, str]:
    return {
        k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("access-control-")
    }


def varies_on_origin(resp) -> bool:
    values = ",".join(resp.headers.getall("Vary", []))
    return "origin" in [v.strip().lower() for v in values.split(",")]


def finished_run(bridge: Bridge) -> str:
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    run.append({"kind": "step", "step_index": 1})
    return run.finish("complete")


async def test_a_listed_origin_may_read_every_answer_of_the_api(make_service, bridge) -> None:
    # Listed with a trailing slash and capitals: matched as browsers serialize origins.
    svc = await make_service(cors_origins=("HTTP://Dash.Example:8443/",))
    terminal_id = finished_run(bridge)
    origin = {"Origin": DASH}
    answers = {
        "json page": await svc.client.get("/v1/runs/r1/events", headers=svc.headers(**origin)),
        "stream": await svc.client.get(
            "/v1/runs/r1/events?sse=true", headers=svc.headers(**origin)
        ),
        # Without CORS headers on the 204 the browser sees a network error and retries.
        "204": await svc.client.get(
            "/v1/runs/r1/events?sse=true",
            headers=svc.headers(**origin, **{"Last-Event-ID": terminal_id}),
        ),
        "401": await svc.client.get("/v1/runs/r1/events", headers=origin),
        "404": await svc.client.get("/v1/runs/nope/events", headers=svc.headers(**origin)),
        "ticket": await svc.client.post("/v1/runs/r1/tickets", headers=svc.headers(**origin)),
    }
    statuses = {name: resp.status for name, resp in answers.items()}
    assert statuses == {
        "json page": 200, "stream": 200, "204": 204, "401": 401, "404": 404, "ticket": 201
    }
    for name, resp in answers.items():
        assert cors_headers(resp) == {
            "access-control-allow-origin": DASH,
            "access-control-expose-headers": "Retry-After",
        }, name
        assert varies_on_origin(resp), name
        await resp.read()


async def test_an_unlisted_origin_gets_no_cors_headers(make_service, bridge) -> None:
    svc = await make_service(cors_origins=(DASH,))
    finished_run(bridge)
    for origin in (EVIL, DASH + ".evil.example", "null", "http://dash.example"):
        resp = await svc.client.get("/v1/runs/r1/events", headers=svc.headers(Origin=origin))
        assert resp.status == 200
        assert cors_headers(resp) == {}, origin
        # The answer still depends on Origin, so a shared cache must key on it.
        assert varies_on_origin(resp)
    no_origin = await svc.client.get("/v1/runs/r1/events", headers=svc.headers())
    assert cors_headers(no_origin) == {}
    health = await svc.client.get("/healthz", headers={"Origin": DASH})
    assert cors_headers(health) == {} and not varies_on_origin(health)


async def test_no_origin_is_listed_by_default(make_service, bridge) -> None:
    svc = await make_service()
    finished_run(bridge)
    resp = await svc.client.get("/v1/runs/r1/events", headers=svc.headers(Origin=DASH))
    assert resp.status == 200
    assert cors_headers(resp) == {} and not varies_on_origin(resp)
    preflight = await svc.client.options(
        "/v1/runs/r1/events", headers={"Origin": DASH, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status == 204
    assert cors_headers(preflight) == {}


async def test_preflight_names_the_methods_and_headers(make_service) -> None:
    svc = await make_service(cors_origins=(EVIL + ":1", DASH))
    for path, method, asked in (
        ("/v1/runs/r1/events", "GET", "last-event-id,x-mantis-token"),
        ("/v1/runs/r1/tickets", "POST", "content-type,x-mantis-token"),
    ):
        resp = await svc.client.options(
            path,
            headers={
                "Origin": DASH,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": asked,
            },
        )
        assert resp.status == 204, path
        got = cors_headers(resp)
        assert got["access-control-allow-origin"] == DASH
        methods = {m.strip() for m in got["access-control-allow-methods"].split(",")}
        assert {"GET", "POST"} <= methods
        allowed = {h.strip().lower() for h in got["access-control-allow-headers"].split(",")}
        assert {"x-mantis-token", "last-event-id", "content-type"} <= allowed
        assert int(got["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in got
        assert varies_on_origin(resp)

    denied = await svc.client.options(
        "/v1/runs/r1/events", headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"}
    )
    assert denied.status == 204
    assert cors_headers(denied) == {}


def test_origins_come_from_a_comma_list() -> None:
    settings = Settings.from_env({"MANTIS_CORS_ORIGINS": f" {DASH}/ , ,http://localhost:3000"})
    assert settings.cors_origins == (DASH, "http://localhost:3000")
    assert Settings.from_env({}).cors_origins == ()
