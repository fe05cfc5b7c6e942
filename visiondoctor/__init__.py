"""visiondoctor: train, evaluate and diagnose detection and segmentation models.

    import visiondoctor as vd
    run = vd.train(data="path/to/dataset", model="ssdlite320_mobilenet_v3_large", epochs=30, name="my_run")

The Python API (train, evaluate, predict, diagnose, Doctor, ...) lives in visiondoctor.api and is
exported from here lazily.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Lazy on purpose: importing any submodule (`import visiondoctor.config`, the CLI's own imports, a
# DataLoader worker unpickling a dataset) runs this file first, and an eager `from visiondoctor.api
# import ...` here would load torch, torchvision and every feature package for all of them. The API
# is imported on first use of one of its names instead.
__all__ = ["Callback", "Config", "Doctor", "Finding", "RunDir", "TrainState", "__version__", "build_config", "diagnose",
           "evaluate", "predict", "train"]
API_NAMES = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:  # for type checkers and IDEs: the names as the API defines them
    from visiondoctor.api import (
        Callback,
        Config,
        Doctor,
        Finding,
        RunDir,
        TrainState,
        build_config,
        diagnose,
        evaluate,
        predict,
        train,
    )


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        from visiondoctor import api  # deferred: torch and the feature packages load on first use (see above)

        return getattr(api, name)
    raise AttributeError(f"module 'visiondoctor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API_NAMES])
