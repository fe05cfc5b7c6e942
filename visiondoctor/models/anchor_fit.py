"""Anchors fitted to a dataset's boxes, judged on the grid the model really uses.

The quality of a set of anchors is its best possible recall (BPR): the fraction of
ground-truth boxes that at least one anchor overlaps at IoU >= a threshold — the same measure
the doctor's `anchors.coverage` check reports. It is computed with torchvision's own
AnchorGenerator on the feature-map sizes measured from the backbone, so grid offsets and
strides count, not just box shapes.

`fit_anchors` starts from the data (sizes at evenly spaced quantiles of sqrt(w*h), aspect
ratios by 1-D k-means on log(h/w)) and then improves that start by a coordinate search on
the real grid (each size and ratio scaled up or down while the match score, then the mean best
IoU, improves) — YOLOv5's autoanchor search, done here on a torchvision anchor grid. The match
score (`match_quality`) counts each box reached and its positives up to MATCH_POSITIVES, so a
fit does not buy recall with positives. Hand-written because no maintained library fits
torchvision AnchorGenerator parameters.

`fit_model_priors` does it for any model: it finds every prior generator (AnchorGenerator of
RetinaNet, Faster R-CNN and the two-stage model; DefaultBoxGenerator of SSD, SSDLite and the
early-exit exits), measures the grid a training step calls each one on, judges the priors on
the training boxes in the model's input frame (`best_possible_recall`, the number the doctor's
anchors.coverage reports) and, below REFIT_BELOW, refits them with as many priors per position,
so the heads stay valid, keeping the fit only when its match score is higher (default boxes stay at least
MIN_PRIOR_STRIDES strides in side and grow with the level). Its record (priors.json in a run) is what
`apply_priors` rebuilds.

`fit_input_to_priors` goes one step further when even the refitted priors miss COVERAGE_TARGET (boxes
small against the finest stride, which no prior shape reaches): it measures the options that bring
them within reach — a finer level where the builder offers one, larger inputs up to the images' own
size — each with its own fit, cheapest (FLOPs) first, and names the first that reaches the target.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou

SEARCH_FACTORS = (0.8, 0.9, 1.1, 1.25)


@dataclass(frozen=True)
class AnchorFit:
    """Fitted AnchorGenerator arguments and how well they (and the starting anchors) reach the boxes."""

    sizes: tuple[tuple[float, ...], ...]  # per feature level
    aspect_ratios: tuple[tuple[float, ...], ...]  # per feature level (h / w, torchvision's convention)
    bpr: float
    mean_best_iou: float
    iou_threshold: float
    num_boxes: int
    baseline_bpr: float | None = None  # of the anchors given as `baseline`, when any

    def to_dict(self) -> dict:
        return asdict(self)


def anchor_quality(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                   feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int], boxes: torch.Tensor,
                   iou_threshold: float = 0.5) -> tuple[float, float]:
    """(BPR, mean best IoU) of the anchors torchvision generates for these feature maps, over `boxes`
    ([N, 4] xyxy in the model's input frame of size `image_hw`)."""
    quality = anchor_match(sizes, aspect_ratios, feature_hw, image_hw, boxes, iou_threshold)
    return quality.bpr, quality.mean_best_iou


def anchor_match(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int], boxes: torch.Tensor,
                 iou_threshold: float = 0.5) -> MatchQuality:
    """MatchQuality of the anchors torchvision generates for these feature maps over `boxes` (model input frame)."""
    generator, grid = _anchor_grid(sizes, aspect_ratios, feature_hw, image_hw)
    return generator_match(generator, grid, boxes, iou_threshold)


def best_anchor_iou(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                    feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int], boxes: torch.Tensor) -> torch.Tensor:
    """For each box, the highest IoU any anchor of torchvision's AnchorGenerator grid reaches ([N])."""
    generator, grid = _anchor_grid(sizes, aspect_ratios, feature_hw, image_hw)
    return grid_best_iou(generate_priors(generator, grid), generator.num_anchors_per_location(), grid, boxes)


def grid_anchors(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int]) -> torch.Tensor:
    """Every anchor of one image, exactly as torchvision's AnchorGenerator places them."""
    return generate_priors(*_anchor_grid(sizes, aspect_ratios, feature_hw, image_hw))


def _anchor_grid(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int]) -> tuple[nn.Module, PriorGrid]:
    """torchvision's AnchorGenerator with these sizes and ratios, and the grid it is laid on."""
    generator = make_generator({"kind": "anchors", "sizes": sizes, "aspect_ratios": aspect_ratios})
    return generator, PriorGrid(tuple(image_hw), tuple(tuple(hw) for hw in feature_hw))


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        new = np.array([values[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def initial_anchors(boxes: torch.Tensor, num_levels: int, sizes_per_level: int,
                    num_ratios: int) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Sizes at evenly spaced quantiles of sqrt(w*h) (smallest on the finest level), ratios by k-means on log(h/w)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3).double().numpy()
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    k = num_levels * sizes_per_level
    qs = np.quantile(side, (np.arange(k) + 0.5) / k)
    sizes = tuple(tuple(round(float(v), 2) for v in qs[i * sizes_per_level:(i + 1) * sizes_per_level])
                  for i in range(num_levels))
    ratios = np.exp(_kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), num_ratios))
    return sizes, tuple(tuple(round(float(r), 3) for r in ratios) for _ in range(num_levels))


def coordinate_search(values: list[float], score: Callable[[list[float]], tuple[float, float]],
                      max_rounds: int = 6) -> tuple[list[float], tuple[float, float]]:
    """Scale each value in turn by SEARCH_FACTORS, keeping a change when the score (a tuple: the match score first,
    mean best IoU breaking ties) improves; rounds until nothing improves. Returns the values and their score."""
    values = list(values)
    best = score(values)
    for _ in range(max_rounds):
        improved = False
        for i in range(len(values)):
            for factor in SEARCH_FACTORS:
                trial = list(values)
                trial[i] = values[i] * factor
                result = score(trial)
                if result > best:
                    best, values, improved = result, trial, True
        if not improved:
            break
    return values, best


def fit_anchors(boxes: torch.Tensor, image_hw: tuple[int, int], feature_hw: Sequence[tuple[int, int]],
                sizes_per_level: int = 2, num_ratios: int = 3, iou_threshold: float = 0.5, max_rounds: int = 6,
                baseline: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]] | None = None) -> AnchorFit:
    """Fit AnchorGenerator sizes and ratios to `boxes` ([N, 4] xyxy, model input frame) on the measured
    feature-map sizes `feature_hw` (finest first). The same ratios are used on every level, because
    torchvision's RPNHead predicts the same number of anchors per location on every level."""
    boxes = boxes.reshape(-1, 4).float()
    if boxes.shape[0] == 0:
        raise ValueError("fit_anchors: no boxes to fit anchors to")
    levels = len(feature_hw)
    sizes, ratios = initial_anchors(boxes, levels, sizes_per_level, num_ratios)
    flat_sizes = [s for lv in sizes for s in lv]
    flat_ratios = list(ratios[0])

    split = len(flat_sizes)

    def score(values: list[float]) -> tuple[float, float]:
        fs, fr = values[:split], values[split:]
        per_level = [fs[i * sizes_per_level:(i + 1) * sizes_per_level] for i in range(levels)]
        return anchor_match(per_level, [fr] * levels, feature_hw, image_hw, boxes, iou_threshold).key()

    values, _ = coordinate_search(flat_sizes + flat_ratios, score, max_rounds)
    flat_sizes, flat_ratios = values[:split], values[split:]
    flat_sizes.sort()
    fitted_sizes = tuple(tuple(round(s, 2) for s in flat_sizes[i * sizes_per_level:(i + 1) * sizes_per_level])
                         for i in range(levels))
    fitted_ratios = tuple(tuple(round(r, 3) for r in sorted(flat_ratios)) for _ in range(levels))
    bpr, mean_iou = anchor_quality(fitted_sizes, fitted_ratios, feature_hw, image_hw, boxes, iou_threshold)
    baseline_bpr = None
    if baseline is not None:
        baseline_bpr = round(anchor_quality(baseline[0], baseline[1], feature_hw, image_hw, boxes, iou_threshold)[0], 4)
    return AnchorFit(fitted_sizes, fitted_ratios, round(bpr, 4), round(mean_iou, 4), iou_threshold,
                     int(boxes.shape[0]), baseline_bpr)


def boxes_in_input_frame(records: Sequence, image_size: int) -> torch.Tensor:
    """All boxes of DetectionRecords ([N, 4] xyxy) scaled as a GeneralizedRCNNTransform with
    min_size = max_size = image_size scales their images (longer side to image_size)."""
    out = []
    for r in records:
        if r.boxes:
            scale = image_size / max(r.width, r.height)
            out.append(torch.tensor(r.boxes, dtype=torch.float32) * scale)
    return torch.cat(out) if out else torch.zeros(0, 4)


# ----- priors of any model: measured, judged and refitted -------------------------------------------------------
#
# A "prior generator" is torchvision's AnchorGenerator (RetinaNet, Faster R-CNN's RPN, the two-stage model) or
# DefaultBoxGenerator (SSD, SSDLite, the early-exit SSDLite's exits). Both return, per feature level, every grid
# position (row-major) times the same shapes (position-major, shape-minor): `grid_best_iou` relies on that order
# to try, for each shape, only the grid position nearest to a box's centre — the best one for axis-aligned boxes
# of fixed size — and reads that prior from the generator's own output, so the result is exact.

PRIOR_TYPES = (AnchorGenerator, DefaultBoxGenerator)
REFIT_BELOW = 0.98  # YOLOv5 / Ultralytics autoanchor: refit when fewer than 98 % of the boxes are reachable
IOU_THRESHOLD = 0.5  # SSD's and RetinaNet's positive threshold; the doctor's anchors.coverage uses it too
SEARCH_BOXES = 1000  # boxes the prior search scores candidates on (the result is judged on all of them)
# The share of the boxes the priors must reach for the input to be kept as configured: the doctor's anchors.coverage
# warns when more than 10 % of the boxes have no prior at IoU 0.4, so a run below 90 % at IoU 0.5 starts warned.
COVERAGE_TARGET = 0.9


@dataclass(frozen=True)
class PriorGrid:
    """Where one prior generator tiles the model input: the (padded) input size and each level's feature size."""

    image_hw: tuple[int, int]
    feature_hw: tuple[tuple[int, int], ...]


def max_iou(priors_xyxy: torch.Tensor, boxes_xyxy: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For each box ([N, 4] xyxy), the highest IoU any prior ([M, 4] xyxy, same frame) reaches; brute force, in chunks."""
    boxes, priors = boxes_xyxy.float().reshape(-1, 4), priors_xyxy.float().reshape(-1, 4)
    if boxes.shape[0] == 0 or priors.shape[0] == 0:
        return torch.zeros(boxes.shape[0])
    return torch.cat([box_iou(boxes[i:i + chunk], priors).max(dim=1).values for i in range(0, boxes.shape[0], chunk)])


def reached_share(best_iou: torch.Tensor, iou: float = IOU_THRESHOLD) -> float:
    """The best possible recall from each box's best prior IoU ([N]): the share at or above `iou`. The one
    definition the fit (here) and the doctor's anchors.coverage both report. NaN without boxes."""
    if best_iou.numel() == 0:
        return float("nan")
    return float((best_iou >= iou).float().mean())


def best_possible_recall(priors_xyxy: torch.Tensor, boxes_xyxy: torch.Tensor, iou: float = IOU_THRESHOLD) -> float:
    """Best possible recall: the share of boxes that some prior overlaps at IoU >= `iou` (both [.., 4] xyxy in the
    frame the priors live in, the model's input). NaN without boxes. Works on any set of priors."""
    if boxes_xyxy.numel() == 0:
        return float("nan")
    return reached_share(max_iou(priors_xyxy, boxes_xyxy), iou)


def positives_per_box(priors_xyxy: torch.Tensor, boxes_xyxy: torch.Tensor, iou: float = IOU_THRESHOLD,
                      chunk: int = 1024) -> float:
    """Mean number of priors a box overlaps at IoU >= `iou`: the positives an IoU matcher can give it. Smaller
    priors can raise the BPR while lowering this (each box then trains fewer predictions)."""
    boxes, priors = boxes_xyxy.float().reshape(-1, 4), priors_xyxy.float().reshape(-1, 4)
    if boxes.shape[0] == 0:
        return float("nan")
    counts = [(box_iou(boxes[i:i + chunk], priors) >= iou).sum(dim=1) for i in range(0, boxes.shape[0], chunk)]
    return float(torch.cat(counts).float().mean())


def generate_priors(generator: nn.Module, grid: PriorGrid) -> torch.Tensor:
    """Every prior of one image ([M, 4] xyxy), from the generator itself (it reads only the sizes of its inputs)."""
    images = ImageList(torch.empty(1, 0, *grid.image_hw), [tuple(grid.image_hw)])
    return generator(images, [torch.empty(1, 0, h, w) for h, w in grid.feature_hw])[0]


def grid_best_iou(priors: torch.Tensor, per_location: Sequence[int], grid: PriorGrid, boxes: torch.Tensor) -> torch.Tensor:
    """For each box ([N, 4] xyxy), the highest IoU any of `priors` (a generator's output on `grid`, `per_location`
    shapes per position on each level) reaches; equal to `max_iou` on the same priors."""
    return grid_matches(priors, per_location, grid, boxes)[0]


def grid_matches(priors: torch.Tensor, per_location: Sequence[int], grid: PriorGrid, boxes: torch.Tensor,
                 iou: float = IOU_THRESHOLD, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For each box ([N, 4] xyxy): the highest IoU any of `priors` reaches and how many reach `iou` (the positives an
    IoU matcher can give it) — equal to brute force over all priors (`max_iou`, `positives_per_box`), but each shape
    is tried only at the positions near the box's centre that can reach `iou` at all: O(boxes x shapes x window)."""
    boxes = boxes.float().reshape(-1, 4)
    best, count = torch.zeros(boxes.shape[0]), torch.zeros(boxes.shape[0], dtype=torch.long)
    start = 0
    for (h, w), a in zip(grid.feature_hw, per_location):
        block = priors[start:start + h * w * a].float().reshape(h, w, a, 4)
        start += h * w * a
        for i in range(0, boxes.shape[0], chunk):
            level_best, level_count = _level_matches(block, boxes[i:i + chunk], iou)
            best[i:i + chunk] = torch.maximum(best[i:i + chunk], level_best)
            count[i:i + chunk] += level_count
    if start != priors.shape[0]:
        raise ValueError(f"{priors.shape[0]} priors, but the grid {grid.feature_hw} with {list(per_location)} per "
                         f"position makes {start}: not a torchvision-ordered prior generator")
    return best, count


def _level_matches(block: torch.Tensor, boxes: torch.Tensor, iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Best IoU and count at >= `iou` of one level's priors (`block`: [h, w, shapes, 4]) for each box.

    The best IoU of a shape is at its position nearest to the box's centre (axis-aligned boxes of fixed size). To
    count, a shape is tried only with the boxes it could reach at all (at the same centre: IoU >= `iou`) and at the
    positions within the radius where that is still possible: IoU >= t needs an overlap of at least
    t * max(box, prior) along each axis, so the centres can be at most (box + prior) / 2 - t * max(box, prior)
    apart; the nearest position is within half a step of the centre (or beyond the last one), so k steps away
    means at least (k - 1/2) steps."""
    h, w, a, _ = block.shape
    step = torch.tensor([float(block[0, 1, 0, 0] - block[0, 0, 0, 0]) if w > 1 else 1.0,
                         float(block[1, 0, 0, 1] - block[0, 0, 0, 1]) if h > 1 else 1.0]).clamp(min=1e-6)
    limit = torch.tensor([w - 1, h - 1])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    box_wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    offset = (block[0, 0, :, :2] + block[0, 0, :, 2:]) / 2  # [a, 2]: each shape's centre in the first cell
    nearest = torch.minimum(torch.round((centre[:, None] - offset) / step).clamp(min=0).long(), limit)  # [N, a, 2]
    best = _box_prior_iou(boxes[:, None], block[nearest[..., 1], nearest[..., 0], torch.arange(a)]).max(dim=1).values

    sizes = (block[..., 2:] - block[..., :2]).flatten(0, 1)  # [h * w, a, 2]: clipped priors at the border are smaller
    low, high = sizes.amin(dim=0), sizes.amax(dim=0)  # [a, 2]
    # the concentric IoU is highest for a prior as close to the box's size as the shape's sizes allow (each axis)
    closest = torch.minimum(torch.maximum(box_wh[:, None], low[None]), high[None])  # [N, a, 2]
    inner = torch.minimum(box_wh[:, None], closest).prod(dim=-1)
    concentric = inner / (box_wh.prod(dim=1)[:, None] + closest.prod(dim=-1) - inner).clamp(min=1e-9)
    box_index, shape_index = torch.nonzero(concentric >= iou * (1 - 1e-4), as_tuple=True)  # pairs that can match
    count = torch.zeros(boxes.shape[0], dtype=torch.long)
    if box_index.numel() == 0:
        return best, count
    pair_wh = box_wh[box_index]

    def reach_with(prior_wh: torch.Tensor) -> torch.Tensor:
        return ((pair_wh + prior_wh) / 2 - iou * torch.maximum(pair_wh, prior_wh)).clamp(min=0)

    # piecewise linear in the prior's size: its largest value over the shape's sizes is at an end or at the box's size
    reach = torch.stack([reach_with(low[shape_index]), reach_with(high[shape_index]),
                         reach_with(closest[box_index, shape_index])]).amax(dim=(0, 1))  # [2]
    radius = torch.minimum(torch.floor(reach / step + 0.5 + 1e-4).long(), limit)
    dy, dx = torch.meshgrid(torch.arange(-int(radius[1]), int(radius[1]) + 1),
                            torch.arange(-int(radius[0]), int(radius[0]) + 1), indexing="ij")
    cells = nearest[box_index, shape_index][:, None] + torch.stack([dx.flatten(), dy.flatten()], dim=1)  # [P, W, 2]
    inside = ((cells >= 0) & (cells <= limit)).all(dim=-1)
    cells = torch.minimum(cells.clamp(min=0), limit)
    overlap = _box_prior_iou(boxes[box_index][:, None], block[cells[..., 1], cells[..., 0], shape_index[:, None]])
    hits = ((overlap >= iou) & inside).sum(dim=1)
    return best, count.index_add_(0, box_index, hits)


def _box_prior_iou(boxes: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ([..., 1, 4]) with priors ([..., K, 4]) elementwise along the last-but-one axis ([..., K]); by
    hand because torchvision's box_iou compares all pairs, and here each box has its own candidates."""
    inter = (torch.minimum(boxes[..., 2:], priors[..., 2:])
             - torch.maximum(boxes[..., :2], priors[..., :2])).clamp(min=0).prod(dim=-1)
    union = (boxes[..., 2:] - boxes[..., :2]).prod(dim=-1) + (priors[..., 2:] - priors[..., :2]).prod(dim=-1) - inter
    return inter / union.clamp(min=1e-9)


@dataclass(frozen=True)
class MatchQuality:
    """How well a set of priors can be matched to the boxes at an IoU threshold: the best possible recall, the mean
    best IoU, the mean positives per box and `score`, what the fits maximise (see `match_quality`)."""

    bpr: float
    mean_best_iou: float
    positives_per_box: float
    score: float

    def key(self) -> tuple[float, float]:
        """What a fit compares: the score, then the mean best IoU."""
        return self.score, self.mean_best_iou


# The fits maximise the mean over boxes of min(positives, MATCH_POSITIVES) / MATCH_POSITIVES: reaching a box counts
# first (with 1 it is the best possible recall), then its positives up to 5. Maximising the best possible recall
# alone (then the mean best IoU) tiles the boxes with tight, disjoint priors: on the 1500-image shapes set SSDLite's
# fit raised it from 70 % to 95 % but halved the positives per box (8.8 -> 4.5); the demo had measured 4.2 positives
# per box at half the mAP of 6.2. (That fit's failure to train on shapes was its scales, not this: MIN_PRIOR_STRIDES.)
# Past 5 the score stops paying for more positives, so a fit never gives up boxes to crowd others (anchor-free
# assigners pick about 9-10 candidates per object; an IoU matcher gets several from the shapes of one position and
# its neighbours).
MATCH_POSITIVES = 5


def match_quality(best_iou: torch.Tensor, positives: torch.Tensor, iou: float = IOU_THRESHOLD,
                  most: int = MATCH_POSITIVES) -> MatchQuality:
    """MatchQuality from each box's best prior IoU and its number of priors at >= `iou` ([N] each); NaN without
    boxes."""
    if best_iou.numel() == 0:
        nan = float("nan")
        return MatchQuality(nan, nan, nan, nan)
    positives = positives.float()
    return MatchQuality(reached_share(best_iou, iou), float(best_iou.mean()), float(positives.mean()),
                        float(positives.clamp(max=most).mean()) / most)


def prior_params(generator: nn.Module) -> dict[str, Any]:
    """The arguments that rebuild a prior generator (JSON-ready)."""
    if isinstance(generator, DefaultBoxGenerator):
        return {"kind": "default_boxes", "scales": [round(float(s), 5) for s in generator.scales],
                "aspect_ratios": [[round(float(r), 4) for r in lv] for lv in generator.aspect_ratios],
                "steps": generator.steps, "clip": bool(generator.clip)}
    if isinstance(generator, AnchorGenerator):
        return {"kind": "anchors", "sizes": [[round(float(s), 3) for s in lv] for lv in generator.sizes],
                "aspect_ratios": [[round(float(r), 4) for r in lv] for lv in generator.aspect_ratios]}
    raise TypeError(f"not a prior generator: {type(generator).__name__}")


def make_generator(params: dict[str, Any]) -> nn.Module:
    """The prior generator `prior_params` describes."""
    if params["kind"] == "default_boxes":
        return DefaultBoxGenerator([list(lv) for lv in params["aspect_ratios"]], scales=list(params["scales"]),
                                   steps=params.get("steps"), clip=params.get("clip", True))
    if params["kind"] == "anchors":
        return AnchorGenerator(tuple(tuple(float(s) for s in lv) for lv in params["sizes"]),
                               tuple(tuple(float(r) for r in lv) for lv in params["aspect_ratios"]))
    raise ValueError(f"unknown prior kind {params['kind']!r}")


def prior_quality(params: dict[str, Any], grid: PriorGrid, boxes: torch.Tensor,
                  iou: float = IOU_THRESHOLD) -> MatchQuality:
    """MatchQuality of the generator `params` describes, on its grid, over `boxes` (model input frame)."""
    return generator_match(make_generator(params), grid, boxes, iou)


def generator_match(generator: nn.Module, grid: PriorGrid, boxes: torch.Tensor,
                    iou: float = IOU_THRESHOLD) -> MatchQuality:
    """MatchQuality of a prior generator's priors on `grid` over `boxes` (model input frame)."""
    boxes = boxes.reshape(-1, 4)
    if boxes.shape[0] == 0:
        return match_quality(torch.zeros(0), torch.zeros(0), iou)
    best, positives = grid_matches(generate_priors(generator, grid), generator.num_anchors_per_location(), grid,
                                   boxes, iou)
    return match_quality(best, positives, iou)


def _relative_sides(boxes: torch.Tensor, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """sqrt(w*h) and |log(w/h)| of the boxes, with w and h as fractions of the input's width and height."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3).double().numpy() / np.array([image_hw[1], image_hw[0]])
    return np.sqrt(wh[:, 0] * wh[:, 1]), np.abs(np.log(wh[:, 0] / wh[:, 1]))


def _default_boxes_from_data(params: dict[str, Any], grid: PriorGrid, boxes: torch.Tensor) -> list[dict[str, Any]]:
    """Two DefaultBoxGenerator starts from the data, with each level's ratios by 1-D k-means on |log(w/h)| (as
    many as it had): scales at evenly spaced quantiles of the relative box side, and scales by stride — level k
    takes the median of the boxes at least twice its stride and under twice the next level's (a box much
    smaller than twice the stride falls between the priors' centres), levels with no such box keep their scale."""
    side, log_ratio = _relative_sides(boxes, grid.image_hw)
    n = len(params["scales"])
    ratios = [[round(float(np.exp(c)), 4) for c in _kmeans_1d(log_ratio, len(lv))] if lv else []
              for lv in params["aspect_ratios"]]
    by_quantile = [round(float(v), 5) for v in np.quantile(side, (np.arange(n) + 0.5) / n)]
    strides = [2 * max(grid.image_hw[0] / h, grid.image_hw[1] / w) / max(grid.image_hw) for h, w in grid.feature_hw]
    bounds = [0.0, *strides[1:], np.inf]
    by_stride = list(params["scales"])
    for k in range(len(strides)):
        owned = side[(side >= bounds[k]) & (side < bounds[k + 1])]
        if owned.size:
            by_stride[k] = round(float(np.median(owned)), 5)
    return [{**params, "scales": by_quantile, "aspect_ratios": ratios},
            {**params, "scales": by_stride, "aspect_ratios": ratios}]


# A default box is at least this many of its level's strides in side (where the builder's own scale is not already
# smaller): RetinaNet's anchors are 4 strides (anchor scale 4) and SSDLite's finest default boxes 0.2 x 320 px at
# stride 16. A smaller prior is matched (IoU >= 0.5) from a position up to half a stride off the object's centre,
# which is a large part of the prior, so the encoded offsets the head must regress grow. Measured on the 1500-image
# shapes set (SSDLite from scratch): with the fit's scales at 1-2.3 strides the regression loss stayed on its plateau
# (val mAP@.5 0.003-0.005 at 5 minutes, benchmarks/vs_ultralytics.py); in 2.5-minute runs of the fit split in two,
# its ratios on the builder's scales reached 0.193, its scales on the builder's ratios 0.002. Boxes the floor leaves
# unreached are the input search's (`fit_input_to_priors`: a finer level).
MIN_PRIOR_STRIDES = 4.0


def _scale_floor(params: dict[str, Any], grid: PriorGrid) -> list[float]:
    """The smallest scale the fit may give each level: MIN_PRIOR_STRIDES strides (as a fraction of the input's longer
    side, the frame of DefaultBoxGenerator's scales) or the builder's own scale when that is smaller (the coarse
    levels, where 4 strides exceed the input); the extra last scale keeps the builder's too. Rounded down to the 5
    decimals the fit keeps, so a scale raised to the floor and rounded stays allowed."""
    side = max(grid.image_hw)
    strides = [max(grid.image_hw[0] / h, grid.image_hw[1] / w) for h, w in grid.feature_hw]
    floor = [min(MIN_PRIOR_STRIDES * strides[k] / side, s) if k < len(strides) else s
             for k, s in enumerate(params["scales"])]
    return [math.floor(f * 1e5) / 1e5 for f in floor]


def _raised_to_floor(scales: Sequence[float], floor: Sequence[float]) -> list[float]:
    """A search start's scales: each at least its floor and not below the previous level's, in the fit's 5 decimals."""
    return [round(float(v), 5) for v in np.maximum.accumulate(np.maximum(np.asarray(scales, float), floor))]


def _allowed_scales(scales: Sequence[float], floor: Sequence[float]) -> bool:
    """Scales the fit may take: not below the floor, and not shrinking towards the coarser levels (SSD's design: a
    coarser level sees more context, and each level's extra square prior lies between its scale and the next's)."""
    return all(s >= f - 1e-9 for s, f in zip(scales, floor)) and all(b >= a for a, b in zip(scales, scales[1:]))


def _fit_default_boxes(params: dict[str, Any], grid: PriorGrid, boxes: torch.Tensor, iou: float) -> dict[str, Any]:
    """Scales and per-level ratios searched on the real grid (the match key, among `_allowed_scales`) from the
    current and the data starts, each raised to the floor (the best result wins: the search is greedy, each start
    ends in its own optimum); as many ratios per level as before, so the head's outputs per position stay valid."""
    counts = [len(lv) for lv in params["aspect_ratios"]]
    n = len(params["scales"])
    floor = _scale_floor(params, grid)

    def unflatten(values: list[float]) -> dict[str, Any]:
        ratios, at = [], n
        for c in counts:
            ratios.append([round(max(v, 1.0), 4) for v in values[at:at + c]])
            at += c
        return {**params, "scales": [round(v, 5) for v in values[:n]], "aspect_ratios": ratios}

    def key(values: list[float]) -> tuple[float, float]:
        candidate = unflatten(values)
        if not _allowed_scales(candidate["scales"], floor):
            return -math.inf, -math.inf
        return prior_quality(candidate, grid, boxes, iou).key()

    results = []
    for start in (params, *_default_boxes_from_data(params, grid, boxes)):
        flat = _raised_to_floor(start["scales"], floor) + [r for lv in start["aspect_ratios"] for r in lv]
        values, score = coordinate_search(flat, key)
        results.append((score, values))
    return unflatten(max(results, key=lambda r: r[0])[1])


def _fit_anchor_generator(params: dict[str, Any], grid: PriorGrid, boxes: torch.Tensor,
                          iou: float) -> dict[str, Any] | None:
    """AnchorGenerator sizes and ratios by `fit_anchors`, keeping the number of sizes and ratios per level
    (None when the levels differ in them: fit_anchors shares the ratios across levels)."""
    sizes, ratios = params["sizes"], params["aspect_ratios"]
    if len({len(lv) for lv in sizes}) != 1 or len({len(lv) for lv in ratios}) != 1:
        return None
    fit = fit_anchors(boxes, grid.image_hw, grid.feature_hw, sizes_per_level=len(sizes[0]),
                      num_ratios=len(ratios[0]), iou_threshold=iou)
    return {**params, "sizes": [list(lv) for lv in fit.sizes], "aspect_ratios": [list(lv) for lv in fit.aspect_ratios]}


def search_sample(boxes: torch.Tensor, most: int = SEARCH_BOXES) -> torch.Tensor:
    """At most `most` boxes, evenly spaced through the list (deterministic): the search scores thousands of
    candidates, and a BPR over 1000 boxes is within about a point of the whole set's."""
    if boxes.shape[0] <= most:
        return boxes
    return boxes[torch.linspace(0, boxes.shape[0] - 1, most).round().long()]


def fit_prior_params(params: dict[str, Any], grid: PriorGrid, boxes: torch.Tensor,
                     iou: float = IOU_THRESHOLD, search_boxes: int = SEARCH_BOXES) -> dict[str, Any] | None:
    """Refitted arguments for one generator (same number of priors per position), or None when it cannot be
    fitted; searched on `search_sample(boxes, search_boxes)`."""
    boxes = search_sample(boxes, search_boxes)
    if params["kind"] == "default_boxes":
        return _fit_default_boxes(params, grid, boxes, iou)
    return _fit_anchor_generator(params, grid, boxes, iou)


def find_prior_generators(model: nn.Module) -> list[tuple[list[str], nn.Module]]:
    """Every prior generator of a model with all the names it is reachable by. FCOS's AnchorGenerator places
    points (its sizes set the centre-sampling radius and box normalisation), not priors to match: left out."""
    if isinstance(model, FCOS):
        return []
    found: dict[int, tuple[list[str], nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module) in PRIOR_TYPES:  # subclasses may place priors their own way
            found.setdefault(id(module), ([], module))[0].append(name)
    return list(found.values())


@torch.no_grad()
def measure_prior_grids(model: nn.Module, image_size: int) -> dict[str, PriorGrid]:
    """The grid each prior generator is called on in one training forward of two `image_size` square images (a
    single box each): {first name: PriorGrid}. Generators a training step never calls are absent. Buffers (BatchNorm
    statistics) and the random state are restored, so the model and the run are as they were."""
    generators = find_prior_generators(model)
    if not generators:
        return {}
    grids: dict[str, PriorGrid] = {}

    def capture(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            images, features = args[0], args[1]
            grids.setdefault(name, PriorGrid(tuple(int(v) for v in images.tensors.shape[-2:]),
                                             tuple((int(f.shape[-2]), int(f.shape[-1])) for f in features)))
        return hook

    handles = [module.register_forward_pre_hook(capture(names[0])) for names, module in generators]
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    device = next(model.parameters()).device
    s = float(image_size)
    target = {"boxes": torch.tensor([[s / 4, s / 4, 3 * s / 4, 3 * s / 4]], device=device),
              "labels": torch.ones(1, dtype=torch.int64, device=device)}
    try:
        with torch.random.fork_rng(devices=[]):
            model.train()
            # two images: BatchNorm in training mode needs more than one value per channel on 1x1 maps
            model([torch.zeros(3, image_size, image_size, device=device)] * 2, [target, target])
    finally:
        for handle in handles:
            handle.remove()
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        model.train(was_training)
    return grids


def frame_scale(model: nn.Module, height: int, width: int) -> tuple[float, float]:
    """(x, y) factors the model's own transform (GeneralizedRCNNTransform: fixed size, or min/max size) resizes an
    image of this size by; (1, 1) for a model without one."""
    transform = getattr(model, "transform", None)
    if not isinstance(transform, GeneralizedRCNNTransform):
        return 1.0, 1.0
    was_training = transform.training
    transform.eval()  # deterministic size (the last of min_size), as at evaluation
    try:
        _, target = transform.resize(torch.zeros(3, height, width), {"boxes": torch.tensor([[0.0, 0.0, width, height]])})
    finally:
        transform.train(was_training)
    corner = target["boxes"][0]
    return float(corner[2]) / width, float(corner[3]) / height


def boxes_in_model_frame(model: nn.Module, records: Sequence) -> torch.Tensor:
    """Every non-crowd box of DetectionRecords ([N, 4] xyxy) in the model's input frame: resized as the model's own
    transform resizes its image (one probe per distinct image size)."""
    scales: dict[tuple[int, int], tuple[float, float]] = {}
    out = []
    for r in records:
        crowd = list(r.iscrowd) + [0] * (len(r.boxes) - len(r.iscrowd))
        boxes = [b for b, c in zip(r.boxes, crowd) if not c]
        if not boxes:
            continue
        if (r.height, r.width) not in scales:
            scales[(r.height, r.width)] = frame_scale(model, r.height, r.width)
        sx, sy = scales[(r.height, r.width)]
        out.append(torch.tensor(boxes, dtype=torch.float32) * torch.tensor([sx, sy, sx, sy]))
    return torch.cat(out) if out else torch.zeros(0, 4)


def _replace_generator(model: nn.Module, names: Sequence[str], generator: nn.Module) -> None:
    for name in names:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, generator)


JUDGED = ("bpr", "mean_best_iou", "positives_per_box", "match_score")  # per generator, before and after the fit


def _judge(params: dict[str, Any], grid: PriorGrid, boxes: torch.Tensor, iou: float) -> dict[str, float]:
    quality = prior_quality(params, grid, boxes, iou)
    return {"bpr": round(quality.bpr, 4), "mean_best_iou": round(quality.mean_best_iou, 4),
            "positives_per_box": round(quality.positives_per_box, 2), "match_score": round(quality.score, 4)}


def fit_model_priors(model: nn.Module, records: Sequence, image_size: int, *, refit: bool = True,
                     refit_below: float = REFIT_BELOW, iou: float = IOU_THRESHOLD,
                     search_boxes: int = SEARCH_BOXES) -> dict[str, Any] | None:
    """Measure the best possible recall of every prior generator of `model` on the boxes of `records` (in the
    model's input frame, on the grid a training step uses) and, with `refit`, replace the generators below
    `refit_below` by refitted ones with as many priors per position (the heads stay valid) when that raises
    their BPR. Deterministic. Returns what priors.json records (None: the model has no priors)."""
    generators = find_prior_generators(model)
    if not generators:
        return None
    boxes = boxes_in_model_frame(model, records)
    record: dict[str, Any] = {"iou_threshold": iou, "refit_below": refit_below, "auto_priors": refit,
                              "num_boxes": int(boxes.shape[0]), "frame": "model input (after the model's own resize)",
                              "generators": []}
    if boxes.shape[0] == 0:
        return {**record, "refit": False, "note": "no boxes in the training split: nothing to measure"}
    grids = measure_prior_grids(model, image_size)
    for names, generator in generators:
        grid = grids.get(names[0])
        if grid is None:
            continue  # not called in a training step: its priors are not matched against boxes
        params = prior_params(generator)
        entry = {"module": names, "kind": params["kind"], "image_hw": list(grid.image_hw),
                 "feature_hw": [list(hw) for hw in grid.feature_hw], "before": params,
                 **{f"{k}_before": v for k, v in _judge(params, grid, boxes, iou).items()}}
        after, judged = params, {k: entry[f"{k}_before"] for k in JUDGED}
        if refit and entry["bpr_before"] < refit_below:
            fitted = fit_prior_params(params, grid, boxes, iou, search_boxes)
            if fitted is not None:
                trial = _judge(fitted, grid, boxes, iou)
                if (trial["match_score"], trial["mean_best_iou"]) > (judged["match_score"], judged["mean_best_iou"]):
                    after, judged = fitted, trial  # kept only when it matches the boxes better (MATCH_POSITIVES)
        entry.update({"refit": after is not params, "after": after, **{f"{k}_after": v for k, v in judged.items()}})
        record["generators"].append(entry)
    for entry in record["generators"]:  # only once every generator is judged: a failure leaves the model as built
        if entry["refit"]:
            _replace_generator(model, entry["module"], make_generator(entry["after"]))
    used = record["generators"]
    if not used:
        return {**record, "refit": False, "note": "no prior generator is called in a training step"}
    record.update(bpr_before=min(g["bpr_before"] for g in used), bpr_after=min(g["bpr_after"] for g in used),
                  positives_per_box_before=min(g["positives_per_box_before"] for g in used),
                  positives_per_box_after=min(g["positives_per_box_after"] for g in used),
                  refit=any(g["refit"] for g in used))
    record["note"] = _note(record, refit, refit_below) + _grid_limit(record, boxes, [grids[g["module"][0]] for g in used])
    return record


def _note(record: dict[str, Any], refit: bool, refit_below: float) -> str:
    before, after = record["bpr_before"], record["bpr_after"]
    if not refit:
        return f"model.auto_priors=false: priors kept (best possible recall {before:.1%})"
    if before >= refit_below:
        return f"priors kept: best possible recall {before:.1%} >= {refit_below:.0%}"
    if record["refit"]:
        return (f"priors refitted: best possible recall {before:.1%} -> {after:.1%}, positives per box "
                f"{record['positives_per_box_before']:.1f} -> {record['positives_per_box_after']:.1f}")
    return f"priors kept: no refit matched the boxes better (best possible recall {before:.1%}) on this grid"


def _grid_limit(record: dict[str, Any], boxes: torch.Tensor, grids: Sequence[PriorGrid],
                good: float = COVERAGE_TARGET) -> str:
    """When the BPR stays low, how much of it the grid itself forbids: a box under 1.5x the finest stride mostly
    falls between prior centres (IoU < 0.5 whatever the prior's shape at an offset of half a stride)."""
    if record["bpr_after"] >= good:
        return ""
    stride = min(max(g.image_hw[0] / h, g.image_hw[1] / w) for g in grids for h, w in g.feature_hw)
    side = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1).sqrt()
    share = float((side < 1.5 * stride).float().mean())
    if share < 0.05:
        return ""
    return (f"; {share:.0%} of the boxes are under 1.5x the finest prior stride ({stride:.0f} px in the input), "
            "where no prior reaches most of them at this IoU: raise model.image_size or use a model with a finer "
            "level (SSDLite: model.kwargs.finest_stride=8)")


def apply_priors(model: nn.Module, record: dict[str, Any]) -> int:
    """Rebuild the refitted generators a priors.json record names on a freshly built model of the same config;
    returns how many were replaced. A record that does not fit the model raises ValueError."""
    found = {names[0]: module for names, module in find_prior_generators(model)}
    by_any_name = {name: names for names, _ in find_prior_generators(model) for name in names}
    replaced = 0
    for entry in record.get("generators", []):
        if not entry.get("refit"):
            continue
        name = entry["module"][0]
        if name not in by_any_name:
            raise ValueError(f"priors.json names a prior generator {name!r} this model does not have")
        current = found[by_any_name[name][0]]
        new = make_generator(entry["after"])
        if prior_params(current)["kind"] != entry["after"]["kind"] or \
                new.num_anchors_per_location() != current.num_anchors_per_location():
            raise ValueError(f"priors.json: the priors recorded for {name!r} do not fit this model "
                             f"({new.num_anchors_per_location()} vs {current.num_anchors_per_location()} per position)")
        _replace_generator(model, by_any_name[name], new)
        replaced += 1
    return replaced


# ----- the input the priors are laid on: changed when no fit of the priors reaches the boxes -----------------------
#
# Refitting cannot place priors between the centres of the finest grid: a box much smaller than the finest stride is
# out of reach at IoU 0.5 whatever the priors' shapes. Two changes bring such boxes within reach — a finer level
# (for builders that offer one) or a larger input — and both cost compute. `fit_input_to_priors` measures each
# option's coverage after its own fit, cheapest first, and takes the first that reaches COVERAGE_TARGET.

SIZE_STEP = 1.25  # the larger inputs tried grow by this factor in side (about 1.56x the compute per step)
SIZE_MULTIPLE = 32  # and are multiples of this (the coarsest strides of the registry's models divide it)
OPTION_SEARCH_BOXES = 300  # boxes each option's prior search scores on (its coverage is judged on all of them)
OPTION_ERRORS = (ValueError, RuntimeError, TypeError)  # what a builder raises for arguments it does not take


@dataclass(frozen=True)
class InputOption:
    """One way to build the model: its input size (model.image_size) and builder keyword arguments (model.kwargs)."""

    image_size: int
    kwargs: dict[str, Any]

    def changes(self, start: InputOption) -> list[str]:
        """The settings that differ from `start`, as `key=value` (config keys)."""
        out = [f"model.image_size={self.image_size}"] if self.image_size != start.image_size else []
        return out + [f"model.kwargs.{k}={v}" for k, v in sorted(self.kwargs.items()) if k not in start.kwargs
                      or start.kwargs[k] != v]


def native_input_size(records: Sequence) -> int:
    """The median longer side of the records' images: the input size at which the model sees them unscaled (a
    larger input adds no detail, only compute)."""
    return int(np.median([max(r.width, r.height) for r in records])) if records else 0


def larger_input_sizes(image_size: int, cap: int, step: float = SIZE_STEP, multiple: int = SIZE_MULTIPLE) -> list[int]:
    """Input sizes above `image_size` up to `cap`, each `step` times the last (rounded to `multiple`), and `cap`
    itself (rounded down) when it lies beyond the last step."""
    sizes: list[int] = []
    side = float(image_size)
    while True:
        side *= step
        size = round(side / multiple) * multiple
        if size > cap:
            break
        if size > (sizes[-1] if sizes else image_size):
            sizes.append(size)
    top = cap // multiple * multiple
    if top > (sizes[-1] if sizes else image_size):
        sizes.append(top)
    return sizes


def finer_level_kwargs(builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Builder keyword arguments that add a finer prior level: a builder with a `finest_stride` parameter (the
    registry's SSDLite builders) gets it halved; none for a builder without one. A value the builder refuses is
    found when the option is built."""
    param = inspect.signature(builder).parameters.get("finest_stride")
    current = kwargs.get("finest_stride", param.default if param is not None else None)
    if not isinstance(current, int) or current < 2:
        return []
    return [{**kwargs, "finest_stride": current // 2}]


def fit_input_to_priors(build: Callable[[InputOption], nn.Module], records: Sequence, start: InputOption,
                        start_bpr: float, options: Sequence[InputOption],
                        cost: Callable[[nn.Module, int], float | None], *, kept: Sequence[str] = (),
                        target: float = COVERAGE_TARGET) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """When the priors refitted at the configured input (`start`, best possible recall `start_bpr`) miss the
    target: each of `options` built (`build`, no weights needed: only its grid and priors are measured) and its
    priors fitted as `fit_model_priors` does, in order of compute per image, until one reaches `target`.

    The compute of an option is `cost(model, image_size)` (FLOPs of a forward) of its builder arguments at the start
    size, times the ratio of input areas (a convolutional network's compute grows with the area). Returns the
    record of the search (priors.json's "input": what was tried, at what relative cost, with what coverage, what
    was chosen and why; `kept`: the settings the user fixed, named in the note) and the chosen option's
    `fit_model_priors` record (None: the configured input stays)."""
    section: dict[str, Any] = {"target": target, "start": {**asdict(start), "bpr": start_bpr}, "user_set": list(kept),
                               "tried": [], "chosen": None}
    flops: dict[str, float | None] = {}

    def at_start_size(kwargs: dict[str, Any]) -> float | None:
        key = repr(sorted(kwargs.items()))
        if key not in flops:
            try:
                flops[key] = cost(build(InputOption(start.image_size, kwargs)), start.image_size)
            except OPTION_ERRORS:
                flops[key] = None  # the option's own build says why, below
        return flops[key]

    def relative(option: InputOption) -> float:
        own, ref = at_start_size(option.kwargs), at_start_size(start.kwargs)
        return (own / ref if own and ref else 1.0) * (option.image_size / start.image_size) ** 2  # unknown: area only

    ranked = sorted(((relative(o), o) for o in options), key=lambda c: (c[0], c[1].image_size))
    chosen = None
    for rel, option in ranked:
        entry: dict[str, Any] = {**asdict(option), "changes": option.changes(start), "relative_cost": round(rel, 2)}
        try:
            record = fit_model_priors(build(option), records, option.image_size, search_boxes=OPTION_SEARCH_BOXES)
        except OPTION_ERRORS as exc:  # a builder that refuses the option: not an option
            section["tried"].append({**entry, "error": f"{exc.__class__.__name__}: {exc}"})
            continue
        entry["bpr"] = record.get("bpr_after") if record else None
        section["tried"].append(entry)
        if entry["bpr"] is not None and entry["bpr"] >= target:
            section["chosen"], chosen = entry, record
            break
    section["note"] = _input_note(section, start_bpr, target)
    return section, chosen


def _input_note(section: dict[str, Any], start_bpr: float, target: float) -> str:
    kept = "".join(f"; {k} kept as the user set it" for k in section["user_set"])
    chosen = section["chosen"]
    if chosen is not None:
        return (f"input changed so the priors reach the boxes: {', '.join(chosen['changes'])} "
                f"({chosen['relative_cost']:.2f}x the compute per image): best possible recall {start_bpr:.1%} with "
                f"the priors refitted at the configured input, {chosen['bpr']:.1%} with the change (target "
                f"{target:.0%}){kept}")
    measured = [t for t in section["tried"] if t.get("bpr") is not None]
    if not measured:
        return f"input kept: best possible recall {start_bpr:.1%} < {target:.0%}, and no other input to try{kept}"
    best = max(measured, key=lambda t: (t["bpr"], -t["relative_cost"]))
    return (f"input kept: best possible recall {start_bpr:.1%} < {target:.0%}, and no input tried reaches it (best: "
            f"{', '.join(best['changes'])}, {best['bpr']:.1%} at {best['relative_cost']:.2f}x the compute){kept}")
