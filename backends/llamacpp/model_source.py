"""Resolve a model source to a local GGUF file: a path on disk, or a Hugging Face spec.

Hugging Face specs:

- ``owner/repo:QUANT``: the GGUF of that quantisation, e.g.
  ``unsloth/GLM-4.7-Flash-GGUF:UD-Q4_K_XL``;
- ``owner/repo/path/in/repo.gguf``: that file;
- ``owner/repo``: the repo's only GGUF model;
- any of these with ``@REVISION`` after the repo (``owner/repo@COMMIT:QUANT``) to pin it.

Files are downloaded once into the Hugging Face cache and reused; offline (``offline=True``,
``HF_HUB_OFFLINE=1``, or the Hub unreachable) the same spec resolves from the cache alone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub import CachedRevisionInfo

logger = logging.getLogger("glm_gateway.model_source")

__all__ = ["ModelSourceError", "resolve_model"]


class ModelSourceError(ValueError):
    """The model source cannot be resolved to a local GGUF file."""


_NAME = r"[A-Za-z0-9][\w.-]*"
_HUB_SPEC = re.compile(
    rf"^(?P<repo>{_NAME}/{_NAME})"
    r"(?:@(?P<revision>[\w.-]+))?"
    r"(?::(?P<quant>[\w.-]+)|/(?P<file>[^:@]+))?$"
)
# llama.cpp's gguf-split naming; the loader finds parts 2..N next to part 1 by this pattern.
_SPLIT = re.compile(r"-(?P<part>\d{5})-of-(?P<total>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def resolve_model(
    spec: str, *, cache_dir: str | Path | None = None, offline: bool | None = None
) -> Path:
    """Return a local GGUF path for ``spec``, downloading it from Hugging Face when needed.

    ``cache_dir`` overrides huggingface_hub's cache folder. ``offline`` (default: huggingface_hub's
    ``HF_HUB_OFFLINE``) resolves from the cache without touching the network. For a split GGUF all
    parts are fetched and the first part's path is returned. Raises `ModelSourceError`.
    """
    spec = spec.strip()
    if not spec:
        raise ModelSourceError("empty model source: give a .gguf path or owner/repo:QUANT")
    local = Path(spec).expanduser()
    if local.is_file():
        return local
    if _looks_local(spec):
        if local.exists():
            raise ModelSourceError(f"model path is not a file: {local.absolute()}")
        raise ModelSourceError(f"model file not found: {local.absolute()}")
    source = _HubSource.parse(spec)
    return _resolve_hub(source, cache_dir=cache_dir, offline=offline)


def _looks_local(spec: str) -> bool:
    if spec.startswith(("/", ".", "~")) or "\\" in spec:
        return True
    # A hub file spec needs owner/repo/file, so "x.gguf" or "models/x.gguf" can only be a path.
    return spec.lower().endswith(".gguf") and spec.count("/") < 2


@dataclass(frozen=True, slots=True)
class _HubSource:
    spec: str
    repo_id: str
    revision: str
    quant: str | None
    filename: str | None

    @classmethod
    def parse(cls, spec: str) -> _HubSource:
        match = _HUB_SPEC.match(spec)
        if match is None:
            raise ModelSourceError(
                f"model source {spec!r} is neither an existing file nor a Hugging Face spec "
                "(owner/repo:QUANT, owner/repo/path/file.gguf or owner/repo)"
            )
        filename = match["file"]
        if filename is not None and not filename.lower().endswith(".gguf"):
            raise ModelSourceError(f"{spec!r} does not name a .gguf file")
        return cls(
            spec=spec,
            repo_id=match["repo"],
            revision=match["revision"] or "main",
            quant=match["quant"],
            filename=filename,
        )

    def wanted(self) -> str:
        """What the spec asks for, for error messages."""
        if self.filename is not None:
            return f"file {self.filename}"
        if self.quant is not None:
            return f"quant {self.quant}"
        return "its GGUF model"


@dataclass(frozen=True, slots=True)
class _GGUFModel:
    """One loadable model in a repo: a single GGUF, or every part of a split one."""

    stem: str  # repo path without the split suffix and extension; what quants are matched on
    files: tuple[str, ...]  # repo paths in part order; llama.cpp is given the first
    missing: tuple[str, ...]  # parts a split model lacks (a partial download in the cache)
    label: str = ""

    def describe(self) -> str:
        parts = f", {len(self.files) + len(self.missing)} parts" if len(self.files) > 1 else ""
        return f"{self.label} ({self.files[0]}{parts})"


def _gguf_models(paths: Iterable[str]) -> list[_GGUFModel]:
    singles: list[_GGUFModel] = []
    splits: dict[str, dict[int, str]] = {}
    totals: dict[str, tuple[int, str]] = {}
    for path in sorted(set(paths)):
        name = path.rsplit("/", 1)[-1].lower()
        # mmproj files are vision projectors that ride along in GGUF repos, not language models.
        if not name.endswith(".gguf") or "mmproj" in name:
            continue
        split = _SPLIT.search(path)
        if split is None:
            singles.append(_GGUFModel(stem=path[: -len(".gguf")], files=(path,), missing=()))
            continue
        stem = path[: split.start()]
        splits.setdefault(stem, {})[int(split["part"])] = path
        totals[stem] = (int(split["total"]), split["ext"])
    models = list(singles)
    for stem, parts in splits.items():
        total, ext = totals[stem]
        missing = tuple(
            f"{stem}-{i:05d}-of-{total:05d}{ext}" for i in range(1, total + 1) if i not in parts
        )
        files = tuple(parts[i] for i in sorted(parts))
        models.append(_GGUFModel(stem=stem, files=files, missing=missing))
    return _with_labels(sorted(models, key=lambda m: m.stem.lower()))


def _with_labels(models: list[_GGUFModel]) -> list[_GGUFModel]:
    # Files are named "<model>-<QUANT>"; dropping the shared "<model>-" leaves the quant names a
    # user would type. "_" is not a cut point: it sits inside quant names (Q4_K_M).
    names = [m.stem.rsplit("/", 1)[-1] for m in models]
    cut = 0
    if len(names) > 1:
        prefix = _common_prefix(names)
        cut = max(prefix.rfind("-"), prefix.rfind(".")) + 1
    labelled = []
    for model, name in zip(models, names, strict=True):
        label = name[cut:] or model.stem
        labelled.append(
            _GGUFModel(stem=model.stem, files=model.files, missing=model.missing, label=label)
        )
    return labelled


def _common_prefix(names: list[str]) -> str:
    first, last = min(names), max(names)
    size = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first)
    )
    return first[:size]


def _select(source: _HubSource, paths: Iterable[str], *, listed: str = "available") -> _GGUFModel:
    """Pick the model ``source`` names among ``paths``; ModelSourceError says why none fits."""
    models = _gguf_models(paths)
    available = f"{listed}: " + ("; ".join(m.describe() for m in models) or "no GGUF files")
    if source.filename is not None:
        wanted = source.filename.lower()
        for model in models:
            if wanted in (p.lower() for p in (*model.files, *model.missing)):
                return model
        raise ModelSourceError(f"{source.repo_id} has no file {source.filename}; {available}")
    if source.quant is None:
        if len(models) == 1:
            return models[0]
        if not models:
            raise ModelSourceError(f"{source.repo_id} has no GGUF files")
        raise ModelSourceError(
            f"{source.repo_id} has several GGUF models; pick one with "
            f"{source.repo_id}:QUANT or {source.repo_id}/FILE.gguf; {available}"
        )
    # The quant must be a whole token: Q4_K_M must not pick Q4_K_M_L, nor Q4_K pick Q4_K_M.
    token = re.compile(rf"(?:^|[-./]){re.escape(source.quant)}(?:[-./]|$)", re.IGNORECASE)
    matches = [m for m in models if token.search(m.stem)]
    if len(matches) > 1:
        # "Q4_K_XL" also occurs inside "UD-Q4_K_XL"; a model labelled exactly so wins.
        exact = [m for m in matches if m.label.lower() == source.quant.lower()]
        matches = exact or matches
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ModelSourceError(
            f"quant {source.quant} is ambiguous in {source.repo_id}: "
            + "; ".join(m.describe() for m in matches)
            + f". Name the file instead: {source.repo_id}/FILE.gguf"
        )
    raise ModelSourceError(f"{source.repo_id} has no GGUF for quant {source.quant}; {available}")


def _resolve_hub(source: _HubSource, *, cache_dir: str | Path | None, offline: bool | None) -> Path:
    try:
        from huggingface_hub import constants
    except ImportError as exc:
        raise ModelSourceError(
            f"{source.spec!r} is a Hugging Face spec, which needs huggingface_hub: "
            "pip install huggingface_hub"
        ) from exc
    if offline is None:
        # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it when set since, too.
        env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        offline = constants.is_offline_mode() or env
    if offline:
        return _resolve_cached(source, cache_dir, reason="offline (HF_HUB_OFFLINE or offline=True)")
    try:
        return _resolve_online(source, cache_dir)
    except Exception as exc:
        if not _hub_unreachable(exc):
            raise
        logger.warning(
            "the Hugging Face Hub is unreachable (%s: %s); resolving %s from the local cache",
            type(exc).__name__,
            exc,
            source.spec,
        )
        return _resolve_cached(
            source, cache_dir, reason=f"the Hugging Face Hub at {constants.ENDPOINT} is unreachable"
        )


def _hub_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means "no answer from the Hub" rather than "the Hub said no"."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, HfHubHTTPError):
        # The Hub being down (5xx) or throttling us is an outage, like no network at all.
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    # huggingface_hub 2.x speaks HTTP through httpx2, 1.x through httpx, 0.x through requests;
    # each one's connect/timeout/protocol errors mean "no network". Only a library already
    # imported can have raised, so sys.modules is enough and imports nothing new.
    for module_name, names in _TRANSPORT_ERRORS:
        module = sys.modules.get(module_name)
        for name in names:
            error = getattr(module, name, None)
            if isinstance(error, type) and isinstance(exc, error):
                return True
    return False


_TRANSPORT_ERRORS = (
    ("httpx2", ("TransportError",)),
    ("httpx", ("TransportError",)),
    ("requests", ("ConnectionError", "Timeout")),
)


def _resolve_online(source: _HubSource, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # model_info is a single request without retries, so an unreachable Hub fails fast here
    # and we fall back to the cache; list_repo_files would back off for ~20 s first.
    try:
        info = HfApi().model_info(source.repo_id, revision=source.revision)
    except GatedRepoError as exc:
        raise ModelSourceError(
            f"{source.repo_id} is gated: accept its terms on the Hub and set HF_TOKEN"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelSourceError(
            f"Hugging Face repo {source.repo_id} not found (private repos need HF_TOKEN); "
            f"{source.spec!r} is not a local file either"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelSourceError(f"{source.repo_id} has no revision {source.revision!r}") from exc
    model = _select(source, (s.rfilename for s in info.siblings or ()))
    if model.missing:
        raise ModelSourceError(
            f"{source.repo_id} lists an incomplete split GGUF {model.describe()}: "
            f"missing {', '.join(model.missing)}"
        )
    local: list[str] = []
    for filename in model.files:
        try:
            local.append(
                hf_hub_download(
                    source.repo_id, filename, revision=source.revision, cache_dir=cache_dir
                )
            )
        except LocalEntryNotFoundError as exc:
            # The Hub answered the listing but not the download, and the file is not cached.
            raise ModelSourceError(
                f"could not download {filename} from {source.repo_id} and it is not cached"
            ) from exc
        except RemoteEntryNotFoundError as exc:
            raise ModelSourceError(f"{source.repo_id} has no file {filename}") from exc
    # The snapshot path, not the blob it links to: llama.cpp finds the other parts of a split
    # model next to the first by name, and blobs are named by hash.
    path = Path(local[0])
    logger.info("model %s is %s", source.spec, path)
    return path


def _resolve_cached(source: _HubSource, cache_dir: str | Path | None, *, reason: str) -> Path:
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    root = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
    try:
        repos = scan_cache_dir(root).repos
    except CacheNotFound:
        repos = frozenset()
    revisions = [
        revision
        for repo in repos
        if repo.repo_type == "model" and repo.repo_id.lower() == source.repo_id.lower()
        for revision in repo.revisions
    ]
    needed = f"{source.wanted()} of {source.repo_id}"
    if not revisions:
        raise ModelSourceError(
            f"cannot resolve {source.spec!r}: {reason}, and {needed} is not in the Hugging Face "
            f"cache {root}. Run once with network access to download it."
        )
    problems: list[str] = []
    candidates = _candidate_revisions(source.revision, revisions)
    if not candidates:
        problems.append(f"no snapshot of revision {source.revision} is cached")
    for revision in candidates:
        files = _snapshot_files(revision)
        try:
            model = _select(source, files, listed="cached")
        except ModelSourceError as exc:
            problems.append(str(exc))
            continue
        if model.missing:
            problems.append(f"{model.files[0]} is cached without {', '.join(model.missing)}")
            continue
        path = files[model.files[0]]
        logger.info("model %s is %s (from the cache: %s)", source.spec, path, reason)
        return path
    raise ModelSourceError(
        f"cannot resolve {source.spec!r}: {reason}, and the Hugging Face cache {root} lacks "
        f"{needed}: {' / '.join(dict.fromkeys(problems))}"
    )


def _candidate_revisions(
    wanted: str, revisions: list[CachedRevisionInfo]
) -> list[CachedRevisionInfo]:
    exact = [r for r in revisions if wanted in r.refs or r.commit_hash == wanted]
    if _COMMIT.match(wanted):
        return exact
    # Offline, a branch's newest cached snapshot may lack the file an older one has (main moved
    # on after it was downloaded): try the branch's snapshot first, then the newest others.
    others = sorted(
        (r for r in revisions if r not in exact), key=lambda r: r.last_modified, reverse=True
    )
    return exact + others


def _snapshot_files(revision: CachedRevisionInfo) -> Mapping[str, Path]:
    return {
        f.file_path.relative_to(revision.snapshot_path).as_posix(): f.file_path
        for f in revision.files
    }
