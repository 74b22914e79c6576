"""resolve_model against a fake Hugging Face Hub on loopback, through real huggingface_hub code.

The fake hub serves the few endpoints huggingface_hub uses here (model info, tree listing, and
HEAD/GET on /resolve/) from files in a temp directory, so downloads, the cache layout and the
offline fallbacks are huggingface_hub's own; no test touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

import pytest

from backends.llamacpp.model_source import ModelSourceError, resolve_model

TINY = "test-org/Tiny-GGUF"
TINY_FILES = {
    "README.md": b"# Tiny\n",
    "Tiny-Q4_K_M.gguf": b"GGUF q4_k_m " * 100,
    "Tiny-Q4_K_M_L.gguf": b"GGUF q4_k_m_l " * 100,
    "Tiny-UD-Q4_K_XL.gguf": b"GGUF ud-q4_k_xl " * 100,
    "Tiny-Q8_0.gguf": b"GGUF q8_0 " * 200,
    "mmproj-Tiny-F16.gguf": b"GGUF projector",
    "BF16/Tiny-BF16-00001-of-00003.gguf": b"GGUF bf16 part one " * 50,
    "BF16/Tiny-BF16-00002-of-00003.gguf": b"bf16 part two " * 50,
    "BF16/Tiny-BF16-00003-of-00003.gguf": b"bf16 part three " * 50,
}
SOLO = "test-org/Solo-GGUF"
SOLO_FILES = {"README.md": b"# Solo\n", "Solo-Q4_0.gguf": b"GGUF solo"}


class FakeHub:
    """A Hugging Face Hub stand-in: repos are folders under ``root``, one commit each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = self.root / repo_id / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def files(self, repo_id: str) -> list[str]:
        base = self.root / repo_id
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def downloads(self) -> list[str]:
        """Repo paths fetched with GET /resolve/, in order."""
        with self._lock:
            return [
                path.split("/resolve/", 1)[1].split("/", 1)[1]
                for method, path in self.requests
                if method == "GET" and "/resolve/" in path
            ]

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a stopped hub leaves no pooled keep-alive
        # connection behind and the client sees "connection refused" at once.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._route("GET")

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def _route(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.record(method, path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = "/".join(parts[2:4])
                rest = parts[4:]
                if method == "GET" and (not rest or (rest[0] == "revision" and len(rest) == 2)):
                    self._model_info(repo_id, rest[1] if rest else "main")
                    return
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    self._tree(repo_id, rest[1], "/".join(rest[2:]))
                    return
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
                return
            self._error(HTTPStatus.NOT_FOUND, "RepoNotFound")

        def _known(self, repo_id: str, revision: str) -> bool:
            if not (hub.root / repo_id).is_dir():
                self._error(HTTPStatus.NOT_FOUND, "RepoNotFound")
                return False
            if revision not in ("main", hub.commit(repo_id)):
                self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound")
                return False
            return True

        def _model_info(self, repo_id: str, revision: str) -> None:
            if self._known(repo_id, revision):
                siblings = [{"rfilename": f} for f in hub.files(repo_id)]
                self._json({"id": repo_id, "sha": hub.commit(repo_id), "siblings": siblings})

        def _tree(self, repo_id: str, revision: str, folder: str) -> None:
            if self._known(repo_id, revision):
                entries = []
                for name in hub.files(repo_id):
                    if folder and not name.startswith(folder + "/"):
                        continue
                    data = (hub.root / repo_id / name).read_bytes()
                    oid = hashlib.sha1(data).hexdigest()
                    entries.append({"type": "file", "path": name, "size": len(data), "oid": oid})
                self._json(entries)

        def _resolve(self, method: str, repo_id: str, revision: str, name: str) -> None:
            if not self._known(repo_id, revision):
                return
            path = hub.root / repo_id / name
            if not path.is_file():
                self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", commit=hub.commit(repo_id))
                return
            data = path.read_bytes()
            self.send_response(HTTPStatus.OK)
            # What hf_hub_download insists on: the commit, an ETag to name the blob, the size.
            self.send_header("X-Repo-Commit", hub.commit(repo_id))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if method == "GET":
                self.wfile.write(data)

        def _json(self, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: HTTPStatus, code: str, commit: str | None = None) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            if commit is not None:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def _require_hub_library() -> ModuleType:
    try:
        from huggingface_hub import constants
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("huggingface_hub is not installed")
        pytest.skip("huggingface_hub is not installed")
    return constants


@pytest.fixture
def hf_constants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """huggingface_hub isolated from this machine: no token, no offline flag, a temp cache."""
    constants = _require_hub_library()
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))
    return constants


@pytest.fixture
def hub(
    tmp_path: Path, hf_constants: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    server = FakeHub(tmp_path / "hub-repos")
    server.add_repo(TINY, TINY_FILES)
    server.add_repo(SOLO, SOLO_FILES)
    server.start()
    # HF_ENDPOINT is read once at import: patch the endpoint and the download URL template
    # built from it, which is what HfApi() and hf_hub_download() read at call time.
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def test_fake_hub_answers_huggingface_hub(hub: FakeHub) -> None:
    from huggingface_hub import HfApi

    assert sorted(HfApi().list_repo_files(TINY)) == sorted(TINY_FILES)
    assert HfApi().model_info(TINY).sha == hub.commit(TINY)


@pytest.mark.parametrize("spec", [f"{TINY}:Q8_0", f"{TINY}:q8_0"])
def test_quant_resolves_to_the_file_at_repo_root(hub: FakeHub, cache: Path, spec: str) -> None:
    path = resolve_model(spec, cache_dir=cache)

    assert path.name == "Tiny-Q8_0.gguf"
    assert path.read_bytes() == TINY_FILES["Tiny-Q8_0.gguf"]
    assert path.is_relative_to(cache)
    assert path.parent.name == hub.commit(TINY)  # the snapshot folder of huggingface_hub's cache
    assert hub.downloads() == ["Tiny-Q8_0.gguf"]


def test_split_quant_in_a_folder_downloads_every_part(hub: FakeHub, cache: Path) -> None:
    path = resolve_model(f"{TINY}:BF16", cache_dir=cache)

    parts = [f"BF16/Tiny-BF16-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert path.name == "Tiny-BF16-00001-of-00003.gguf"
    # llama.cpp opens part 1 and looks for the others beside it, by name.
    for part in parts:
        assert (path.parent / part.split("/")[1]).read_bytes() == TINY_FILES[part]
    assert sorted(hub.downloads()) == parts


def test_explicit_file_spec(hub: FakeHub, cache: Path) -> None:
    path = resolve_model(f"{TINY}/Tiny-Q4_K_M.gguf", cache_dir=cache)

    assert path.read_bytes() == TINY_FILES["Tiny-Q4_K_M.gguf"]
    assert hub.downloads() == ["Tiny-Q4_K_M.gguf"]


def test_file_spec_naming_a_later_split_part_returns_the_first(hub: FakeHub, cache: Path) -> None:
    path = resolve_model(f"{TINY}/BF16/Tiny-BF16-00002-of-00003.gguf", cache_dir=cache)

    assert path.name == "Tiny-BF16-00001-of-00003.gguf"
    assert len(hub.downloads()) == 3


def test_quant_is_matched_as_a_whole_token(hub: FakeHub, cache: Path) -> None:
    assert resolve_model(f"{TINY}:Q4_K_M", cache_dir=cache).name == "Tiny-Q4_K_M.gguf"
    assert resolve_model(f"{TINY}:Q4_K_M_L", cache_dir=cache).name == "Tiny-Q4_K_M_L.gguf"
    assert resolve_model(f"{TINY}:Q4_K_XL", cache_dir=cache).name == "Tiny-UD-Q4_K_XL.gguf"
    with pytest.raises(ModelSourceError, match="no GGUF for quant Q4_K"):
        resolve_model(f"{TINY}:Q4_K", cache_dir=cache)


def test_unknown_quant_lists_the_available_quants(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_model(f"{TINY}:Q3_K_S", cache_dir=cache)

    message = str(info.value)
    assert TINY in message and "Q3_K_S" in message
    for label in ("Q4_K_M ", "Q4_K_M_L", "UD-Q4_K_XL", "Q8_0", "BF16"):
        assert label in message
    assert "BF16/Tiny-BF16-00001-of-00003.gguf, 3 parts" in message
    assert "mmproj" not in message
    assert hub.downloads() == []


def test_exact_quant_label_wins_over_a_longer_one(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    hub.add_repo("test-org/Both", {"M-Q4_K_XL.gguf": b"plain", "M-UD-Q4_K_XL.gguf": b"ud"})

    assert resolve_model("test-org/Both:Q4_K_XL", cache_dir=cache).read_bytes() == b"plain"
    assert resolve_model("test-org/Both:UD-Q4_K_XL", cache_dir=cache).read_bytes() == b"ud"


def test_ambiguous_quant_names_the_candidates(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("test-org/Twins", {"a/M-Q4_0.gguf": b"a", "b/M-Q4_0.gguf": b"b"})

    with pytest.raises(ModelSourceError, match="ambiguous") as info:
        resolve_model("test-org/Twins:Q4_0", cache_dir=cache)
    assert "a/M-Q4_0.gguf" in str(info.value) and "b/M-Q4_0.gguf" in str(info.value)


def test_repo_alone_needs_exactly_one_model(hub: FakeHub, cache: Path) -> None:
    assert resolve_model(SOLO, cache_dir=cache).read_bytes() == SOLO_FILES["Solo-Q4_0.gguf"]
    with pytest.raises(ModelSourceError, match=r"several GGUF models.*Q8_0"):
        resolve_model(TINY, cache_dir=cache)


def test_revision_pin(hub: FakeHub, cache: Path) -> None:
    path = resolve_model(f"{TINY}@{hub.commit(TINY)}:Q8_0", cache_dir=cache)
    assert path.read_bytes() == TINY_FILES["Tiny-Q8_0.gguf"]
    with pytest.raises(ModelSourceError, match="no revision 'v9'"):
        resolve_model(f"{TINY}@v9:Q8_0", cache_dir=cache)


def test_pinned_revision_offline_uses_only_that_snapshot(hub: FakeHub, cache: Path) -> None:
    commit = hub.commit(TINY)
    path = resolve_model(f"{TINY}@{commit}:Q8_0", cache_dir=cache)

    assert resolve_model(f"{TINY}@{commit}:Q8_0", cache_dir=cache, offline=True) == path
    other = "0" * 40
    with pytest.raises(ModelSourceError, match=f"no snapshot of revision {other} is cached"):
        resolve_model(f"{TINY}@{other}:Q8_0", cache_dir=cache, offline=True)


def test_unknown_repo(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(ModelSourceError, match="test-org/Nope not found"):
        resolve_model("test-org/Nope:Q4_0", cache_dir=cache)


def test_default_cache_is_huggingface_hubs(hub: FakeHub, hf_constants: ModuleType) -> None:
    path = resolve_model(f"{SOLO}:Q4_0")
    assert path.is_relative_to(hf_constants.HF_HUB_CACHE)


def test_local_path_is_returned_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_model(str(model)) == model

    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model("~/model.gguf") == model

    monkeypatch.chdir(tmp_path)
    assert resolve_model("model.gguf") == Path("model.gguf")
    # An existing file wins even when its name could be a hub spec.
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "repo:Q4_0").write_bytes(b"GGUF")
    assert resolve_model("owner/repo:Q4_0") == Path("owner/repo:Q4_0")


@pytest.mark.parametrize(
    "spec",
    [
        "./missing.gguf",
        "/nonexistent/dir/missing.gguf",
        "models/missing.gguf",
        "missing.gguf",
        "~/missing.gguf",
    ],
)
def test_missing_local_path_is_an_error_naming_it(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))

    with pytest.raises(ModelSourceError, match=r"model file not found: .*missing\.gguf") as info:
        resolve_model(spec)
    assert isinstance(info.value, ValueError)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not a file"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("spec", ["", "llama", "a/b/c.bin", "owner/repo:Q4 K"])
def test_unusable_specs(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError):
        resolve_model(spec)


def test_second_resolution_reuses_the_cache_online_and_offline(hub: FakeHub, cache: Path) -> None:
    first = resolve_model(f"{TINY}:BF16", cache_dir=cache)
    assert len(hub.downloads()) == 3

    assert resolve_model(f"{TINY}:BF16", cache_dir=cache) == first
    assert len(hub.downloads()) == 3  # revalidated with HEAD, not fetched again

    hub.stop()  # the Hub is now unreachable: connection refused
    assert resolve_model(f"{TINY}:BF16", cache_dir=cache) == first
    assert resolve_model(f"{TINY}:BF16", cache_dir=cache, offline=True) == first
    assert first.read_bytes() == TINY_FILES["BF16/Tiny-BF16-00001-of-00003.gguf"]


def test_hf_hub_offline_resolves_without_any_request(
    hub: FakeHub, cache: Path, hf_constants: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_model(f"{TINY}:Q8_0", cache_dir=cache)
    seen = len(hub.requests)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    assert resolve_model(f"{TINY}:q8_0", cache_dir=cache) == first
    assert resolve_model(f"{TINY}/Tiny-Q8_0.gguf", cache_dir=cache) == first
    assert len(hub.requests) == seen


def test_hf_hub_offline_set_after_import_is_honoured(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_model(f"{TINY}:Q8_0", cache_dir=cache)
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert resolve_model(f"{TINY}:Q8_0", cache_dir=cache) == first
    assert len(hub.requests) == seen


def test_offline_with_an_empty_cache_names_what_it_needed(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_model(f"{TINY}:Q8_0", cache_dir=cache, offline=True)
    message = str(info.value)
    assert "offline" in message and TINY in message and "quant Q8_0" in message
    assert str(cache) in message

    with pytest.raises(ModelSourceError, match=r"offline.*file Tiny-Q4_K_M\.gguf of test-org"):
        resolve_model(f"{TINY}/Tiny-Q4_K_M.gguf", cache_dir=cache, offline=True)
    assert hub.requests == []


def test_offline_cache_without_that_quant_lists_what_is_cached(hub: FakeHub, cache: Path) -> None:
    resolve_model(f"{TINY}:Q4_K_M", cache_dir=cache)

    with pytest.raises(
        ModelSourceError, match=r"offline.*lacks quant Q8_0 of test-org/Tiny-GGUF"
    ) as info:
        resolve_model(f"{TINY}:Q8_0", cache_dir=cache, offline=True)
    assert "Tiny-Q4_K_M.gguf" in str(info.value)


def test_offline_partial_split_names_the_missing_part(hub: FakeHub, cache: Path) -> None:
    first = resolve_model(f"{TINY}:BF16", cache_dir=cache)
    (first.parent / "Tiny-BF16-00003-of-00003.gguf").unlink()

    with pytest.raises(ModelSourceError, match=re.escape("BF16/Tiny-BF16-00003-of-00003.gguf")):
        resolve_model(f"{TINY}:BF16", cache_dir=cache, offline=True)


def test_unreachable_hub_with_nothing_cached(hub: FakeHub, cache: Path) -> None:
    hub.stop()
    with pytest.raises(ModelSourceError, match=r"unreachable.*quant Q8_0 of test-org/Tiny-GGUF"):
        resolve_model(f"{TINY}:Q8_0", cache_dir=cache)
