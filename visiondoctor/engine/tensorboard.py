"""TensorBoard logging (`train.tensorboard=true`): a Callback writing `<run>/tensorboard/` event
files through `torch.utils.tensorboard.SummaryWriter`.

Per logged step (history's "train" rows, every `train.log_every` steps) it writes each loss
component, the learning rate, images/s and the gradient norm under `train/`; per evaluation the
validation losses and every numeric metric under `val/`. `add_findings`, `add_text` and
`add_images` let the caller add the doctor's findings and a few drawn predictions once the run is
evaluated (the run pipeline does). View with `tensorboard --logdir runs/<name>/tensorboard`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.findings import Finding
from visiondoctor.report.markdown import findings_table

TENSORBOARD_DIR = "tensorboard"
NOT_SCALARS = ("epoch", "step", "split", "elapsed_s")  # row keys that are coordinates, not measurements
FINDINGS_TAG = "doctor/findings"


class TensorBoardLogger(Callback):
    """Writes history rows and evaluation metrics as TensorBoard scalars. Flushes at the end of
    training and after each `add_text`/`add_images`, and stays usable after training (findings and
    predictions are added once the run is evaluated); `close()` ends it."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # deferred: tensorboard is an optional extra
        except ImportError as exc:
            raise ImportError("train.tensorboard=true needs the `tensorboard` package: "
                              "pip install 'visiondoctor[tensorboard]' (or pip install tensorboard)") from exc
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def on_log(self, state: TrainState, row: dict[str, Any]) -> None:
        split, step = str(row.get("split", "train")), int(row.get("step", state.step))
        for key, value in row.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{split}/{key}", float(value), step)

    def on_train_end(self, state: TrainState) -> None:
        self.writer.flush()

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Text (markdown) under `tag`, e.g. the doctor's findings."""
        self.writer.add_text(tag, text, step)
        self.writer.flush()

    def add_findings(self, findings: Sequence[Finding | dict[str, Any]], step: int, tag: str = FINDINGS_TAG) -> None:
        """The doctor's findings as one table (severity, ID, title), errors first."""
        self.add_text(tag, findings_table([f if isinstance(f, dict) else f.to_dict() for f in findings]), step)

    def add_images(self, tag: str, images: Sequence[Any], step: int) -> None:
        """A few images under `tag/0`, `tag/1`, ...: PIL images, image files, HWC uint8 arrays or CHW
        tensors (floats in [0, 1] or uint8); each keeps its own size."""
        for i, image in enumerate(images):
            self.writer.add_image(f"{tag}/{i}", _hwc(image), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _hwc(image: Any) -> np.ndarray:
    """One image as an HWC array TensorBoard encodes (uint8, or floats in [0, 1])."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            array = np.asarray(opened.convert("RGB"))
    elif isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        array = (t.permute(1, 2, 0) if t.dim() == 3 else t).numpy()
    else:
        array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"add_images: expected an HxW or HxWxC image (CxHxW for a tensor), got shape {array.shape}")
    return array if array.ndim == 3 else array[..., None]
