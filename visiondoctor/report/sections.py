"""Report sections: what one section contains, and the registry that lists them.

A section is built by a function `(run: RunDir) -> Section | None`. It returns None when
the files it needs are not in the run directory, so a partial run still gets a report
(the skipped sections are listed, with the files they need). A feature adds its own
section from its own module:

    from visiondoctor.report.sections import Section, Paragraph, register_section

    @register_section(order=55, title="Anomaly scores", needs=("anomaly.json",))
    def anomaly_section(run):
        if not (run.path / "anomaly.json").exists():
            return None
        return Section("Anomaly scores", [Paragraph("...")])

A feature registers its sections in its own `report_sections.py`, imported by the feature
package's `__init__` (so importing the feature registers them); html.py never needs an edit. Content is structured (paragraphs, tables, figures as PNG
bytes), so the template escapes every string that comes from the data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, Union

if TYPE_CHECKING:
    from visiondoctor.rundir import RunDir


@dataclass
class Paragraph:
    """Plain text. `style` warning/note changes how it looks, never what it says."""

    text: str
    style: Literal["text", "warning", "note", "error"] = "text"
    kind: str = field(default="paragraph", init=False)


@dataclass
class Heading:
    text: str
    badge: str = ""  # e.g. a finding's severity; shown as a coloured label
    kind: str = field(default="heading", init=False)


@dataclass
class Table:
    """Rows of cells (str or numbers; numbers are formatted by the template's filter)."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    kind: str = field(default="table", init=False)


@dataclass
class Figure:
    """A PNG image. `name` is the file stem under run_dir/plots/ where the report saves it.

    Either `png` holds the bytes, or `source` names an existing PNG file (read when the
    page is rendered, after every section's own plots have been saved, so a finding can
    refer to a plot that another section draws).
    """

    name: str
    png: bytes | None = None
    caption: str = ""
    source: Path | None = None
    kind: str = field(default="figure", init=False)


@dataclass
class Html:
    """A raw HTML fragment, inserted as is. The producer must escape data strings
    (markupsafe.escape); prefer Paragraph/Table/Figure, which the template escapes."""

    markup: str
    kind: str = field(default="html", init=False)


Block = Union[Paragraph, Heading, Table, Figure, Html]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""  # id for the table of contents; derived from the title when empty

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = slug(self.title)

    @property
    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


SectionFn = Callable[["RunDir"], "Section | None"]


@dataclass(frozen=True)
class SectionEntry:
    order: float
    fn: SectionFn
    title: str
    needs: tuple[str, ...] = ()  # run-dir files the section reads; used to say why it was skipped
    optional: bool = False  # a feature's section (anomaly, early exit, ...): absent, not "missing", when empty
    tasks: tuple[str, ...] = ()  # the run tasks (config.yaml `task`) it belongs to; () = every task

    def applies_to(self, task: str | None) -> bool:
        """Whether a run of `task` shows (or lists as missing) this section; an unknown task gets every section."""
        return not self.tasks or task is None or task in self.tasks


_REGISTRY: dict[str, SectionEntry] = {}


def register_section(
    order: float, fn: SectionFn | None = None, *, title: str = "", needs: Sequence[str] = (), optional: bool = False,
    tasks: Sequence[str] = (),
) -> Any:
    """Add a section builder at position `order` (lower first). Usable as a decorator.

    Registering the same function again replaces it (modules may be re-imported). `optional`
    sections belong to a feature: when they have nothing to show for a run they are left out
    instead of being listed under "Not in this report". `tasks` ("detection", "segmentation"):
    the section belongs to runs of these tasks only (config.yaml `task`); a run of another task
    neither shows it nor lists it as missing. Empty: every task.
    Built-in orders: 0 summary, 10 diagnosis, 20 data, 30 training curves, 40 metrics,
    45 per-class AP, 50 PR curves, 60 detection statistics, 70 predictions, 80 error analysis.
    """

    def add(f: SectionFn) -> SectionFn:
        key = f"{f.__module__}.{f.__qualname__}"
        _REGISTRY[key] = SectionEntry(order, f, title or f.__name__.replace("_", " "), tuple(needs), optional,
                                      tuple(tasks))
        return f

    return add(fn) if fn is not None else add


def registered_sections() -> list[SectionEntry]:
    return sorted(_REGISTRY.values(), key=lambda e: (e.order, e.title))


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "section"
