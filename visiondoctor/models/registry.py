"""One way in: `create_model(name, **kwargs)` for every model the project builds.

A model is a builder function decorated with `@register(name, task)` in any module of the
`visiondoctor.models` package; the registry finds it (see visiondoctor.registry), so a new model
is one new file. `task` names the pipeline that trains it (visiondoctor.tasks): "detection",
"segmentation", or a feature's task such as "text_query".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from visiondoctor.registry import Registry

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str  # the task (pipeline) that trains it: "detection" | "segmentation" | "text_query" | ...
    builder: Builder
    background_label: bool  # True when label 0 is reserved for background


MODELS: Registry[ModelEntry] = Registry("model", "visiondoctor.models")


def register(name: str, task: str, background_label: bool = True) -> Callable[[Builder], Builder]:
    """Decorator: register a builder under `name`."""

    def wrap(fn: Builder) -> Builder:
        MODELS.add(name, ModelEntry(name, task, fn, background_label))
        return fn

    return wrap


def get_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; kwargs go to its builder (num_classes, image_size, pretrained, ...)."""
    return get_entry(name).builder(**kwargs)


def available_models(task: str | None = None) -> list[str]:
    return sorted(n for n, e in MODELS.items() if task is None or e.task == task)
