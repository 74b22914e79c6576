"""HTTP/1.1 framing for the upstream client: the request bytes, the response head, and the
body (``Content-Length``, chunked, or up to the close), decoded from whatever each network
read brought. Pure: no sockets here but the one read of the head."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

# Engines answer with a handful of short headers; anything this long is not an engine.
MAX_HEAD = 64 * 1024


def request_bytes(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: glm-gateway"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        if not any(name.lower() == "content-type" for name in headers):
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body is not None else head


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    keep_alive: bool


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    return Head(int(code), reason, headers, keep_alive)


async def read_head(reader: asyncio.StreamReader) -> tuple[Head, bytes]:
    """The response head, and the body bytes that came with it. A 1xx answer is skipped."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise ValueError("response head too long") from exc
        if len(raw) > MAX_HEAD:
            raise ValueError("response head too long")
        head = parse_head(raw[:-4])
        if not 100 <= head.status < 200:
            return head, b""


class BodyReader:
    """Turns network reads into body bytes; ``done`` once the body is complete."""

    def __init__(self, length: int | None, chunked: bool) -> None:
        self._left = length  # Content-Length bytes still to come
        self._chunked = chunked
        self.until_close = length is None and not chunked
        self.done = length == 0 and not chunked
        self._buffer = bytearray()
        self._pending = bytearray()  # decoded, not yet taken
        self._chunk_left = 0  # data bytes of the current chunk still to come
        self._need_crlf = False  # the CRLF after a chunk's data
        self._trailers = False

    @classmethod
    def for_response(cls, head: Head, method: str, first: bytes) -> BodyReader:
        if method == "HEAD" or head.status in (204, 304):
            reader = cls(0, False)
        elif "chunked" in head.headers.get("transfer-encoding", "").lower():
            reader = cls(None, True)
        elif "content-length" in head.headers:
            value = head.headers["content-length"]
            if not value.isdigit():
                raise ValueError(f"bad Content-Length {value!r}")
            reader = cls(int(value), False)
        else:
            reader = cls(None, False)
        if first:
            reader._pending += reader.feed(first)
        return reader

    def take(self) -> bytes:
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def feed(self, raw: bytes) -> bytes:
        """The body bytes in ``raw``; raises ValueError on broken chunked framing."""
        if self.done:
            return b""
        if self.until_close:
            return raw
        if not self._chunked:
            assert self._left is not None
            data = raw[: self._left]
            self._left -= len(data)
            self.done = self._left == 0
            return data
        self._buffer += raw
        return self._decode()

    def _decode(self) -> bytes:
        out = bytearray()
        buf = self._buffer
        pos = 0
        n = len(buf)
        while not self.done:
            if self._chunk_left:
                take = min(self._chunk_left, n - pos)
                out += buf[pos : pos + take]
                pos += take
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._need_crlf = True
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if n - pos > 4096:
                    raise ValueError("chunk size line too long")
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if self._need_crlf:
                if line:
                    raise ValueError("chunk data longer than its size")
                self._need_crlf = False
                continue
            if self._trailers:
                self.done = not line  # trailer fields end with an empty line
                continue
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ValueError(f"bad chunk size {size_text[:20]!r}") from None
            if size < 0:
                raise ValueError("negative chunk size")
            if size == 0:
                self._trailers = True
            elif pos + size + 2 <= n and buf[pos + size : pos + size + 2] == b"\r\n":
                # The whole chunk and its CRLF are here (the usual case): in one step.
                out += buf[pos : pos + size]
                pos += size + 2
                continue
            self._chunk_left = size
        del buf[:pos]
        return bytes(out)
