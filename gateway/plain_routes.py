"""Serve the request-in, response-out routes as plain Starlette routes.

FastAPI's route dispatch (included routers, dependency solving, an exit stack per request,
return-value serialisation) costs about 80 µs of CPU per request even for an endpoint whose
only parameter is the ``Request`` and which returns a ``Response`` itself: about a tenth of
the gateway's whole overhead on an instant upstream (``python -m bench overhead``; 930
against 1,007 µs per request, both versions side by side). Those endpoints need none of it,
so a ``starlette.routing.Route`` calling the same function is put in front of each: it
matches first, and the FastAPI route stays the one the OpenAPI schema is generated from.
Exceptions reach the same handlers either way (Starlette's per-route wrapper looks them up in
the app's exception middleware).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

Endpoint = Callable[[Request], Awaitable[Response]]


def _plain_endpoint(route: BaseRoute) -> Endpoint | None:
    """The endpoint, when it takes just the request and answers a ``Response`` itself."""
    if not isinstance(route, APIRoute):
        return None
    endpoint = route.endpoint
    if not inspect.iscoroutinefunction(endpoint) or route.dependencies:
        return None
    try:
        hints = typing.get_type_hints(endpoint)
    except (NameError, TypeError):
        return None
    params = list(inspect.signature(endpoint).parameters.values())
    if len(params) != 1 or hints.get(params[0].name) is not Request:
        return None
    answer = hints.get("return")
    if not (isinstance(answer, type) and issubclass(answer, Response)):
        return None
    return typing.cast(Endpoint, endpoint)


def serve_plain(app: FastAPI, routers: list[APIRouter]) -> None:
    """Put a plain route in front of each eligible route of ``routers`` (included without a
    prefix): it matches first, so the FastAPI one only documents the operation."""
    plain: list[BaseRoute] = []
    for router in routers:
        for route in router.routes:
            endpoint = _plain_endpoint(route)
            if endpoint is not None:
                api_route = typing.cast(APIRoute, route)
                methods = sorted(api_route.methods or ())
                plain.append(Route(api_route.path, endpoint, methods=methods, name=api_route.name))
    app.router.routes[:0] = plain
