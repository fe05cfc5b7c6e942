"""Finding the void value of label masks that do not state one (image/mask folders).

Layouts such as VOC (255), CamVid (11) or ADE20K (0) state their void value; a folder of masks
with a `classes.txt` does not. The value is then found in the masks, from what the reader
gathered over every readable mask: the pixels of each raw value (`value_pixels`) and how many of
them touch a different value (`value_edge_pixels`, 4-neighbours), plus the class count n.

The rule:
1. Candidates are the values found in the masks that name no class (value >= n).
2. A candidate is *void-like* when
   - it lies on thin borders: at least `THIN_EDGE_SHARE` (25%) of its pixels touch another
     value. A band w pixels wide has about 2/w of its pixels on its two edges, so this holds
     for outlines up to ~8 px wide (VOC draws a ~5 px void border around each object: ~40%),
     while a region of real stuff tens of pixels across has a few percent; or
   - it lies far above the class count: at least `FAR_GAP` (16) unused values between the last
     class and it (255 with classes 0..20; not 3 with classes 0..2).
3. The void value is the one void-like candidate; when several are void-like, the one that is
   both thin and far; otherwise none (ambiguous, each named in the evidence).

A candidate that is neither thin nor far (e.g. value 3 filling regions when classes.txt names
0..2) is *not* taken as void: it is more likely a class missing from the class list, and taking
it as void would silently drop that class. Its masks stay refused as "out of range", and the
evidence says how to state it (`ignore_index`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from visiondoctor.data.seg_samples import SegmentationIndex

THIN_EDGE_SHARE = 0.25
FAR_GAP = 16


@dataclass(frozen=True)
class VoidCandidate:
    """A mask value that names no class, with the two signals of the rule."""

    value: int
    pixels: int
    share: float  # of all mask pixels
    edge_share: float  # of its own pixels, touching another value
    thin: bool
    far: bool

    def describe(self) -> str:
        signals = [s for s, on in (("on thin borders", self.thin), ("far above the last class", self.far)) if on]
        return (f"value {self.value}: {self.pixels} px ({100 * self.share:.2g}% of mask pixels), "
                f"{100 * self.edge_share:.0f}% of them on region borders"
                + (f" -> {' and '.join(signals)}" if signals else " -> fills regions, close to the classes"))


def void_candidates(value_pixels: Sequence[int], edge_pixels: Sequence[int], num_classes: int) -> list[VoidCandidate]:
    """Every value >= num_classes found in the masks, judged by the rule's two signals."""
    total = sum(int(n) for n in value_pixels) or 1
    edges = list(edge_pixels) or [0] * len(value_pixels)
    out = []
    for value in range(num_classes, len(value_pixels)):
        pixels = int(value_pixels[value])
        if pixels:
            edge_share = int(edges[value]) / pixels
            out.append(VoidCandidate(value, pixels, pixels / total, edge_share,
                                     thin=edge_share >= THIN_EDGE_SHARE, far=value - (num_classes - 1) > FAR_GAP))
    return out


def infer_void(value_pixels: Sequence[int], edge_pixels: Sequence[int], num_classes: int) -> tuple[int | None, str]:
    """(void value or None, evidence in words) by the module's rule."""
    classes = f"the {num_classes} classes (0..{num_classes - 1})"
    if not any(value_pixels):
        return None, "no mask pixels were read"
    candidates = void_candidates(value_pixels, edge_pixels, num_classes)
    if not candidates:
        return None, f"every value in the masks is one of {classes}: no void value"
    listed = "; ".join(c.describe() for c in candidates)
    void_like = [c for c in candidates if c.thin or c.far]
    both = [c for c in void_like if c.thin and c.far]
    chosen = void_like[0] if len(void_like) == 1 else both[0] if len(both) == 1 else None
    if chosen is None:
        why = "none is void-like" if not void_like else "several are void-like"
        return None, (f"values outside {classes}: {listed}. {why}, so no void value was chosen; "
                      "set ignore_index to the void value, or add the missing classes to the class list")
    if len(candidates) == 1:
        return chosen.value, f"the only value outside {classes} is {listed}"
    return chosen.value, f"values outside {classes}: {listed}; {chosen.value} is the void-like one"


def infer_void_value(index: SegmentationIndex) -> tuple[int | None, str]:
    """The void value of an index's masks by the module's rule, from the counts its reader gathered
    over the usable records (values already refused as out of range are not among them)."""
    return infer_void(index.value_pixels, index.value_edge_pixels, len(index.class_names))
