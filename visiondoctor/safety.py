"""Loading files others made without running code they wrote.

A PyTorch checkpoint is a pickle unless loaded with `weights_only=True`, and unpickling can
run anything. visiondoctor's own loads pass it (engine/checkpoint.py), but torchvision's
pretrained-weights loader calls `torch.hub.load_state_dict_from_url`, which passes
`weights_only=False` — and the offline hint asks users to drop weight files into the hub
cache by hand. `forbid_unpickling()` closes that door for everything run inside it, through
PyTorch's own switch (TORCH_FORCE_WEIGHTS_ONLY_LOAD, honoured by torch >= 2.4).

safetensors (optional package) is a weights format with no code path at all;
`save_safetensors` / `load_safetensors` write and read a state dict in it.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from visiondoctor.rundir import write_bytes_atomic

log = logging.getLogger(__name__)

FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_OFF = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
SAFETENSORS_HINT = "safetensors files need the `safetensors` package: pip install visiondoctor[safetensors]"


@contextmanager
def forbid_unpickling() -> Iterator[None]:
    """Every torch.load inside loads tensors and plain containers only; a file that carries any
    other Python object raises instead of being unpickled. Nests; restores the environment."""
    if os.environ.get(FORCE_OFF, "0").lower() in ("1", "y", "yes", "true"):
        # The user switched safe loading off for the whole process; torch refuses both switches at once.
        log.warning("%s is set: checkpoints and pretrained weights may be unpickled", FORCE_OFF)
        yield
        return
    previous = os.environ.get(FORCE)
    os.environ[FORCE] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE, None)
        else:
            os.environ[FORCE] = previous


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict (tensors only) as .safetensors, atomically."""
    try:
        from safetensors.torch import save  # deferred: the optional `safetensors` extra
    except ImportError as exc:
        raise ImportError(SAFETENSORS_HINT) from exc

    # contiguous copies: safetensors refuses strided (channels_last) and storage-sharing tensors
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    return write_bytes_atomic(Path(path), save(tensors))


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a .safetensors state dict onto `device`."""
    try:
        from safetensors.torch import load_file  # deferred: the optional `safetensors` extra
    except ImportError as exc:
        raise ImportError(SAFETENSORS_HINT) from exc
    return load_file(str(path), device=str(device))
