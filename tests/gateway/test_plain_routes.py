"""The request-in, response-out endpoints are served by plain Starlette routes, documented by
their FastAPI routes; the rest stay FastAPI's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from backends.scripted import ScriptedBackend, ScriptedBackendSettings, ScriptedResponse
from gateway.app import create_app
from gateway.plain_routes import serve_plain
from gateway.settings import ModelSettings, Settings


def _served_by(app: FastAPI, method: str, path: str) -> Any:
    scope = {"type": "http", "method": method, "path": path}
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
    return None


def _dependency() -> int:
    return 1


def test_only_bare_request_to_response_endpoints_are_swapped() -> None:
    router = APIRouter()

    @router.post("/plain")
    async def plain(request: Request) -> Response:
        return JSONResponse({"plain": True})

    @router.get("/returns-a-dict")
    async def returns_a_dict(request: Request) -> dict[str, bool]:
        return {"dict": True}

    @router.get("/has-a-dependency")
    async def has_a_dependency(request: Request, n: int = Depends(_dependency)) -> Response:
        return JSONResponse({"n": n})

    @router.get("/item/{item_id}")
    async def item(request: Request, item_id: str) -> Response:
        return JSONResponse({"id": item_id})

    app = FastAPI()
    app.include_router(router)
    serve_plain(app, [router])
    assert type(_served_by(app, "POST", "/plain")) is Route
    for path in ("/returns-a-dict", "/has-a-dependency", "/item/x"):
        assert type(_served_by(app, "GET", path)) is not Route, path
    with TestClient(app) as client:
        assert client.post("/plain").json() == {"plain": True}
        assert client.get("/returns-a-dict").json() == {"dict": True}
        assert client.get("/has-a-dependency").json() == {"n": 1}
        assert client.get("/item/x").json() == {"id": "x"}
        assert client.get("/plain").status_code == 405
    # Still documented, once.
    assert list(app.openapi()["paths"]["/plain"]) == ["post"]


def _app() -> FastAPI:
    settings = Settings(
        models=[ModelSettings(id="m", backend=ScriptedBackendSettings(path="unused.jsonl"))]
    )
    backend = ScriptedBackend([ScriptedResponse(("Hi</think>", "there"))])
    return create_app(settings, backends={"m": backend})


def test_the_wire_api_routes_are_plain_and_still_documented() -> None:
    app = _app()
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
        assert type(_served_by(app, "POST", path)) is Route, path
        assert "post" in app.openapi()["paths"][path]
    with TestClient(app) as client:
        ok = client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"] == "there"
        # Errors raised in a plain route still get the API's own shape.
        bad = client.post(
            "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        anthropic = client.post("/v1/messages", json={"model": "m"})
        assert anthropic.status_code == 400
        assert anthropic.json()["type"] == "error"
        wrong_method = client.get("/v1/chat/completions")
        assert wrong_method.status_code == 405
        assert "error" in wrong_method.json()
        assert client.get("/v1/models").json()["data"][0]["id"] == "m"
