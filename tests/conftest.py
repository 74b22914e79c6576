"""Shared fixtures: real uvicorn servers on loopback, and the real models' locations."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import uvicorn
from fastapi import FastAPI

# Helper modules beside the tests assert too: show their failures as pytest shows a test's.
pytest.register_assert_rewrite("tests.backends.events")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GLM_TINY_GGUF = FIXTURES / "models" / "glm-tiny" / "glm-tiny.gguf"
GLM_ARCH_TINY_GGUF = FIXTURES / "models" / "glm-arch-tiny" / "glm-arch-tiny.gguf"
GLM_TINY_TOOLS: list[dict[str, Any]] = json.loads(
    (FIXTURES / "models" / "glm-tiny" / "tools.json").read_text(encoding="utf-8")
)
SMOLLM_GGUF = Path(
    os.environ.get(
        "GLM_GATEWAY_TEST_SMOLLM",
        Path.home() / ".cache" / "glm-gateway" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
)


def unavailable(message: str) -> NoReturn:
    """Something a test needs is missing: tests must not silently vanish in CI, so it fails
    there; elsewhere it skips."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_file(path: Path, how: str) -> Path:
    if path.is_file():
        return path
    unavailable(f"{path} is missing ({how})")


def require_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        unavailable("llama-cpp-python is not installed")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    require_llama_cpp()
    return require_file(SMOLLM_GGUF, "run .ci/fetch-models or see README")


@pytest.fixture(scope="session")
def glm_tiny_path() -> Path:
    require_llama_cpp()
    return require_file(GLM_TINY_GGUF, "copied from shared/models/glm-tiny")


@pytest.fixture(scope="session")
def glm_arch_tiny_path() -> Path:
    require_llama_cpp()
    return require_file(GLM_ARCH_TINY_GGUF, "copied from shared/models/glm-arch-tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve(app: FastAPI, *, ready_timeout: float = 120.0) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on loopback in a thread; yield its base URL.

    Waits for /ready so tests start once the model has loaded.
    """
    import httpx

    port = free_port()
    settings = getattr(getattr(app, "state", None), "settings", None)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        # As the CLI runs it (gateway/cli.py).
        timeout_keep_alive=int(getattr(settings, "http_keepalive_timeout", 5)),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the gateway did not become ready")
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class OpenAIClients:
    """One ``openai.OpenAI`` per base URL, all closed by ``close()`` (leaked sockets would
    surface as ResourceWarnings, which are errors in this suite)."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def __call__(self, url: str) -> Any:
        import openai

        client = self._clients.get(url)
        if client is None:
            client = openai.OpenAI(
                base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120
            )
            self._clients[url] = client
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def closed_after_module(self) -> Any:
        """An autouse fixture that closes these clients after the module's tests; bind it to a
        module-level name so that pytest finds it."""

        @pytest.fixture(scope="module", autouse=True)
        def close_clients() -> Iterator[None]:
            yield
            self.close()

        return close_clients
