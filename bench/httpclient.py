"""A minimal keep-alive HTTP/1.1 client on raw asyncio streams, for load generation.

Every target is measured with this same client, so its own cost cancels out of "added
latency"; it is kept small (no httpx) so that on a 2-core machine the client takes as little
CPU as possible from the servers it measures. Streams are read as they arrive and every SSE
event that carries text is time-stamped on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    sent: float = 0.0  # perf_counter when the request was written
    done: float = 0.0  # perf_counter when the last byte arrived
    # Streams: arrival time of each SSE event that carried text (content or reasoning).
    token_times: list[float] = field(default_factory=list)
    events: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    # llama-server's per-request ``timings`` (prompt_n: prompt tokens it evaluated).
    timings: dict[str, Any] | None = None
    # Streams: the text of each event that carried any, in order.
    texts: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent if self.token_times else float("nan")

    def json(self) -> Any:
        return json.loads(self.body)


def _text_of(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if delta is not None:
        return str(
            (delta.get("content") or "")
            + (delta.get("reasoning_content") or delta.get("reasoning") or "")
        )
    return str(choice.get("text") or "")


class Connection:
    """One keep-alive connection; requests on it go one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._reader = self._writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Response:
        if self._writer is None:
            await self._connect()
        try:
            return await self._request(method, path, body, headers or {}, stream)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            # A server may close an idle keep-alive connection: retry once on a fresh one.
            await self.close()
            await self._connect()
            return await self._request(method, path, body, headers or {}, stream)

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], stream: bool
    ) -> Response:
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Authorization: Bearer sk-bench\r\n"
        )
        for k, v in headers.items():
            head += f"{k}: {v}\r\n"
        data = head.encode() + b"\r\n" + body
        sent = time.perf_counter()
        writer.write(data)
        await writer.drain()
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        resp = Response(status, hdrs, sent=sent)
        sse = stream and hdrs.get("content-type", "").startswith("text/event-stream")
        buf = b""
        parts: list[bytes] = []

        def feed(chunk: bytes) -> None:
            nonlocal buf
            if not sse:
                parts.append(chunk)
                return
            now = time.perf_counter()
            buf += chunk
            while True:
                idx = buf.find(b"\n\n")
                if idx < 0:
                    break
                event, buf = buf[:idx], buf[idx + 2 :]
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue
                    resp.events += 1
                    try:
                        obj = json.loads(payload)
                    except ValueError:
                        continue
                    if "error" in obj:
                        resp.error = str(obj["error"])
                    text = _text_of(obj)
                    if text:
                        resp.token_times.append(now)
                        resp.texts.append(text)
                    for choice in obj.get("choices") or []:
                        if choice.get("finish_reason"):
                            resp.finish_reason = choice["finish_reason"]
                    if obj.get("usage"):
                        resp.usage = obj["usage"]
                    if obj.get("timings"):
                        resp.timings = obj["timings"]

        if "content-length" in hdrs:
            feed(await reader.readexactly(int(hdrs["content-length"])))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers (none expected) end with an empty line.
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                chunk = await reader.readexactly(size + 2)
                feed(chunk[:-2])
        else:
            feed(await reader.read())
            await self.close()
        resp.done = time.perf_counter()
        if not sse:
            resp.body = b"".join(parts)
            if stream:  # a streamed request that got a JSON error
                resp.error = resp.body.decode(errors="replace")[:500]
        if hdrs.get("connection", "").lower() == "close":
            await self.close()
        return resp


async def closed_loop(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    warmup: float = 0.5,
) -> dict[str, Any]:
    """``concurrency`` workers each send requests back to back for ``duration`` seconds.

    Returns requests completed per second inside the window (after a warm-up), errors, and
    the latencies of those requests.
    """
    conns = [Connection(host, port) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    completed = 0
    capped_at: float | None = None
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker(conn: Connection) -> None:
        nonlocal errors, completed, capped_at
        while time.perf_counter() < stop_at and completed < max_requests:
            try:
                resp = await asyncio.wait_for(conn.request("POST", path, body), 60)
            except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
                errors += 1
                await conn.close()
                continue
            # Throughput: completions that land inside the window, whenever they were sent.
            if measure_from <= resp.done <= stop_at:
                if resp.status == 200:
                    completed += 1
                    latencies.append(resp.done - resp.sent)
                    if completed >= max_requests and capped_at is None:
                        capped_at = resp.done
                else:
                    errors += 1

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    elapsed = (capped_at or min(time.perf_counter(), stop_at)) - measure_from
    return {
        "concurrency": concurrency,
        "completed": completed,
        "errors": errors,
        "seconds": elapsed,
        "rps": completed / elapsed if elapsed > 0 else float("nan"),
        "latencies": latencies,
    }
