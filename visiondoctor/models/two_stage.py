"""A two-stage (Faster R-CNN-style) detector for small images, built from torchvision parts.

Everything the seed post-mortem (seeds/002) got wrong is measured or derived here instead:
- backbone strides are measured by a probe forward (`measure_features`), never assumed;
- anchors come from `anchor_sizes` / `aspect_ratios` (fit them to the data with
  visiondoctor.models.anchor_fit.fit_anchors on the measured feature maps), and
  torchvision's AnchorGenerator derives each level's stride from the feature-map size;
- RoIs are pooled by torchvision's MultiScaleRoIAlign, which infers every level's scale from
  the feature and image sizes (no hard-coded spatial_scale);
- box regression is class-agnostic by default (`AgnosticBoxPredictor`), class-specific
  (torchvision's FastRCNNPredictor) as an option;
- proposal and sampling counts scale with the image size (`proposal_counts`);
- frozen parts keep their BatchNorm in eval mode whatever `.train()` is called with;
- no autocast inside the model: the Trainer wraps the whole forward and the loss.

`seed_configuration()` builds the seed's own broken configuration on the same parts, for the
doctor's tests. The model keeps torchvision's contract (losses in train mode, detections in
eval mode), so the Trainer, the evaluation and the doctor use it like any torchvision detector.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Small_Weights, ResNet18_Weights, mobilenet_v3_small, resnet18
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from visiondoctor.models.detection import no_detector_weights, offline_hint
from visiondoctor.models.registry import register

BACKBONE_STAGES = ("stem", "layer1", "layer2", "layer3")  # in input order, by stride: 2, 4, 8, 16
# Where each stage (and each returnable feature map) lives in the torchvision trunks, by module name.
_TRUNKS = {
    "resnet18": {"stages": {"stem": ("conv1", "bn1"), "layer1": ("layer1",), "layer2": ("layer2",), "layer3": ("layer3",)},
                 "outputs": {"layer1": ("layer1", 64), "layer2": ("layer2", 128), "layer3": ("layer3", 256)}},
    "mobilenet_v3_small": {"stages": {"stem": ("0",), "layer1": ("1",), "layer2": ("2", "3"),
                                      "layer3": ("4", "5", "6", "7", "8")},
                           "outputs": {"layer1": ("1", 16), "layer2": ("3", 24), "layer3": ("8", 48)}},
}
_TRUNK_WEIGHTS = {"resnet18": ResNet18_Weights, "mobilenet_v3_small": MobileNet_V3_Small_Weights}  # ImageNet
# torchvision's Faster R-CNN defaults are tuned for 800-px images; counts scale with the image side.
_REFERENCE_SIDE = 800
_REFERENCE_COUNTS = {"rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
                     "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
                     "rpn_batch_size_per_image": 256, "box_batch_size_per_image": 512}


def proposal_counts(image_size: int) -> dict[str, int]:
    """torchvision's proposal and sampling counts scaled linearly with the image side
    (at 128 px: 320 proposals before NMS and 100 kept in training, not 2000/2000), with floors
    so a tiny image still gets enough proposals."""
    f = image_size / _REFERENCE_SIDE
    counts = {k: max(32, int(round(v * f))) for k, v in _REFERENCE_COUNTS.items()}
    counts["rpn_post_nms_top_n_train"] = max(64, counts["rpn_pre_nms_top_n_train"] // 3)
    counts["rpn_post_nms_top_n_test"] = max(64, counts["rpn_pre_nms_top_n_test"] // 2)
    return counts


def _trunk(name: str, pretrained: bool = False) -> nn.Module:
    """The torchvision trunk, with ImageNet weights when `pretrained` (WeightsUnavailable when they cannot be read)."""
    if name not in _TRUNKS:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(_TRUNKS)}")
    weights = _TRUNK_WEIGHTS[name].DEFAULT if pretrained else None
    try:
        if name == "resnet18":
            return resnet18(weights=weights)
        # torchvision's MobileNetV3 BatchNorm momentum (0.01) is for long ImageNet schedules: over a few hundred
        # steps from scratch its running statistics stay far from the data and eval-mode outputs are garbage.
        norm = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
        return mobilenet_v3_small(weights=weights, norm_layer=norm).features
    except (OSError, RuntimeError) as exc:
        if weights is None:
            raise
        raise offline_hint(f"two_stage_rcnn ({name} backbone)", exc) from exc


class FPNBackbone(nn.Module):
    """A torchvision trunk (BatchNorm) cut after the last returned stage, with an FPN
    over the returned stages. Returns an OrderedDict of maps "0", "1", ... (finest first) with
    `out_channels` channels. Trunks: resnet18 (stride 8/16 maps from layer2/layer3) or
    mobilenet_v3_small's features (about 20x fewer multiply-adds, for CPU budgets); ImageNet weights
    with `pretrained`."""

    def __init__(self, trunk: str = "resnet18", returned_layers: Sequence[str] = ("layer2", "layer3"),
                 out_channels: int = 96, pretrained: bool = False) -> None:
        super().__init__()
        spec = _TRUNKS.get(trunk)
        if spec is None:
            raise ValueError(f"unknown backbone {trunk!r}; available: {', '.join(_TRUNKS)}")
        unknown = [n for n in returned_layers if n not in spec["outputs"]]
        if unknown:
            raise ValueError(f"{trunk}: cannot return {unknown}; returnable: {', '.join(spec['outputs'])}")
        self.trunk_name = trunk
        self._stages = spec["stages"]
        outputs = [spec["outputs"][n] for n in returned_layers]
        self.body = IntermediateLayerGetter(_trunk(trunk, pretrained), return_layers={m: str(i) for i, (m, _) in enumerate(outputs)})
        self.fpn = FeaturePyramidNetwork([c for _, c in outputs], out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))

    def stage(self, name: str) -> list[nn.Module]:
        """The modules of one backbone stage (for freezing / unfreezing); empty when the trunk was cut before it."""
        if name not in self._stages:
            raise ValueError(f"unknown backbone stage {name!r}; stages: {', '.join(BACKBONE_STAGES)}")
        return [getattr(self.body, m) for m in self._stages[name] if hasattr(self.body, m)]


@torch.no_grad()
def measure_features(backbone: nn.Module, image_size: int) -> tuple[list[str], list[tuple[int, int]], list[float]]:
    """Run one probe image through the backbone (eval mode, state restored): the feature names,
    their sizes, and the stride of each (image side / feature side) as measured, not assumed."""
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        out = backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        backbone.train(was_training)
    if isinstance(out, torch.Tensor):
        out = OrderedDict([("0", out)])
    names = list(out)
    hw = [(int(t.shape[-2]), int(t.shape[-1])) for t in out.values()]
    return names, hw, [image_size / w for _, w in hw]


class AgnosticBoxPredictor(nn.Module):
    """Class scores plus ONE box per RoI (4 outputs, not 4 x classes): every class shares the
    regressor, so each class's few examples train the same box layer.

    torchvision's RoIHeads reads `box_regression` as [N, 4 * classes] (fastrcnn_loss picks the
    column of the target class, postprocess_detections decodes one box per class); returning
    the agnostic deltas repeated for every class keeps that contract with no change to RoIHeads,
    and the gradient of every copy flows back to the one regressor."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        scores = self.cls_score(x)
        deltas = self.bbox_pred(x)
        return scores, deltas.repeat(1, scores.shape[-1])


class TwoStageDetector(FasterRCNN):
    """torchvision's FasterRCNN whose frozen parts stay frozen: `.train()` keeps every BatchNorm
    whose own parameters are frozen in eval mode (running statistics fixed), so calling
    model.train() — as every training loop does — cannot make frozen layers drift."""

    def train(self, mode: bool = True) -> "TwoStageDetector":
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    params = list(m.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        m.eval()
        return self

    @property
    def num_classes(self) -> int:
        return int(self.roi_heads.box_predictor.cls_score.out_features)


def set_stage_trainable(model: TwoStageDetector, stage: str, trainable: bool) -> None:
    """Freeze or unfreeze one backbone stage: parameters and, with them, BatchNorm statistics
    (TwoStageDetector.train keeps BatchNorm of frozen parameters in eval mode)."""
    for module in model.backbone.stage(stage):
        for p in module.parameters():
            p.requires_grad_(trainable)
    model.train(model.training)


@register("two_stage_rcnn", task="detection")
def two_stage_rcnn(
    num_classes: int,
    image_size: int = 128,
    pretrained: bool = False,
    pretrained_backbone: bool = False,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    class_agnostic: bool = True,
    backbone: str = "resnet18",
    returned_layers: Sequence[str] = ("layer2", "layer3"),
    fpn_channels: int = 96,
    representation_size: int = 256,
    detections_per_img: int = 100,
    score_thresh: float = 0.01,
    **overrides: Any,
) -> TwoStageDetector:
    """Two-stage detector for small images (128 px sketches by default).

    anchor_sizes / aspect_ratios: per feature level (finest first), e.g. from
    `anchor_fit.fit_anchors`; by default sizes (2, 4) x the measured stride of each level and
    ratios (0.5, 1, 2). class_agnostic: one box per RoI (default) or torchvision's 4 x classes.
    backbone: resnet18 or mobilenet_v3_small (ImageNet weights with `pretrained_backbone`; no COCO
    weights exist for the whole model, so `pretrained` raises WeightsUnavailable); returned_layers: the
    stages the FPN reads (layer1/layer2/layer3 = stride 4/8/16, measured).
    `overrides` go to torchvision's FasterRCNN (e.g. rpn_post_nms_top_n_train)."""
    if pretrained:
        raise no_detector_weights("two_stage_rcnn")
    trunk = FPNBackbone(backbone, returned_layers, fpn_channels, pretrained=pretrained_backbone)
    names, feature_hw, strides = measure_features(trunk, image_size)
    if anchor_sizes is None:
        anchor_sizes = [(2 * s, 4 * s) for s in strides]
    if aspect_ratios is None:
        aspect_ratios = [(0.5, 1.0, 2.0)] * len(anchor_sizes)
    if len(anchor_sizes) != len(names) or len(aspect_ratios) != len(names):
        raise ValueError(f"anchor_sizes and aspect_ratios need one entry per feature level ({len(names)}: strides "
                         f"{strides}), got {len(anchor_sizes)} and {len(aspect_ratios)}")
    per_location = {len(s) * len(r) for s, r in zip(anchor_sizes, aspect_ratios)}
    if len(per_location) != 1:
        raise ValueError("every level needs the same number of anchors per location (sizes x ratios), got "
                         f"{[len(s) * len(r) for s, r in zip(anchor_sizes, aspect_ratios)]}")
    anchors = AnchorGenerator(tuple(tuple(float(v) for v in lv) for lv in anchor_sizes),
                              tuple(tuple(float(v) for v in lv) for lv in aspect_ratios))
    # MultiScaleRoIAlign pools a box of side >= canonical_scale from level canonical_level (stride 16) and smaller
    # boxes from finer levels; torchvision's 224 px is for 800-px images, scaled here with the image side.
    pool = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2,
                              canonical_scale=max(8, round(224 * image_size / _REFERENCE_SIDE)), canonical_level=4)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    predictor = (AgnosticBoxPredictor if class_agnostic else FastRCNNPredictor)(representation_size, num_classes)
    settings = {**proposal_counts(image_size), "box_detections_per_img": detections_per_img,
                "box_score_thresh": score_thresh, **overrides}
    model = TwoStageDetector(trunk, num_classes=None, min_size=image_size, max_size=image_size,
                             rpn_anchor_generator=anchors, box_roi_pool=pool, box_head=box_head,
                             box_predictor=predictor, **settings)
    if pretrained_backbone:
        model.weights_source = f"torchvision {_TRUNK_WEIGHTS[backbone].DEFAULT} (backbone)"
    model.measured_strides = dict(zip(names, strides))
    model.feature_hw = dict(zip(names, feature_hw))
    model.class_agnostic = class_agnostic
    return model


def feature_sizes(model: TwoStageDetector, image_size: int) -> list[tuple[int, int]]:
    """The measured feature-map sizes of a built model at `image_size` (finest first)."""
    return measure_features(model.backbone, image_size)[1]


def grow_predictor(model: TwoStageDetector, num_classes: int) -> TwoStageDetector:
    """Enlarge the classifier to `num_classes` outputs for a new incremental phase: the old rows
    (background and every old class) are copied, the new rows keep their fresh initialisation.
    A class-agnostic box regressor needs no change; a class-specific one grows the same way."""
    predictor = model.roi_heads.box_predictor
    old = predictor.cls_score
    if num_classes < old.out_features:
        raise ValueError(f"grow_predictor: cannot shrink the classifier from {old.out_features} to {num_classes} classes")
    if num_classes == old.out_features:
        return model
    predictor.cls_score = _grown(old, num_classes)
    if isinstance(predictor, FastRCNNPredictor):
        predictor.bbox_pred = _grown(predictor.bbox_pred, 4 * num_classes)
    return model


def _grown(layer: nn.Linear, out_features: int) -> nn.Linear:
    new = nn.Linear(layer.in_features, out_features).to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        new.weight[: layer.out_features].copy_(layer.weight)
        new.bias[: layer.out_features].copy_(layer.bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.bias.requires_grad_(layer.bias.requires_grad)
    return new


# ----- the seed's configuration (seeds/002), for the doctor's tests -----------------------------------------------

class FixedStrideAnchorGenerator(AnchorGenerator):
    """The seed's `AnchorGenerator(base_size=16, scales=..., ratios=..., stride=8)`: anchors of
    base_size x scale placed every `stride` pixels whatever the feature map's real stride."""

    def __init__(self, base_size: float = 16, scales: Sequence[float] = (0.5, 1.0, 2.0),
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), stride: int = 8) -> None:
        super().__init__(((tuple(base_size * s for s in scales)),), (tuple(ratios),))
        self.assumed_stride = stride

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.empty((), dtype=torch.int64, device=device).fill_(self.assumed_stride)] * 2 for _ in grid_sizes]
        self.set_cell_anchors(dtype, device)
        per_image = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [per_image for _ in range(image_list.tensors.shape[0])]


class FixedScaleRoIPool(nn.Module):
    """The seed's pooling: roi_align on the one C4 map with a hard-coded spatial_scale."""

    def __init__(self, spatial_scale: float = 1 / 8, output_size: int = 7) -> None:
        super().__init__()
        self.spatial_scale, self.output_size = spatial_scale, output_size

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: Any) -> torch.Tensor:
        return roi_align(features["0"], proposals, output_size=self.output_size, spatial_scale=self.spatial_scale,
                         sampling_ratio=2)


class AutocastOnly(nn.Module):
    """The seed's partial AMP: one module run under autocast, its outputs cast back to float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        device = x.device.type
        with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
            out = self.module(x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


class SeedDetectionHead(nn.Module):
    """The seed's DetectionHead: class scores and 4 x classes box outputs (class-specific regression)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class _C4(nn.Module):
    """resnet18 up to layer3 (the seed's C4 map, stride 16), one output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(resnet18(weights=None), return_layers={"layer3": "0"})
        self.out_channels = 256

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.body(x)


def seed_configuration(num_classes: int = 21, image_size: int = 128) -> FasterRCNN:
    """The seed's detector (seeds/002), on the same torchvision parts as the healthy model:
    anchors of base size 16 (scales 0.5/1/2) on an assumed stride-8 grid over a stride-16 C4 map,
    RoIAlign with spatial_scale 1/8 on that map, autocast around the detection head only,
    class-specific box regression, conv1/layer1 frozen with BatchNorm still updating, and
    3000/1000 proposals per 128-px image."""
    backbone = _C4()
    for name in ("conv1", "bn1", "layer1"):
        for p in getattr(backbone.body, name).parameters():
            p.requires_grad_(False)
    representation = 256
    model = FasterRCNN(
        backbone, num_classes=None, min_size=image_size, max_size=image_size,
        rpn_anchor_generator=FixedStrideAnchorGenerator(16, (0.5, 1.0, 2.0), (0.5, 1.0, 2.0), stride=8),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),  # replaced below: FasterRCNN accepts only this type here
        box_head=AutocastOnly(TwoMLPHead(backbone.out_channels * 7 * 7, representation)),
        box_predictor=AutocastOnly(SeedDetectionHead(representation, num_classes)),
        rpn_pre_nms_top_n_train=3000, rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=3000, rpn_post_nms_top_n_test=1000, rpn_batch_size_per_image=256,
        box_batch_size_per_image=512,
    )
    model.roi_heads.box_roi_pool = FixedScaleRoIPool(1 / 8)
    return model


def seed_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The seed's optimizer: SGD at lr 2e-4, momentum 0.9, no warmup."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=2e-4, momentum=0.9,
                           weight_decay=1e-4)
