"""Active health checks: ``/health`` on every replica, and once its context length."""

from __future__ import annotations

import logging

from ..errors import BackendError
from .engines import Engine, context_length, served_ids
from .http import HttpClient, Timeouts
from .replicas import ReplicaState

logger = logging.getLogger("glm_gateway.backends.remote")


async def check(
    client: HttpClient,
    state: ReplicaState,
    *,
    engine: Engine,
    model: str,
    interval: float,
    configured_context: int | None,
) -> None:
    """One check of one replica; sets ``state.healthy`` (and logs a change). Never raises."""
    r = state.replica
    # A health answer slower than the interval is as good as none.
    timeout = Timeouts(connect=r.connect_timeout, read=max(interval, 2.0))
    reason = ""
    try:
        response = await client.get(
            f"{state.base}/health", headers=state.headers(), timeouts=timeout
        )
        healthy = response.status == 200
        if not healthy:
            reason = f"/health answered {response.status}"
        elif state.max_model_len is None:
            # Without the replica's context length there is no sane max_tokens default
            # (vLLM's is 16), so a replica only counts as up once it is known.
            state.max_model_len = await _context_length(client, state, engine, model, timeout)
            healthy = state.max_model_len is not None or configured_context is not None
            if not healthy:
                reason = f"no context length for {model!r} in /v1/models"
    except Exception as exc:  # whatever went wrong, the loop goes on to the next round
        healthy = False
        reason = f"{type(exc).__name__}: {exc}"
    if healthy != state.healthy:
        if healthy:
            logger.info("%s (%s) is healthy", state.name, state.base)
        else:
            logger.warning("%s (%s) is unhealthy: %s", state.name, state.base, reason)
    state.healthy = healthy


async def _context_length(
    client: HttpClient,
    state: ReplicaState,
    engine: Engine,
    model: str,
    timeout: Timeouts,
) -> int | None:
    response = await client.get(
        f"{state.base}/v1/models", headers=state.headers(), timeouts=timeout
    )
    if response.status in (401, 403):
        raise BackendError(f"{state.name} rejected its api_key on /v1/models")
    if response.status != 200:
        raise BackendError(f"/v1/models answered {response.status}")
    data = response.json()
    entries = data.get("data") if isinstance(data, dict) else None
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    for entry in entries:
        if model in served_ids(engine, entry):
            return context_length(engine, entry)
    served = [e.get("id") for e in entries]
    logger.warning(
        "%s (%s) does not serve the model %r (it serves %s)", state.name, state.base, model, served
    )
    return None
