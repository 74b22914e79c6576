"""Upstream failures mapped to the backend error family, and which of them a retry on another
replica may cure (see the table in ``backend``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BackendError, BackendTimeout, BackendUnavailable
from .http import Reply, UpstreamConnectError, UpstreamError, UpstreamTimeout
from .replicas import ReplicaState
from .wire import client_error, upstream_message, upstream_param

# Statuses that say "this replica cannot serve right now" rather than "this request is wrong".
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
_CLIENT_ERROR_STATUSES = frozenset({400, 413, 422})

MarkDown = Callable[[ReplicaState, str], None]


class Retryable(Exception):
    """A failure before the first chunk that another replica may not have."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(error.message)
        self.error = error


def status_error(
    state: ReplicaState, response: Reply, model: str, mark_down: MarkDown
) -> Exception:
    status = response.status
    message = upstream_message(response)
    if status in _CLIENT_ERROR_STATUSES:
        return client_error(message, upstream_param(response))
    if status in (401, 403):
        return Retryable(
            BackendError(
                f"{state.name} rejected the api_key configured for it (HTTP {status}); "
                "check the gateway's replica settings."
            )
        )
    if status == 404:
        return Retryable(
            BackendError(f"{state.name} does not serve the model {model!r}: {message}")
        )
    if status in _UNAVAILABLE_STATUSES:
        mark_down(state, f"HTTP {status}")
        return Retryable(
            BackendUnavailable(f"{state.name} is unavailable (HTTP {status}): {message}")
        )
    return Retryable(BackendError(f"{state.name} failed (HTTP {status}): {message}"))


def event_error(state: ReplicaState, error: Any) -> Exception:
    """An error the engine sent as an SSE event after its 200 (e.g. the engine failed)."""
    message = str(error.get("message") if isinstance(error, dict) else error)
    code = error.get("code") if isinstance(error, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    if code in _CLIENT_ERROR_STATUSES or kind == "exceed_context_size_error":
        param = error.get("param") if isinstance(error, dict) else None
        return client_error(message, param if isinstance(param, str) else None)
    return Retryable(BackendError(f"{state.name} failed during the generation: {message}"))


def transport_error(
    state: ReplicaState, exc: UpstreamError, chunks: int, mark_down: MarkDown
) -> tuple[BackendError, bool]:
    """The error to raise for a network failure, and whether another replica may help."""
    if isinstance(exc, UpstreamConnectError):
        mark_down(state, f"{type(exc).__name__}: {exc}")
        return BackendUnavailable(f"{state.name} cannot be reached"), True
    if isinstance(exc, UpstreamTimeout):
        return (
            BackendTimeout(f"{state.name} sent nothing for {state.replica.read_timeout:g} s"),
            False,
        )
    # The connection dropped: a replica that crashed or is shutting down.
    mark_down(state, f"{type(exc).__name__}: {exc}")
    where = "during the generation" if chunks else "before answering"
    return BackendError(f"{state.name} dropped the connection {where}"), True
