"""The served models: names and aliases resolved to a backend, built from settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from backends.base import Backend
from backends.registry import build_backend

from .admission import AdmissionGate
from .errors import ModelNotFoundError
from .sampling import model_routes
from .settings import ModelSettings, RouteSettings

logger = logging.getLogger("glm_gateway.models")


@dataclass(slots=True)
class ServedModel:
    settings: ModelSettings
    backend: Backend
    routes: dict[str, RouteSettings] = field(default_factory=dict)
    gate: AdmissionGate = field(init=False)
    load_error: str | None = None

    def __post_init__(self) -> None:
        self.routes = model_routes(self.settings)
        admission = self.settings.admission
        # The one queue: never more at once than the backend can run, so nobody waits
        # unseen behind the gate.
        capacity = self.backend.max_concurrency
        limit = admission.max_concurrent or capacity
        if capacity is not None and limit is not None:
            limit = min(limit, capacity)
        self.gate = AdmissionGate(limit, admission.max_queue, admission.max_wait)

    @property
    def id(self) -> str:
        return self.settings.id


@dataclass(frozen=True, slots=True)
class ModelName:
    """A name clients may send: the id, an alias, or ``ID:ROUTE``; may pin a route."""

    name: str
    model: ServedModel
    route: str | None = None


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = models
        self._by_name: dict[str, ModelName] = {}
        for model in models:
            self._by_name[model.id] = ModelName(model.id, model)
            for alias in model.settings.alias_settings():
                self._by_name[alias.name] = ModelName(alias.name, model, alias.route)
        for model in models:
            for route in model.routes:
                pinned = f"{model.id}:{route}"
                self._by_name.setdefault(pinned, ModelName(pinned, model, route))

    @classmethod
    def from_settings(
        cls, models: list[ModelSettings], backends: Mapping[str, Backend] | None = None
    ) -> ModelRegistry:
        """``backends`` lets tests hand in ready-made backends by model id."""
        given = backends or {}
        return cls([ServedModel(m, given.get(m.id) or build_backend(m.backend)) for m in models])

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models)

    def names(self) -> Iterator[ModelName]:
        return iter(self._by_name.values())

    def resolve(self, name: str) -> ModelName:
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelNotFoundError(
                f"The model {name!r} does not exist. Available: "
                f"{', '.join(n for n, m in self._by_name.items() if m.route is None)}",
                param="model",
            ) from None

    @property
    def ready(self) -> bool:
        return all(m.backend.ready for m in self._models)

    async def start(self) -> None:
        async def start_one(model: ServedModel) -> None:
            try:
                await model.backend.start()
                logger.info("model %s ready", model.id)
            except Exception as exc:
                model.load_error = f"{type(exc).__name__}: {exc}"
                logger.exception("model %s failed to load", model.id)

        await asyncio.gather(*(start_one(m) for m in self._models))

    async def aclose(self) -> None:
        await asyncio.gather(*(m.backend.aclose() for m in self._models), return_exceptions=True)
