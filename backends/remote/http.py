"""The upstream HTTP client: HTTP/1.1 over asyncio streams, with a keep-alive pool per origin.

Written here because the general-purpose clients cost more than the rest of a request on an
instant upstream (``bench/upstream_client_probe.py``: one 16-token stream costs 0.9-1.2 ms
with httpx, about 0.4 ms with aiohttp; this client reads a whole network read of chunked
body per await instead of one chunk at a time). It speaks just what the engines need: one
request per connection at a time, ``Content-Length`` or chunked bodies, no redirects, cookies,
proxies or compression (the engines' JSON is read as is).

The rest of the backend sees only this module: replies as ``Reply`` / ``Stream``, and network
failures as the ``UpstreamError`` family, so the error mapping does not depend on the client.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .http_wire import BodyReader, Head, read_head, request_bytes


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


# Idle connections are dropped before the servers drop them (uvicorn, under vLLM and SGLang,
# after 5 s): reusing one the server is closing fails the request.
_IDLE_S = 4.0
_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return host if self.port == default else f"{host}:{self.port}"


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        # Whether a response already came on it: a failure before the first byte of the next
        # one is then most likely the server closing it while idle.
        self.reused = False

    def usable(self, now: float) -> bool:
        return (
            now - self.idle_since < _IDLE_S
            and not self.writer.is_closing()
            and not self.reader.at_eof()
        )

    def close(self) -> None:
        # Abort, not a graceful close: the engine sees the connection go at once and stops
        # the generation (vLLM and llama-server abort on disconnect).
        self.writer.transport.abort()


class Stream:
    """A streamed answer: its status, and its body as it arrives."""

    def __init__(self, conn: _Connection, head: Head, body: BodyReader, timeout: float) -> None:
        self._conn = conn
        self.status = head.status
        self.reason = head.reason
        self._body = body
        self._timeout = timeout

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._conn.reader.read(_READ_SIZE)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"nothing read for {self._timeout:g} s") from exc
        except OSError as exc:
            raise UpstreamDropped(f"{type(exc).__name__}: {exc}") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what one network read brought (one or more SSE events, or
        part of one), so that events that came together are handled without a wait each."""
        data = self._body.take()
        if data:
            yield data
        while not self._body.done:
            raw = await self._read()
            if not raw:
                if self._body.until_close:
                    self._body.done = True
                    break
                raise UpstreamDropped("the connection closed in the middle of the body")
            try:
                data = self._body.feed(raw)
            except ValueError as exc:
                raise UpstreamDropped(f"malformed chunked body: {exc}") from exc
            if data:
                yield data

    async def read(self) -> Reply:
        parts = [part async for part in self.chunks()]
        return Reply(self.status, b"".join(parts), self.reason)


class HttpClient:
    def __init__(self) -> None:
        # No connection cap: every in-flight generation holds one streaming connection, and
        # the gateway's admission control already bounds how many there are.
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._urls: dict[str, tuple[_Origin, str]] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def get(self, url: str, headers: dict[str, str], timeouts: Timeouts) -> Reply:
        async with self._exchange("GET", url, None, headers, timeouts) as stream:
            return await stream.read()

    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str], timeouts: Timeouts
    ) -> Reply:
        async with self.stream(url, body, headers, timeouts) as stream:
            return await stream.read()

    def stream(
        self, url: str, body: dict[str, Any], headers: dict[str, str], timeouts: Timeouts
    ) -> AbstractAsyncContextManager[Stream]:
        """POST ``body`` as JSON; the answer streams while the context is open. Leaving the
        context before the body's end closes the connection, which tells the engine to abort
        the generation (a fully read body returns its connection to the pool)."""
        data = json.dumps(body, ensure_ascii=False).encode()
        return self._exchange("POST", url, data, headers, timeouts)

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        url: str,
        data: bytes | None,
        headers: dict[str, str],
        timeouts: Timeouts,
    ) -> AsyncIterator[Stream]:
        origin, target = self._split(url)
        request = request_bytes(method, target, origin.host_header, headers, data)
        conn, head, body = await self._send(origin, request, method, timeouts)
        stream = Stream(conn, head, body, timeouts.read)
        try:
            yield stream
        finally:
            if body.done and head.keep_alive and not self._closed:
                conn.idle_since = time.monotonic()
                conn.reused = True
                self._idle.setdefault(origin, []).append(conn)
            else:
                conn.close()

    async def _send(
        self, origin: _Origin, request: bytes, method: str, timeouts: Timeouts
    ) -> tuple[_Connection, Head, BodyReader]:
        conn = self._pooled(origin)
        if conn is not None:
            try:
                return await self._roundtrip(conn, request, method, timeouts)
            except UpstreamDropped:
                # Closed before any answer: most likely a kept-alive connection the server
                # had just closed. Once more, on a fresh connection.
                conn.close()
        conn = await self._connect(origin, timeouts.connect)
        try:
            return await self._roundtrip(conn, request, method, timeouts)
        except BaseException:
            conn.close()
            raise

    async def _roundtrip(
        self, conn: _Connection, request: bytes, method: str, timeouts: Timeouts
    ) -> tuple[_Connection, Head, BodyReader]:
        try:
            conn.writer.write(request)
            async with asyncio.timeout(timeouts.read):
                head, rest = await read_head(conn.reader)
        except TimeoutError as exc:
            conn.close()
            raise UpstreamTimeout(f"no answer within {timeouts.read:g} s") from exc
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            raise UpstreamDropped(str(exc) or type(exc).__name__) from exc
        except ValueError as exc:  # not HTTP, or headers past the limit
            conn.close()
            raise UpstreamDropped(f"malformed response head: {exc}") from exc
        try:
            body = BodyReader.for_response(head, method, rest)
        except ValueError as exc:
            conn.close()
            raise UpstreamDropped(f"malformed chunked body: {exc}") from exc
        return conn, head, body

    def _pooled(self, origin: _Origin) -> _Connection | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        tls = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    origin.host, origin.port, ssl=tls, limit=_READ_SIZE
                )
        except TimeoutError as exc:
            raise UpstreamConnectError(f"not connected within {timeout:g} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from exc
        return _Connection(reader, writer)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _split(self, url: str) -> tuple[_Origin, str]:
        known = self._urls.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamConnectError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        split = (_Origin(parts.scheme, parts.hostname, port), target)
        if len(self._urls) < 1024:  # a handful of replicas' endpoints
            self._urls[url] = split
        return split
