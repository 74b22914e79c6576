"""Graceful shutdown of a real ``python -m gateway serve`` process.

SIGTERM mid-stream: the server stops accepting connections at once, lets the running stream
finish within ``shutdown_grace``, and exits 0. With a short grace and a long stream the process
exits soon after the grace, and the client's stream ends early.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "glm-4.7-flash"
START_TIMEOUT = 60.0


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def gateway(tmp_path: Path, *, chunks: int, delay_ms: int, grace: float) -> Iterator[Gateway]:
    script = tmp_path / "slow.jsonl"
    pieces = ["Counting slowly.</think>"] + [f"{i} " for i in range(1, chunks)]
    script.write_text(json.dumps({"chunks": pieces, "delay_ms": delay_ms}) + "\n")
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "port": port,
                "log_level": "warning",
                "shutdown_grace": grace,
                "models": [{"id": MODEL, "backend": {"type": "scripted", "path": str(script)}}],
            }
        )
    )
    log = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLM_GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(process, f"http://127.0.0.1:{port}", port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the gateway exited with {process.returncode}:\n{gw.output()}")
            try:
                if httpx.get(f"{gw.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway did not become ready:\n{gw.output()}")
            time.sleep(0.1)
        yield gw
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@dataclass
class StreamReader:
    """Reads one streaming request on a thread, recording what came and how it ended."""

    url: str
    data: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Count"}], "stream": True}
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(60.0)) as client,
                client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.data.append(line[len("data: ") :])
        except BaseException as exc:  # recorded for the test to look at
            self.error = exc

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1] == "[DONE]"

    def text(self) -> str:
        out = ""
        for payload in self.data:
            if payload == "[DONE]":
                continue
            event = json.loads(payload)
            for choice in event.get("choices", []):
                out += choice["delta"].get("content") or ""
        return out


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def assert_no_server_errors(gw: Gateway) -> None:
    log = gw.log.read_text(errors="replace")
    for marker in ("Traceback", "unhandled error", "Exception in ASGI application"):
        assert marker not in log, f"the server logged {marker!r} while shutting down:\n{log}"


def _first_deltas(reader: StreamReader, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(reader.data) < count:
        assert reader.error is None, reader.error
        assert time.monotonic() < deadline, "the stream did not start"
        time.sleep(0.02)


def test_sigterm_lets_the_running_stream_finish_refuses_new_and_exits_0(tmp_path: Path) -> None:
    chunks, delay_ms = 30, 100  # a three-second stream
    with gateway(tmp_path, chunks=chunks, delay_ms=delay_ms, grace=30) as gw:
        reader = StreamReader(gw.url)
        thread = reader.start()
        _first_deltas(reader, 3)  # role chunk and the first deltas
        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)

        # New connections are refused soon after the signal (the listener closes).
        deadline = time.monotonic() + 5
        while not _refused(gw.url):
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert not reader.done, "the stream finished before the server stopped accepting"

        # The running stream completes in full.
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert reader.error is None, f"{reader.error!r}\n{gw.output()}"
        assert reader.done
        assert reader.text() == "".join(f"{i} " for i in range(1, chunks)).strip()

        code = _wait(gw.process, 30)
        exited = time.monotonic() - signalled
        assert code is not None, f"still running 30 s after SIGTERM:\n{gw.output()}"
        print(f"\nexit code {code}, {exited:.2f} s after SIGTERM")
        assert_no_server_errors(gw)
        assert code == 0, f"exit code {code} after a graceful shutdown:\n{gw.output()}"


def test_short_grace_cuts_a_long_stream_and_exits_soon(tmp_path: Path) -> None:
    grace = 0.5
    chunks, delay_ms = 300, 100  # a thirty-second stream
    with gateway(tmp_path, chunks=chunks, delay_ms=delay_ms, grace=grace) as gw:
        reader = StreamReader(gw.url)
        thread = reader.start()
        _first_deltas(reader, 3)
        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)

        code = _wait(gw.process, 30)
        exited = time.monotonic() - signalled
        assert code is not None, f"still running 30 s after SIGTERM:\n{gw.output()}"
        thread.join(timeout=30)
        assert not thread.is_alive()
        print(f"\nexit code {code}, {exited:.2f} s after SIGTERM (grace {grace} s)")
        # Generous: the grace, uvicorn's polling and the lifespan shutdown, on a busy machine.
        assert exited < grace + 5, (
            f"the process took {exited:.1f} s to exit with shutdown_grace={grace}:\n{gw.output()}"
        )
        # The client's stream ended early: cut off, never completed.
        assert not reader.done
        assert len(reader.text().split()) < chunks - 1
        # Cancelling the stream at the end of the grace is a normal part of shutting down.
        assert_no_server_errors(gw)
        assert code == 0, f"exit code {code}:\n{gw.output()}"
