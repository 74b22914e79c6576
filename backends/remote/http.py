"""The upstream HTTP client: aiohttp, chosen by measurement (``bench/upstream_client_probe.py``:
one 16-token stream costs about 0.4 ms with aiohttp against 0.9-1.2 ms with httpx, the largest
single part of the gateway's overhead on an instant upstream).

The rest of the backend sees only this module: replies as ``Reply`` / ``Stream``, and network
failures as the ``UpstreamError`` family, so the error mapping does not depend on the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp


class UpstreamError(Exception):
    """The network failed (as opposed to the engine answering an error)."""


class UpstreamConnectError(UpstreamError):
    """No connection: refused, unreachable, or not accepted within the connect timeout."""


class UpstreamTimeout(UpstreamError):
    """Connected, but nothing came for the read timeout."""


class UpstreamDropped(UpstreamError):
    """The connection broke: closed before an answer, or in the middle of a body."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    # Bounds each read: the wait for the headers, and between two chunks of a stream.
    read: float

    def client(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, connect=self.connect, sock_connect=self.connect, sock_read=self.read
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole (non-streamed) answer."""

    status: int
    body: bytes
    reason: str = ""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class Stream:
    """A streamed answer: its status, and its body as lines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    async def read(self) -> Reply:
        async with _mapped():
            body = await self._response.read()
        return Reply(self.status, body, self._response.reason or "")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: whatever one read brought (one or more SSE events, or
        part of one), so that events that came together are handled without a wait each."""
        async with _mapped():
            async for chunk in self._response.content.iter_any():
                yield chunk

    @property
    def finished(self) -> bool:
        return self._response.content.at_eof()


class HttpClient:
    def __init__(self) -> None:
        # No connection cap: every in-flight generation holds one streaming connection, and
        # the gateway's admission control already bounds how many there are.
        self._session = aiohttp.ClientSession(
            # Idle connections are dropped before the servers drop them (uvicorn, under vLLM
            # and SGLang, after 5 s): reusing one the server is closing fails the request.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
            # The engine's JSON is read as is; no cookies or redirects between services.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def get(self, url: str, headers: dict[str, str], timeouts: Timeouts) -> Reply:
        async with (
            _mapped(),
            self._session.get(
                url, headers=headers, timeout=timeouts.client(), allow_redirects=False
            ) as response,
        ):
            return Reply(response.status, await response.read(), response.reason or "")

    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str], timeouts: Timeouts
    ) -> Reply:
        async with self.stream(url, body, headers, timeouts) as stream:
            return await stream.read()

    @asynccontextmanager
    async def stream(
        self, url: str, body: dict[str, Any], headers: dict[str, str], timeouts: Timeouts
    ) -> AsyncIterator[Stream]:
        """POST ``body`` as JSON; the answer streams while the context is open. Leaving the
        context before the body's end closes the connection, which tells the engine to abort
        the generation (a fully read body returns its connection to the pool)."""
        data = json.dumps(body, ensure_ascii=False).encode()
        send = {**headers, "Content-Type": "application/json"}
        async with _mapped():
            try:
                response = await self._session.post(
                    url, data=data, headers=send, timeout=timeouts.client(), allow_redirects=False
                )
            except _STALE as exc:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                # Closed before any answer: most likely a kept-alive connection the server
                # had just closed. Once more, on a fresh connection.
                response = await self._session.post(
                    url, data=data, headers=send, timeout=timeouts.client(), allow_redirects=False
                )
        try:
            yield Stream(response)
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()


_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


@asynccontextmanager
async def _mapped() -> AsyncIterator[None]:
    try:
        yield
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        raise UpstreamConnectError(str(exc) or type(exc).__name__) from exc
    except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
        raise UpstreamTimeout(str(exc) or type(exc).__name__) from exc
    except aiohttp.ClientError as exc:
        # ServerDisconnectedError, ClientPayloadError, ClientOSError (reset), ...
        raise UpstreamDropped(str(exc) or type(exc).__name__) from exc
