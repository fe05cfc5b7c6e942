"""SSDLite320-MobileNetV3-Large with early exits: detection heads part-way up the trunk.

    create_model("ssdlite320_early_exit", num_classes=6, exit_points=(8, 12))

The trunk, the full detection path and every piece of SSD machinery are torchvision's:

- `full` is the project's `ssdlite320_mobilenet_v3_large` (a torchvision `SSD`: MobileNetV3-Large
  with the reduced tail when no backbone weights are loaded, the stride-16 tap at the expansion
  of `features[13]`, stride 32, the extra blocks, SSDLiteHead, DefaultBoxGenerator).
- Exit k is another torchvision `SSD` whose `backbone` (`ExitFeatures`) takes the trunk tensor
  after `features[exit_points[k]]` and adds torchvision's SSDLite extra blocks, so each exit
  predicts on several scales; its DefaultBoxGenerator spans the same box sizes as the full model
  over its own feature maps (sizes, strides and channels are measured by a probe forward at
  build time and kept in `model.exit_specs`).
- Training uses each exit's SSDMatcher (IoU matching), BoxCoder and `SSD.compute_loss`
  (hard-negative mining); the trunk runs once per batch and feeds every exit.

Exits are numbered from 0; the last one is the full model. Names: exit1, exit2, ..., full.

Train mode returns `{"exit1_classification", "exit1_bbox_regression", ..., "full_classification",
"full_bbox_regression"}`, each multiplied by its exit's weight (`exit_loss_weights`), so the
project's Trainer trains it unchanged. `freeze_trunk=True` trains the early exits alone: the
full model is frozen (no gradients, BatchNorm kept in eval mode) and its loss is not computed.

Eval mode returns torchvision-style detections plus, per image, `exit` (0-based index of the exit
it left at, int64 scalar tensor), `exit_confidence` (its confidence there) and `exit_confidences`
(the confidence at every exit it reached). The exit policy: an image leaves at the first exit
whose confidence reaches that exit's threshold (`set_policy`); the full model takes the rest.
Without a calibrated policy every threshold is +inf: every image runs the full model and the early
heads are skipped. `forced_exit=k` makes every image leave at exit k (the earlier exits'
confidences are still computed, so its latency is that of leaving there under any policy).
Batches are routed: the trunk runs on the whole batch to the first exit, then only the images
that did not leave go on.

The confidence signal is computed from an exit's post-NMS detections (see `CONFIDENCE_SIGNALS`);
which one the policy uses is chosen by measurement (visiondoctor/evaluation/early_exit.py).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init
from torchvision.ops import boxes as box_ops

from visiondoctor.models.detection import ssdlite320_mobilenet_v3_large
from visiondoctor.models.registry import register

Detections = dict[str, Tensor]


# ----- confidence signals ---------------------------------------------------------------------------
def _top_k_mean(scores: Tensor, k: int) -> float:
    """Mean of the k highest detection scores, missing ones counted as 0 (fewer confident
    detections than k lowers the confidence)."""
    top = torch.topk(scores, min(k, scores.numel())).values if scores.numel() else scores
    return float(top.sum()) / k


def _certainty(scores: Tensor, floor: float = 0.2) -> float:
    """How far from 0.5 the least decided detection above `floor` is: min |2s - 1| (0 when one
    detection sits at 0.5, 1 when all are at 1); 0 when there is no detection above the floor."""
    considered = scores[scores >= floor]
    return float((2.0 * considered - 1.0).abs().min()) if considered.numel() else 0.0


# Candidate signals, computed from an exit's post-NMS detections; the analysis measures which one
# tracks the exit's per-image accuracy gap to the full model (evaluation/early_exit.py).
CONFIDENCE_SIGNALS: dict[str, Callable[[Detections], float]] = {
    "max_score": lambda d: float(d["scores"].max()) if d["scores"].numel() else 0.0,  # one clear object suffices
    "top3_mean": lambda d: _top_k_mean(d["scores"], 3),  # several clear detections needed
    "top5_mean": lambda d: _top_k_mean(d["scores"], 5),
    "certainty": lambda d: _certainty(d["scores"]),  # no half-sure detection
}
DEFAULT_SIGNAL = "top3_mean"


# ----- modules -------------------------------------------------------------------------------------
class ExitFeatures(nn.Module):
    """One early exit's feature maps: the trunk tensor at the branch point, then torchvision's
    SSDLite extra blocks (1x1 reduce, 3x3 depthwise stride 2, 1x1 expand) for coarser scales."""

    def __init__(self, in_channels: int, extra_channels: Sequence[int], norm_layer: Callable[..., nn.Module]):
        super().__init__()
        chans = [in_channels, *extra_channels]
        self.extra = nn.ModuleList([_extra_block(a, b, norm_layer) for a, b in zip(chans[:-1], chans[1:])])
        _normal_init(self.extra)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        out = [x]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(out))


class EarlyExitSSDLite(nn.Module):
    """SSDLite with early exits sharing one MobileNetV3 trunk. See the module docstring."""

    def __init__(self, full: SSD, exit_points: Sequence[int], exit_extra_channels: Sequence[int],
                 exit_loss_weights: Sequence[float] | None, freeze_trunk: bool, signal: str, image_size: int):
        super().__init__()
        self.full = full
        trunk = full.backbone.features[0]  # torchvision: features[0..c4-1] + features[c4].block[0] (expansion)
        c4_tap = len(trunk) - 1
        points = [int(p) for p in exit_points]
        if not points or points != sorted(set(points)) or points[0] < 1 or points[-1] >= c4_tap:
            raise ValueError(f"exit_points={list(exit_points)}: need distinct increasing MobileNetV3 feature "
                             f"indices in [1, {c4_tap - 1}] (before the stride-32 block)")
        if signal not in CONFIDENCE_SIGNALS:
            raise ValueError(f"signal={signal!r}: expected one of {', '.join(CONFIDENCE_SIGNALS)}")
        self.exit_points = points
        self.num_exits = len(points) + 1
        self.exit_names = [f"exit{k + 1}" for k in range(len(points))] + ["full"]
        weights = list(exit_loss_weights) if exit_loss_weights is not None else [1.0] * self.num_exits
        if len(weights) != self.num_exits or any(w < 0 for w in weights):
            raise ValueError(f"exit_loss_weights={weights}: need {self.num_exits} non-negative weights "
                             f"({', '.join(self.exit_names)})")
        self.exit_loss_weights = weights
        self.signal = signal
        self.thresholds: list[float] = [math.inf] * len(points)
        self.forced_exit: int | None = None
        self.freeze_trunk = freeze_trunk

        # Trunk segments: stage k ends at exit k's branch point; the last one at the C4 expansion.
        bounds = [0, *(p + 1 for p in points), len(trunk)]
        self.stage_slices = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's SSDLite norm
        probe = self._probe_trunk(image_size)
        min_ratio, max_ratio = _ratio_span(full.anchor_generator)
        exits = []
        for k, point in enumerate(points):
            features = ExitFeatures(probe[point].shape[1], exit_extra_channels, norm_layer)
            with torch.no_grad():
                maps = list(features.eval()(probe[point]).values())
            anchors = DefaultBoxGenerator([[2, 3] for _ in maps], min_ratio=min_ratio, max_ratio=max_ratio)
            head = SSDLiteHead([m.shape[1] for m in maps], anchors.num_anchors_per_location(),
                               full.head.classification_head.num_columns, norm_layer)
            exits.append(SSD(features, anchors, (image_size, image_size), head.classification_head.num_columns,
                             image_mean=full.transform.image_mean, image_std=full.transform.image_std, head=head,
                             score_thresh=full.score_thresh, nms_thresh=full.nms_thresh,
                             detections_per_img=full.detections_per_img, topk_candidates=full.topk_candidates))
        self.exits = nn.ModuleList(exits)
        self.exit_specs = self._measure_specs(image_size)
        if freeze_trunk:
            for p in self.full.parameters():
                p.requires_grad_(False)
        self.train()

    # ----- construction helpers -----
    @property
    def trunk(self) -> nn.Sequential:
        return self.full.backbone.features[0]

    @property
    def transform(self) -> nn.Module:
        return self.full.transform

    @torch.no_grad()
    def _probe_trunk(self, size: int) -> dict[int, Tensor]:
        was = self.trunk.training
        self.trunk.eval()
        x, out = torch.zeros(1, 3, size, size), {}
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            out[i] = x
        self.trunk.train(was)
        return out

    @torch.no_grad()
    def _measure_specs(self, size: int) -> list[dict]:
        """Per exit: its feature maps' channels, sizes, strides and default boxes, from a probe forward."""
        was = self.training
        self.eval()
        images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
        specs = []
        for k, (ssd, maps) in enumerate(zip(self._all_ssds(), self._all_feature_maps(images.tensors))):
            anchors = ssd.anchor_generator(images, maps)[0]
            specs.append({"name": self.exit_names[k],
                          "branch_feature": self.exit_points[k] if k < len(self.exit_points) else "features[13] (C4)",
                          "channels": [int(m.shape[1]) for m in maps],
                          "sizes": [[int(m.shape[2]), int(m.shape[3])] for m in maps],
                          "strides": [round(size / m.shape[2], 2) for m in maps],
                          "anchors_per_location": ssd.anchor_generator.num_anchors_per_location(),
                          "num_anchors": int(anchors.shape[0]),
                          "box_scales": [round(s, 3) for s in ssd.anchor_generator.scales]})
        self.train(was)
        return specs

    def _all_ssds(self) -> list[SSD]:
        return [*self.exits, self.full]

    def _all_feature_maps(self, x: Tensor) -> list[list[Tensor]]:
        """Every exit's feature maps for a batch (the trunk once)."""
        out = []
        for k in range(self.num_exits):
            x = self._stage(k, x)
            out.append(self._exit_maps(k, x))
        return out

    # ----- pieces of the forward pass -----
    def _stage(self, k: int, x: Tensor) -> Tensor:
        a, b = self.stage_slices[k]
        for layer in self.trunk[a:b]:
            x = layer(x)
        return x

    def _exit_maps(self, k: int, x: Tensor) -> list[Tensor]:
        if k < len(self.exits):
            return list(self.exits[k].backbone(x).values())
        # The rest of torchvision's SSDLiteFeatureExtractorMobileNet.forward, from the C4 expansion on.
        backbone = self.full.backbone
        out = [x]
        for block in backbone.features[1:]:
            x = block(x)
            out.append(x)
        for block in backbone.extra:
            x = block(x)
            out.append(x)
        return out

    def train(self, mode: bool = True) -> "EarlyExitSSDLite":
        super().train(mode)
        if self.freeze_trunk:
            self.full.eval()  # frozen BatchNorm must not update its running statistics
        return self

    # ----- policy -----
    def set_policy(self, thresholds: Sequence[float], signal: str | None = None) -> None:
        """Exit k's threshold (one per early exit; +inf = never leave there) and the confidence signal."""
        if len(thresholds) != len(self.exits):
            raise ValueError(f"need {len(self.exits)} thresholds (one per early exit), got {len(thresholds)}")
        if signal is not None:
            if signal not in CONFIDENCE_SIGNALS:
                raise ValueError(f"signal={signal!r}: expected one of {', '.join(CONFIDENCE_SIGNALS)}")
            self.signal = signal
        self.thresholds = [float(t) for t in thresholds]

    def confidence(self, detections: Detections) -> float:
        return CONFIDENCE_SIGNALS[self.signal](detections)

    # ----- forward -----
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in train mode")
            image_list, targets = self.transform(images, targets)
            return self._losses(image_list, targets)
        return self.detect(images, forced_exit=self.forced_exit)

    def _losses(self, image_list: ImageList, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        x = image_list.tensors
        last = self.num_exits - 1
        for k, ssd in enumerate(self._all_ssds()):
            if k == last and self.freeze_trunk:
                break
            x = self._stage(k, x)
            if self.exit_loss_weights[k] == 0:
                continue
            maps = self._exit_maps(k, x)
            for name, value in _ssd_losses(ssd, image_list, targets, maps).items():
                losses[f"{self.exit_names[k]}_{name}"] = self.exit_loss_weights[k] * value
        return losses

    @torch.no_grad()
    def detect(self, images: list[Tensor], forced_exit: int | None = None,
               thresholds: Sequence[float] | None = None, backend: "ExitBackend | None" = None) -> list[Detections]:
        """Detections under the policy (this model's thresholds unless given), or every image at
        `forced_exit`, each with `exit` and its confidences. `backend` runs the network pieces
        (default: this model, eager PyTorch; e.g. ONNX Runtime sessions of the same pieces)."""
        if forced_exit is not None and not 0 <= forced_exit < self.num_exits:
            raise ValueError(f"forced_exit={forced_exit}: exits are 0..{self.num_exits - 1} ({', '.join(self.exit_names)})")
        thresholds = list(self.thresholds if thresholds is None else thresholds)
        if len(thresholds) != len(self.exits):
            raise ValueError(f"need {len(self.exits)} thresholds (one per early exit), got {len(thresholds)}")
        out = self._cascade(images, forced_exit, thresholds, False, backend or self)
        return [per_image[-1] for per_image in out]

    @torch.no_grad()
    def detect_every_exit(self, images: list[Tensor]) -> list[list[Detections]]:
        """Every exit's detections for every image (for calibration and analysis): [image][exit]."""
        return self._cascade(images, None, [math.inf] * len(self.exits), True, self)

    # The pieces a backend runs (ExitBackend): trunk stage k, and exit k's head on the stage output.
    def run_stage(self, k: int, x: Tensor) -> Tensor:
        return self._stage(k, x)

    def run_head(self, k: int, x: Tensor) -> tuple[dict[str, Tensor], list[tuple[int, int]]]:
        maps = self._exit_maps(k, x)
        return self._all_ssds()[k].head(maps), [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]

    def _cascade(self, images: list[Tensor], forced_exit: int | None, thresholds: list[float], record_all: bool,
                 backend: "ExitBackend") -> list[list[Detections]]:
        """Route a batch through the exits: the trunk runs once up to each exit, for the images
        still active; an image leaves at the first exit whose confidence reaches its threshold."""
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = self.transform(images, None)
        n = len(images)
        results: list[list[Detections]] = [[] for _ in range(n)]
        confidences: list[list[float]] = [[] for _ in range(n)]
        active = list(range(n))
        x = image_list.tensors
        last = self.num_exits - 1
        target = last if forced_exit is None else forced_exit
        for k in range(self.num_exits):
            x = backend.run_stage(k, x)
            if k < last and not record_all and (k > target or (forced_exit is None and thresholds[k] == math.inf)):
                continue  # no image can leave here: skip the head (the trunk still runs)
            head_outputs, grid = backend.run_head(k, x)
            subset = ImageList(image_list.tensors[active] if len(active) < n else image_list.tensors,
                               [image_list.image_sizes[i] for i in active])
            dets = _postprocess(self._all_ssds()[k], head_outputs, grid, subset, [original_sizes[i] for i in active],
                                self.transform)
            keep = []
            for j, (i, d) in enumerate(zip(active, dets)):
                conf = self.confidence(d)
                confidences[i].append(conf)
                if record_all:
                    leave = k == last
                    results[i].append(_with_exit(d, k, conf, confidences[i]))
                else:
                    leave = k == target if forced_exit is not None else (k == last or conf >= thresholds[k])
                    if leave:
                        results[i].append(_with_exit(d, k, conf, confidences[i]))
                if not leave:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):
                x = x[keep]
                active = [active[j] for j in keep]
        return results


class ExitBackend(Protocol):
    """What runs the network pieces of an early-exit model (eager PyTorch, ONNX Runtime, ...)."""

    def run_stage(self, k: int, x: Tensor) -> Tensor: ...

    def run_head(self, k: int, x: Tensor) -> tuple[dict[str, Tensor], list[tuple[int, int]]]: ...


def _with_exit(d: Detections, k: int, conf: float, confs: list[float]) -> Detections:
    return {**d, "exit": torch.tensor(k), "exit_confidence": torch.tensor(conf),
            "exit_confidences": torch.tensor(list(confs))}


def _ssd_losses(ssd: SSD, image_list: ImageList, targets: list[dict[str, Tensor]],
                maps: list[Tensor]) -> dict[str, Tensor]:
    """torchvision's SSD training step on given feature maps: default boxes, SSDMatcher on the
    IoU matrix (as SSD.forward does), then SSD.compute_loss (box coding, hard-negative mining)."""
    head_outputs = ssd.head(maps)
    anchors = ssd.anchor_generator(image_list, maps)
    matched = []
    for anchors_per_image, target in zip(anchors, targets):
        if target["boxes"].numel() == 0:
            matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                      device=anchors_per_image.device))
        else:
            matched.append(ssd.proposal_matcher(box_ops.box_iou(target["boxes"], anchors_per_image)))
    return ssd.compute_loss(targets, head_outputs, anchors, matched)


def _postprocess(ssd: SSD, head_outputs: dict[str, Tensor], grid: list[tuple[int, int]], image_list: ImageList,
                 original_sizes: list[tuple[int, int]], transform: nn.Module) -> list[Detections]:
    """torchvision's SSD inference tail: default boxes for the feature-map grid, decoding + NMS,
    back to the input size. (DefaultBoxGenerator reads only the maps' shapes.)"""
    logits = head_outputs["cls_logits"]
    shapes = [torch.empty(1, 0, h, w, dtype=logits.dtype, device=logits.device) for h, w in grid]
    anchors = ssd.anchor_generator(image_list, shapes)
    dets = ssd.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
    return transform.postprocess(dets, image_list.image_sizes, original_sizes)


def _ratio_span(generator: DefaultBoxGenerator) -> tuple[float, float]:
    """The (min_ratio, max_ratio) a DefaultBoxGenerator was built with (its scales hold them)."""
    scales = generator.scales
    return float(scales[0]), float(scales[-2])


@register("ssdlite320_early_exit", task="detection")
def ssdlite320_early_exit(
    num_classes: int,
    image_size: int = 320,
    pretrained: bool = False,
    pretrained_backbone: bool = False,
    exit_points: Sequence[int] = (8, 12),
    exit_extra_channels: Sequence[int] = (256, 256, 128),
    exit_loss_weights: Sequence[float] | None = None,
    freeze_trunk: bool = False,
    signal: str = DEFAULT_SIGNAL,
    thresholds: Sequence[float | None] | None = None,
    anchor_min_ratio: float = 0.2,
    anchor_max_ratio: float = 0.95,
    score_thresh: float = 0.001,
    detections_per_img: int = 100,
) -> EarlyExitSSDLite:
    """SSDLite320-MobileNetV3-Large with early exits after MobileNetV3 `features[i]` for i in
    `exit_points` (default 8: 80 ch, and 12: 112 ch, both stride 16). Each exit adds
    `exit_extra_channels` extra blocks (one coarser scale each) and an SSDLite head; all exits share
    the box-size span `anchor_min_ratio`..`anchor_max_ratio`. `exit_loss_weights`: one weight per
    exit, the full model last (default all 1). `freeze_trunk`: train the early exits alone (load
    trained full-model weights first)."""
    full = ssdlite320_mobilenet_v3_large(
        num_classes=num_classes, image_size=image_size, pretrained=pretrained,
        pretrained_backbone=pretrained_backbone, anchor_min_ratio=anchor_min_ratio,
        anchor_max_ratio=anchor_max_ratio, score_thresh=score_thresh, detections_per_img=detections_per_img)
    model = EarlyExitSSDLite(full, exit_points, exit_extra_channels, exit_loss_weights, freeze_trunk, signal,
                             image_size)
    if thresholds is not None:
        model.set_policy([math.inf if t is None else float(t) for t in thresholds])
    return model
