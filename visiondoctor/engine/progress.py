"""Progress bars (rich) showing loss and images/s; silent on non-main ranks."""
from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress:
    def __init__(self, epoch: int, epochs: int, total: int, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} img/s"), TimeElapsedColumn(),
            disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task("train", total=total, loss=float("nan"), rate=0.0)

    def __enter__(self) -> "EpochProgress":
        self.progress.start()
        return self

    def advance(self, loss: float, rate: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss, rate=rate)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()
