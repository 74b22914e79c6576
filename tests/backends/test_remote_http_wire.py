"""HTTP/1.1 framing of the upstream client: bodies decoded the same however the network
splits them, and broken framing refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.remote.http_wire import BodyReader, Head, parse_head, request_bytes
from backends.remote.wire import MALFORMED, parse_events


def chunked(*parts: bytes, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in parts)
    return out + b"0\r\n" + trailer + b"\r\n"


def decode(reader: BodyReader, pieces: list[bytes]) -> bytes:
    return b"".join(reader.feed(p) for p in pieces)


def head(**headers: str) -> Head:
    lines = "".join(f"\r\n{k.replace('_', '-')}: {v}" for k, v in headers.items())
    return parse_head(f"HTTP/1.1 200 OK{lines}".encode())


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.data())
def test_chunked_bodies_decode_the_same_however_they_are_split(
    parts: list[bytes], data: st.DataObject
) -> None:
    raw = chunked(*parts, extension=b";x=1", trailer=b"X-Trailer: t\r\n")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=10)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    reader = BodyReader.for_response(head(transfer_encoding="chunked"), "POST", b"")
    assert decode(reader, pieces) == b"".join(parts)
    assert reader.done


def test_a_chunked_body_is_not_done_before_its_last_chunk() -> None:
    reader = BodyReader.for_response(head(transfer_encoding="chunked"), "POST", b"")
    assert reader.feed(b"5\r\nhello\r\n") == b"hello"
    assert not reader.done
    assert reader.feed(b"0\r\n\r\n") == b""
    assert reader.done


@pytest.mark.parametrize(
    "raw",
    [b"zz\r\nhello\r\n", b"5\r\nhello!!\r\n", b"-5\r\nhello\r\n", b"f" * 5000],
)
def test_broken_chunked_framing_is_refused(raw: bytes) -> None:
    reader = BodyReader.for_response(head(transfer_encoding="chunked"), "POST", b"")
    with pytest.raises(ValueError):
        reader.feed(raw)


def test_content_length_and_close_delimited_bodies() -> None:
    sized = BodyReader.for_response(head(content_length="5"), "GET", b"")
    assert decode(sized, [b"he", b"llo", b"EXTRA"]) == b"hello"
    assert sized.done
    empty = BodyReader.for_response(head(content_length="0"), "GET", b"")
    assert empty.done
    until_close = BodyReader.for_response(head(), "GET", b"")
    assert until_close.until_close and not until_close.done
    assert decode(until_close, [b"a", b"b"]) == b"ab"
    with pytest.raises(ValueError):
        BodyReader.for_response(head(content_length="x"), "GET", b"")


def test_heads_and_keep_alive() -> None:
    assert head().keep_alive
    assert not head(connection="close").keep_alive
    assert not parse_head(b"HTTP/1.0 200 OK").keep_alive
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive").keep_alive
    parsed = parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain")
    assert (parsed.status, parsed.reason, parsed.headers) == (
        404,
        "Not Found",
        {"content-type": "text/plain"},
    )
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc OK", b"HTTP/1.1 200 OK\r\nno colon"):
        with pytest.raises(ValueError):
            parse_head(bad)


def test_request_bytes() -> None:
    raw = request_bytes("POST", "/v1/completions", "h:8000", {"Authorization": "Bearer k"}, b"{}")
    head_part, body = raw.split(b"\r\n\r\n")
    lines = head_part.split(b"\r\n")
    assert lines[0] == b"POST /v1/completions HTTP/1.1"
    assert b"Host: h:8000" in lines and b"Authorization: Bearer k" in lines
    assert b"Content-Type: application/json" in lines and b"Content-Length: 2" in lines
    assert body == b"{}"
    assert request_bytes("GET", "/health", "h", {}, None).endswith(b"\r\n\r\n")


def test_events_are_parsed_in_one_go_and_one_by_one_alike() -> None:
    batch = ['{"a": 1}', "[DONE]", '{"b": 2}']
    assert parse_events(batch) == [{"a": 1}, "[DONE]", {"b": 2}]
    assert parse_events(['{"a": 1}', "not json", '{"b": 2}']) == [{"a": 1}, MALFORMED, {"b": 2}]
    # Data that would join into other values is still read one event at a time.
    assert parse_events(["1, 2", "3"]) == [MALFORMED, 3]
    assert parse_events([]) == []
