"""An OpenAI-compatible upstream that answers instantly, for measuring what sits in front of it.

    python -m bench.stub_upstream --port 9000

Raw asyncio (no framework), HTTP/1.1 keep-alive. Routes:

- ``POST /v1/chat/completions``  chat answers (the direct and LiteLLM paths)
- ``POST /v1/completions``       text completions (the gateway's vLLM backend), streamed or not
- ``GET /v1/models``             one model, with ``max_model_len`` as vLLM reports it
- ``GET /health``                200
- ``GET /stats``                 completion requests answered and TCP connections accepted

A request for ``max_tokens`` N gets N tokens: streamed, N SSE events of one token each (then a
finish event, a usage event when ``stream_options.include_usage`` is set, and ``[DONE]``),
written all at once with no delay; not streamed, one JSON body. Each token is the text
a short distinct word such as ``"tok0 "``. Standard library only, so any Python runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

MODEL = "stub"
TOKEN_WORDS = ("tok", "ken", "word")
DEFAULT_TOKENS = 16
MAX_MODEL_LEN = 202_752


def _headers(status: str, content_type: str, length: int | None) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
    if length is None:
        head += "transfer-encoding: chunked\r\n"
    else:
        head += f"content-length: {length}\r\n"
    return (head + "\r\n").encode()


def _json(status: str, obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _headers(status, "application/json", len(body)) + body


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse(obj: Any) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def _token(i: int) -> str:
    # Distinct tokens: LiteLLM aborts a stream that repeats one chunk 100 times in a row.
    return f"{TOKEN_WORDS[i % len(TOKEN_WORDS)]}{i} "


class _Counter:
    n = 0  # requests answered on the completion routes
    connections = 0  # TCP connections accepted


def answer(path: str, body: bytes) -> list[bytes]:
    """The response to one request, as a list of byte strings to write."""
    if path == "/health":
        return [_headers("200 OK", "application/json", 2) + b"{}"]
    if path == "/stats":
        return [_json("200 OK", {"requests": _Counter.n, "connections": _Counter.connections})]
    if path == "/v1/models":
        return [
            _json(
                "200 OK",
                {
                    "object": "list",
                    "data": [
                        {
                            "id": MODEL,
                            "object": "model",
                            "created": 0,
                            "owned_by": "bench",
                            "max_model_len": MAX_MODEL_LEN,
                        }
                    ],
                },
            )
        ]
    if path not in ("/v1/chat/completions", "/v1/completions"):
        return [_json("404 Not Found", {"error": {"message": f"no route {path}"}})]
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        return [_json("400 Bad Request", {"error": {"message": "invalid JSON"}})]
    chat = path == "/v1/chat/completions"
    n = int(req.get("max_tokens") or req.get("max_completion_tokens") or DEFAULT_TOKENS)
    _Counter.n += 1
    rid = f"cmpl-{_Counter.n}"
    created = int(time.time())
    model = req.get("model") or MODEL
    prompt_tokens = 8
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n,
        "total_tokens": prompt_tokens + n,
    }
    if not req.get("stream"):
        text = "".join(_token(i) for i in range(n))
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
                "logprobs": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
            obj = "text_completion"
        return [
            _json(
                "200 OK",
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                },
            )
        ]
    out = [_headers("200 OK", "text/event-stream", None)]
    base: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
    }
    if chat:
        out.append(
            _sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            )
        )
        tokens = [
            _sse(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {"content": _token(i)}, "finish_reason": None}
                    ],
                }
            )
            for i in range(n)
        ]
        end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    else:
        tokens = [
            _sse(
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": _token(i), "logprobs": None, "finish_reason": None}
                    ],
                }
            )
            for i in range(n)
        ]
        end = {
            **base,
            "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
        }
    out.extend(tokens)
    out.append(_sse(end))
    if (req.get("stream_options") or {}).get("include_usage"):
        out.append(_sse({**base, "choices": [], "usage": usage}))
    out.append(_chunk(b"data: [DONE]\n\n"))
    out.append(b"0\r\n\r\n")
    return out


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _Counter.connections += 1
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            _method, path, _ = lines[0].split(" ", 2)
            length = 0
            close = False
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "connection" and v.strip().lower() == "close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            writer.writelines(answer(path.split("?", 1)[0], body))
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
