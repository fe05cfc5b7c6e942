"""Data checks on a DetectionIndex or on a batch of torchvision-style targets: box format and range,
label 0 in background-reserving detectors, empty categories, imbalance, tiny boxes."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from visiondoctor.data.samples import CategoryMap, DetectionIndex
from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding

OUT_OF_IMAGE_TOLERANCE_PX = 1.0
OUT_OF_IMAGE_ERROR_FRACTION = 0.25  # a quarter of the boxes outside: a coordinate-system error, not sloppy labels
DEGENERATE_XYXY_FRACTION = 0.1  # x2 <= x1 for 10 % of boxes: they are not xyxy
TINY_FRACTION = 0.1
IMBALANCE_WARNING = 50.0
IMBALANCE_INFO = 10.0


@dataclass
class BoxTable:
    """All boxes of a split or batch, flat: xyxy pixels, the image size of each, labels, and a reference per box."""

    boxes: torch.Tensor  # [N, 4]
    image_wh: torch.Tensor  # [N, 2]
    labels: list[int]
    refs: list[str]  # "image id 3 / annotation id 17"


def table_from_index(index: DetectionIndex) -> BoxTable:
    boxes, wh, labels, refs = [], [], [], []
    for r in index.records:
        for i, (b, c) in enumerate(zip(r.boxes, r.category_ids)):
            boxes.append(b)
            wh.append((r.width, r.height))
            labels.append(c)
            ann = r.annotation_ids[i] if i < len(r.annotation_ids) else i
            refs.append(f"image id {r.image_id} ({r.file_name}), annotation id {ann}")
    return BoxTable(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), torch.tensor(wh, dtype=torch.float64).reshape(-1, 2), labels, refs)


def table_from_targets(targets: Sequence[dict], image_sizes: Sequence[tuple[int, int]]) -> BoxTable:
    boxes, wh, labels, refs = [], [], [], []
    for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
        b = torch.as_tensor(t["boxes"], dtype=torch.float64).reshape(-1, 4)
        boxes.append(b)
        wh.append(torch.tensor([[w, h]], dtype=torch.float64).expand(b.shape[0], 2))
        labels.extend(int(x) for x in torch.as_tensor(t["labels"]).reshape(-1))
        ident = t.get("image_id", i)
        ident = int(ident) if isinstance(ident, (int, torch.Tensor)) and torch.as_tensor(ident).numel() == 1 else i
        refs.extend(f"batch image {i} (image id {ident}), box {j}" for j in range(b.shape[0]))
    if not boxes:
        return BoxTable(torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64), [], [])
    return BoxTable(torch.cat(boxes), torch.cat(wh), labels, refs)


def check_boxes(table: BoxTable, min_size: float = 8.0) -> list[Finding]:
    """data.box-format, data.box-out-of-image, data.tiny-boxes."""
    b, wh = table.boxes, table.image_wh
    n = b.shape[0]
    if n == 0:
        return []
    findings = []
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if float(b.abs().max()) <= 1.5 and float(wh.min()) > 32:
        findings.append(Finding(
            id="data.box-format", severity="error",
            title="Boxes are normalised to [0, 1] but the model expects pixel coordinates",
            evidence={"num_boxes": n, "max_coordinate": round(float(b.max()), 4), "image_size_min": int(wh.min())},
            cause="YOLO-style normalised boxes given to a model that works in pixels: every box is a dot in the top-left corner.",
            fix="Multiply x by the image width and y by the height (or read the labels with the YOLO reader).",
            where=table.refs[0]))
        return findings
    degenerate = (w <= 0) | (h <= 0)
    if float(degenerate.double().mean()) > DEGENERATE_XYXY_FRACTION:
        as_xywh_inside = ((b[:, 0] + b[:, 2] <= wh[:, 0] + OUT_OF_IMAGE_TOLERANCE_PX) & (b[:, 1] + b[:, 3] <= wh[:, 1] + OUT_OF_IMAGE_TOLERANCE_PX)
                          & (b[:, 2] > 0) & (b[:, 3] > 0))
        idx = int(torch.nonzero(degenerate)[0])
        findings.append(Finding(
            id="data.box-format", severity="error",
            title=f"{float(degenerate.double().mean()):.0%} of the boxes have x2 <= x1 or y2 <= y1: they look like [x, y, w, h], not [x1, y1, x2, y2]",
            evidence={"num_boxes": n, "degenerate_as_xyxy": int(degenerate.sum()),
                      "valid_if_read_as_xywh": round(float(as_xywh_inside.double().mean()), 3),
                      "example": {"box": [round(float(v), 1) for v in b[idx]], "at": table.refs[idx]}},
            cause="COCO stores [x, y, width, height]; torchvision detectors take [x1, y1, x2, y2].",
            fix="Convert with torchvision.ops.box_convert(boxes, 'xywh', 'xyxy').",
            where=table.refs[idx]))
    tol = OUT_OF_IMAGE_TOLERANCE_PX
    outside = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > wh[:, 0] + tol) | (b[:, 3] > wh[:, 1] + tol)
    frac_out = float(outside.double().mean())
    if outside.any():
        idx = torch.nonzero(outside).flatten()
        overshoot = torch.stack([-b[idx, 0], -b[idx, 1], b[idx, 2] - wh[idx, 0], b[idx, 3] - wh[idx, 1]], 1).max(1).values
        findings.append(Finding(
            id="data.box-out-of-image",
            severity="error" if frac_out > OUT_OF_IMAGE_ERROR_FRACTION else "warning",
            title=f"{int(outside.sum())} of {n} boxes extend outside their image",
            evidence={"boxes_outside": int(outside.sum()), "fraction": round(frac_out, 4),
                      "max_overshoot_px": round(float(overshoot.max()), 1),
                      "examples": [table.refs[int(i)] for i in idx[:5]]},
            cause=("Most boxes overshoot: the coordinates belong to another image size or another box format."
                   if frac_out > OUT_OF_IMAGE_ERROR_FRACTION else
                   "Some annotations were drawn past the border (or the image was resized without its boxes)."),
            fix="Clip boxes to the image (torchvision.ops.clip_boxes_to_image) if the overshoot is small; otherwise check "
                "the width/height the boxes were annotated at.",
            where=table.refs[int(idx[0])]))
    side = torch.minimum(w, h)
    tiny = (side < min_size) & ~degenerate
    frac_tiny = float(tiny.double().mean())
    if frac_tiny > TINY_FRACTION:
        findings.append(Finding(
            id="data.tiny-boxes", severity="warning",
            title=f"{frac_tiny:.0%} of the boxes are thinner than {min_size:g} px",
            evidence={"tiny_boxes": int(tiny.sum()), "num_boxes": n, "min_size_px": min_size,
                      "short_side_px_quantiles_0_10_50": [round(float(v), 1) for v in torch.quantile(side.float(), torch.tensor([0.0, 0.1, 0.5]))],
                      "examples": [table.refs[int(i)] for i in torch.nonzero(tiny).flatten()[:5]]},
            cause="Objects smaller than the detector's finest stride fall between feature cells and anchors; they are "
                  "learned poorly or not at all.",
            fix="Train at a larger input size, use a model with a stride-4/8 level, or set anchor sizes that include these boxes.",
            where=table.refs[int(torch.nonzero(tiny)[0])]))
    return findings


def check_label_zero(labels: Sequence[int], background_label: bool | None = True, where: str = "targets") -> list[Finding]:
    """data.label-zero-background: a real object carries label 0, which torchvision detectors reserve for background.
    `background_label` None (a model that does not say): a warning, since most detectors reserve 0."""
    if background_label is False:
        return []
    zero = sum(1 for v in labels if int(v) == 0)
    if zero == 0:
        return []
    return [Finding(
        id="data.label-zero-background", severity="error" if background_label else "warning",
        title=f"{zero} objects have label 0, which the detector treats as background"
              + ("" if background_label else " (if it reserves 0 for background, as most detectors do)"),
        evidence={"objects_with_label_0": zero, "num_objects": len(labels), "labels_seen": sorted(set(int(v) for v in labels))[:20]},
        cause="torchvision detectors (Faster R-CNN, RetinaNet, SSD, FCOS) reserve label 0 for background: objects "
              "labelled 0 are trained as background and never detected.",
        fix="Shift labels by one (label = dataset index + 1, num_classes = number of classes + 1); "
            "visiondoctor.data.samples.CategoryMap(background=True) does this.",
        where=where)]


def check_categories(index: DetectionIndex) -> list[Finding]:
    """data.empty-category and data.class-imbalance on a whole split."""
    findings = []
    counts = index.boxes_per_category()
    supercats = {c.supercategory for c in index.categories if c.supercategory}
    for cat in index.empty_categories():
        is_super = cat.name in supercats
        findings.append(Finding(
            id="data.empty-category", severity="info" if is_super else "warning",
            title=f"Category {cat.id} '{cat.name}' has no annotations"
                  + (" (it is the supercategory of the others)" if is_super else ""),
            evidence={"category_id": cat.id, "name": cat.name, "annotations": 0,
                      "annotations_per_category": {str(k): v for k, v in counts.items()}},
            cause=("Exports such as Roboflow's list the parent category as a category of its own; it never occurs."
                   if is_super else "The category is declared but never annotated in this split."),
            fix=("Harmless, but it occupies an output; drop it from the category list if the model's head should not "
                 "have it." if is_super else "Annotate it, drop it from the category list, or check the split."),
            where=f"{index.source}: category id {cat.id}"))
    nonzero = {k: v for k, v in counts.items() if v > 0}
    if len(nonzero) >= 2:
        hi, lo = max(nonzero, key=nonzero.get), min(nonzero, key=nonzero.get)
        ratio = nonzero[hi] / nonzero[lo]
        if ratio >= IMBALANCE_INFO:
            names = {c.id: c.name for c in index.categories}
            findings.append(Finding(
                id="data.class-imbalance", severity="warning" if ratio >= IMBALANCE_WARNING else "info",
                title=f"'{names.get(hi, hi)}' has {ratio:.0f}x more boxes than '{names.get(lo, lo)}'",
                evidence={"boxes_per_category": {names.get(k, str(k)): v for k, v in counts.items()}, "ratio_max_min": round(ratio, 1)},
                cause="The loss is dominated by the frequent class; the rare one gets few positives per batch.",
                fix="Report per-class AP (not only the mean), and consider focal loss, class-balanced sampling or more "
                    "annotations of the rare class.",
                where=f"{index.source}"))
    return findings


DATA_DOCS = [
    FindingDoc("data.label-zero-background",
               "a real class uses label 0, which torchvision detectors reserve for background",
               "the labels the model will be trained with, against the model's background convention",
               needs="to know whether label 0 is background (a torchvision detector, or the model's background_label)",
               severity="error"),
    FindingDoc("data.box-format", "boxes look like the wrong format (xywh vs xyxy, normalised vs pixels)",
               "the share of boxes with x2 <= x1 or y2 <= y1 (valid as xywh instead), or every coordinate <= 1.5 on "
               "images larger than 32 px", needs="nothing from the model (data only)", severity="error"),
    FindingDoc("data.box-out-of-image", "boxes extend outside the image",
               "boxes crossing the image border by more than 1 px", needs="nothing from the model (data only)",
               severity="warning; error above 25 % of boxes"),
    FindingDoc("data.empty-category", "a category has no annotations", "boxes per declared category",
               needs="nothing from the model (data only)",
               severity="warning; info for a Roboflow-style supercategory"),
    FindingDoc("data.class-imbalance", "one class dominates the annotations",
               "boxes of the most frequent class per box of the rarest", needs="nothing from the model (data only)",
               severity="info at 10:1, warning at 50:1"),
    FindingDoc("data.tiny-boxes", "many boxes are smaller than the model's smallest anchor/stride can resolve",
               "the share of boxes thinner than the smallest measured prior stride (8 px when unknown)",
               needs="the model's priors for the stride (else 8 px)", severity="warning above 10 % of boxes"),
]


@check("data", order=10, findings=DATA_DOCS)
def check_index(index: DetectionIndex, category_map: CategoryMap | None = None, background_label: bool | None = None,
                min_size: float = 8.0) -> list[Finding]:
    """All data checks on a split, in the labels the model will see when `category_map` is given."""
    findings = check_categories(index) + check_boxes(table_from_index(index), min_size)
    if category_map is not None:
        labels = [category_map.to_label(c) for r in index.records for c in r.category_ids]
        findings += check_label_zero(labels, background_label, where=str(index.source))
    return findings


@check("probe", order=10, findings=[d.id for d in DATA_DOCS if d.id not in ("data.empty-category", "data.class-imbalance")])
def check_targets(targets: Sequence[dict], image_sizes: Sequence[tuple[int, int]], background_label: bool | None = None,
                  min_size: float = 8.0) -> list[Finding]:
    """All data checks on a batch of torchvision-style targets (boxes xyxy pixels, labels)."""
    table = table_from_targets(targets, image_sizes)
    return check_boxes(table, min_size) + check_label_zero(table.labels, background_label, where="targets")
