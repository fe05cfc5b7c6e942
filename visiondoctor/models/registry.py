"""One way in: `create_model(name, **kwargs)` for every model the project builds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str  # "detection" | "segmentation" | ...
    builder: Builder
    background_label: bool  # True when label 0 is reserved for background


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, task: str, background_label: bool = True) -> Callable[[Builder], Builder]:
    """Decorator: register a builder under `name`."""

    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, task, fn, background_label)
        return fn

    return wrap


def _ensure_builtin() -> None:
    # Import the modules that register builders; kept lazy so `registry` has no heavy imports.
    from visiondoctor.models import builtin  # noqa: F401


def get_entry(name: str) -> ModelEntry:
    _ensure_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; kwargs go to its builder (num_classes, image_size, pretrained, ...)."""
    return get_entry(name).builder(**kwargs)


def available_models(task: str | None = None) -> list[str]:
    _ensure_builtin()
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)
