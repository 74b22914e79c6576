"""The engines' own error family. Backends raise these; they never choose an HTTP status.

The gateway maps each class to a status and its API's error shape in one table
(``gateway.errors.from_backend``).
"""

from __future__ import annotations


class BackendError(Exception):
    """The engine failed in a way that is not the client's fault."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class BackendUnavailable(BackendError):
    """No engine can take the request now (not loaded, replicas down, shutting down)."""


class BackendNotReady(BackendUnavailable):
    """The model is still loading (or failed to load)."""


class BackendTimeout(BackendError):
    """The engine did not answer in time."""


class BadRequest(BackendError):
    """The engine refused the request as the client's mistake; ``param`` names the field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


class PromptTooLong(BadRequest):
    """The prompt (or prompt + max_tokens) does not fit the context."""
