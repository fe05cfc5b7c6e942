"""What the console shows while a run works: a training bar with the global step and the time
remaining, transient bars on evaluation, and log lines printed through rich above the bars.

Everything draws on rich's global console, so a log line written mid-epoch is printed above a
live bar instead of through it (`setup_logging` installs the rich handler on that console).
Bars and routine lines are for the main process only: under torchrun the other ranks stay quiet.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import rich
import rich.progress
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn

from visiondoctor.engine import distributed as dist_utils

T = TypeVar("T")


def console() -> Console:
    """The one console every bar and log line of a run draws on."""
    return rich.get_console()


def live() -> bool:
    """Whether bars can be drawn: on a terminal or in a notebook, not into a file or a pipe
    (where rich would leave an empty line per bar)."""
    return console().is_terminal or console().is_jupyter


def setup_logging(verbose: bool) -> None:
    """Log through rich on the console the bars use, so that lines logged while a bar is drawn
    are printed above it (stderr, so stdout stays for results). Into a file or a pipe, where no
    bar is drawn, lines stay plain `LEVEL message` lines. Non-main ranks under torchrun log
    warnings only, prefixed with their rank, and draw no bars. Like `logging.basicConfig`, it
    leaves a logging setup that already has handlers alone."""
    rich.reconfigure(stderr=True)
    level = logging.DEBUG if verbose else logging.INFO
    if not dist_utils.is_main():
        console().quiet = True  # no bars from this rank (those of the data readers included)
        logging.basicConfig(level=logging.WARNING, format=f"rank {dist_utils.rank()}: %(levelname)s %(message)s")
    elif live():
        handler = RichHandler(console=console(), show_time=False, show_path=verbose, markup=False)
        logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(levelname)s %(message)s")


# ----- time remaining ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Eta:
    """Where a run stands against its budgets."""
    remaining_s: float | None  # None until one step has been timed (and no time budget is set)
    fraction: float  # of the binding budget, 0..1
    binding: str  # "steps" (epochs x steps per epoch) or "time" (train.max_minutes)


def time_remaining(steps_done: int, total_steps: int, elapsed_s: float, budget_s: float = 0.0,
                   start_step: int = 0, start_elapsed_s: float = 0.0) -> Eta:
    """Seconds left under whichever budget ends first: the step budget at this session's pace
    (steps and seconds since `start_step`/`start_elapsed_s`, the point a resumed run started
    from), or the wall-clock budget `budget_s` (0 = none)."""
    step_fraction = min(1.0, steps_done / total_steps) if total_steps > 0 else 0.0
    session_steps, session_s = steps_done - start_step, elapsed_s - start_elapsed_s
    by_steps = (max(0, total_steps - steps_done) * session_s / session_steps
                if session_steps > 0 and session_s > 0 else None)
    if budget_s <= 0:
        return Eta(by_steps, step_fraction, "steps")
    by_time = max(0.0, budget_s - elapsed_s)
    if by_steps is not None and by_steps <= by_time:
        return Eta(by_steps, step_fraction, "steps")
    return Eta(by_time, min(1.0, max(step_fraction, elapsed_s / budget_s)), "time")


def format_duration(seconds: float | None) -> str:
    """1:02:03, 4:05 or '?' when not known yet."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_text(step: int, total_steps: int, epoch: int, epochs: int, eta: Eta, loss: float, rate: float) -> str:
    """The training bar's text. Totals are shown for the budget that binds only: under a time
    budget that ends the run first, "epoch 1/100" would be a promise the run will not keep."""
    by_steps = eta.binding == "steps"
    where = f"step {step}/{total_steps}  epoch {epoch}/{epochs}" if by_steps else f"step {step}  epoch {epoch}"
    left = f"{format_duration(eta.remaining_s)} left" + ("" if by_steps else " (time budget)")
    return f"{where}  loss {loss:.4f}  {rate:.1f} img/s  {left}"


# ----- bars ----------------------------------------------------------------------------------------------

class TrainProgress:
    """The training bar: one for the whole run (global step, not per epoch), filled by the
    binding budget. Transient: the permanent record is the log lines; `paused()` takes it off the
    screen while an evaluation draws its own bar."""

    def __init__(self, enabled: bool = True):
        self.progress = Progress(BarColumn(), TextColumn("{task.description}"), console=console(),
                                 disable=not (enabled and live()), transient=True)
        self.task = self.progress.add_task("starting", total=1.0)

    def __enter__(self) -> TrainProgress:
        self.progress.start()
        return self

    def update(self, fraction: float, text: str) -> None:
        self.progress.update(self.task, completed=fraction, description=text)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.progress.stop()
        try:
            yield
        finally:
            self.progress.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate with a transient progress bar (evaluation, prediction); main rank only."""
    yield from rich.progress.track(items, description=description, total=total, console=console(), transient=True,
                                   disable=not (enabled and live() and dist_utils.is_main()))
