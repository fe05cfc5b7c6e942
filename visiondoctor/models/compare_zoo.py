"""Architectures for model comparison beyond torchvision's builders.

- `ssd_mobilenet_v2_fpnlite`: SSD on a MobileNetV2 trunk with a light feature pyramid (P3-P7,
  depthwise-separable smoothing convs), SSDLite heads and multi-scale anchors (`anchor_scale` x
  stride, two scales per octave, aspect ratios 0.5/1/2) — the TF Object Detection API's
  "SSD MobileNet V2 FPNLite" layout, assembled from torchvision parts.
- `efficientdet_d0` / `efficientdet_d1`: the `effdet` package (optional extra) behind torchvision's
  detection contract, so the same engine, evaluation and export code drive it.

Both keep the contract: train mode returns a dict of named losses, eval mode a list of
{boxes, scores, labels} in the input image's coordinates; label 0 is background.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import Conv2dNormActivation, clip_boxes_to_image
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from visiondoctor.models.detection import WeightsUnavailable, no_detector_weights, offline_hint
from visiondoctor.models.registry import register

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# mobilenet_v2().features: the last block at strides 8, 16 and 32 (32, 96 and 320 channels).
_MOBILENET_V2_TAPS = {"6": "c3", "13": "c4", "17": "c5"}
_MOBILENET_V2_CHANNELS = [32, 96, 320]


def _separable(channels: int, norm_layer: Any) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1: the 'lite' replacement for the FPN's 3x3 smoothing conv."""
    return nn.Sequential(
        Conv2dNormActivation(channels, channels, 3, groups=channels, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        Conv2dNormActivation(channels, channels, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
    )


def mobilenet_v2_fpnlite_backbone(fpn_channels: int = 128, width_mult: float = 1.0, pretrained_backbone: bool = False,
                                  norm_layer: Any = None) -> BackboneWithFPN:
    """MobileNetV2 features tapped at strides 8/16/32, a feature pyramid to `fpn_channels` with
    P6/P7 on top (five levels, strides 8-128), depthwise-separable smoothing convs."""
    norm_layer = norm_layer or partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    weights = MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained_backbone else None
    if weights is not None and width_mult != 1.0:
        raise ValueError("ImageNet weights exist only for width_mult=1.0")
    try:
        trunk = mobilenet_v2(weights=weights, width_mult=width_mult, norm_layer=norm_layer).features
    except (OSError, RuntimeError) as exc:
        if weights is None:
            raise
        raise offline_hint("mobilenet_v2 backbone", exc) from exc
    channels = [trunk[int(i)].out_channels for i in _MOBILENET_V2_TAPS]
    backbone = BackboneWithFPN(trunk, _MOBILENET_V2_TAPS, channels, fpn_channels,
                               extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels), norm_layer=norm_layer)
    backbone.fpn.layer_blocks = nn.ModuleList(_separable(fpn_channels, norm_layer) for _ in channels)
    return backbone


@register("ssd_mobilenet_v2_fpnlite", task="detection")
def ssd_mobilenet_v2_fpnlite(
    num_classes: int,
    image_size: int = 320,
    pretrained: bool = False,
    pretrained_backbone: bool = False,
    fpn_channels: int = 128,
    width_mult: float = 1.0,
    anchor_scale: float = 4.0,
    score_thresh: float = 0.001,
    detections_per_img: int = 100,
) -> nn.Module:
    """SSD + MobileNetV2-FPNLite. Anchors at level k are `anchor_scale * stride_k` (x 1 and x 2^0.5)
    wide, ratios 0.5/1/2; lower `anchor_scale` for small objects (stride 8 x 4 = 32 px at P3)."""
    if pretrained:
        raise no_detector_weights("ssd_mobilenet_v2_fpnlite")
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = mobilenet_v2_fpnlite_backbone(fpn_channels, width_mult, pretrained_backbone, norm_layer)
    strides = (8, 16, 32, 64, 128)
    anchors = AnchorGenerator(tuple((anchor_scale * s, anchor_scale * s * 2 ** 0.5) for s in strides),
                              ((0.5, 1.0, 2.0),) * len(strides))
    head = SSDLiteHead([fpn_channels] * len(strides), anchors.num_anchors_per_location(), num_classes, norm_layer)
    # SSD types its generator as DefaultBoxGenerator, but only calls it as (images, features) -> anchors
    # in xyxy pixels, which AnchorGenerator does with the FPNLite anchor layout.
    return SSD(backbone, anchors, (image_size, image_size), num_classes, IMAGENET_MEAN, IMAGENET_STD, head=head,
               score_thresh=score_thresh, detections_per_img=detections_per_img)


# ---------------------------------------------------------------- EfficientDet (effdet extra)

EFFDET_HINT = "EfficientDet needs the optional `effdet` package: pip install visiondoctor[effdet]  (or: pip install effdet)"


def _import_effdet() -> Any:
    try:
        import effdet  # deferred: the optional `effdet` extra
        from effdet import anchors, bench, loss  # deferred: the optional `effdet` extra
    except ImportError as exc:
        raise ImportError(f"{EFFDET_HINT} ({exc})") from exc
    return effdet, anchors, bench, loss


class EfficientDetDetector(nn.Module):
    """An `effdet` EfficientDet behind torchvision's detection contract.

    effdet's own benches take padded yxyx targets and return a [B, N, 6] tensor; this wrapper
    resizes and normalises like torchvision's SSD (GeneralizedRCNNTransform, fixed square size),
    labels anchors with effdet's labeler, returns {classification, bbox_regression} losses (the box
    loss already multiplied by effdet's box_loss_weight, so their sum is effdet's total) and maps
    detections back to each input image's size.
    """

    def __init__(self, variant: str, num_classes: int, image_size: int, pretrained_backbone: bool = False,
                 score_thresh: float = 0.001, detections_per_img: int = 100):
        super().__init__()
        effdet, anchors_mod, bench_mod, loss_mod = _import_effdet()
        config = effdet.get_efficientdet_config(variant)
        reduction = 2 ** config.max_level
        if image_size % reduction:
            raise ValueError(f"{variant}: image_size must be a multiple of {reduction} (the stride of its coarsest "
                             f"level), got {image_size}; e.g. {max(reduction, round(image_size / reduction) * reduction)}")
        self.num_classes = num_classes - 1  # effdet has no background logit; its classes are 1..K like ours
        try:
            self.model = effdet.create_model(variant, bench_task="", num_classes=self.num_classes, pretrained=False,
                                             pretrained_backbone=pretrained_backbone, image_size=(image_size, image_size),
                                             max_det_per_image=detections_per_img)
        except (OSError, RuntimeError) as exc:
            if not pretrained_backbone:
                raise
            raise offline_hint(f"{variant} backbone", exc) from exc
        cfg = self.model.config
        self.anchors = anchors_mod.Anchors.from_config(cfg)
        self.labeler = anchors_mod.AnchorLabeler(self.anchors, self.num_classes, match_threshold=0.5)
        self.loss = loss_mod.DetectionLoss(cfg)
        self._post_process = bench_mod._post_process
        # effdet's per-image decoding + NMS; called directly rather than through its scripted batch
        # loop, which the ONNX exporter cannot trace.
        self._generate_detections = anchors_mod.generate_detections
        self.num_levels = cfg.num_levels
        self.max_detection_points = cfg.max_detection_points
        self.detections_per_img = detections_per_img
        self.score_thresh = score_thresh
        self.transform = GeneralizedRCNNTransform(image_size, image_size, IMAGENET_MEAN, IMAGENET_STD,
                                                  size_divisible=1, fixed_size=(image_size, image_size))

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        if self.training and targets is None:
            raise ValueError("EfficientDetDetector in train mode needs targets")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        class_out, box_out = self.model(batch.tensors)
        if self.training:
            yxyx = [t["boxes"][:, [1, 0, 3, 2]] for t in targets]
            cls_targets, box_targets, positives = self.labeler.batch_label_anchors(yxyx, [t["labels"] for t in targets])
            total, class_loss, _ = self.loss(class_out, box_out, cls_targets, box_targets, positives)
            return {"classification": class_loss, "bbox_regression": total - class_loss}
        candidates = min(self.max_detection_points, sum(c[0].numel() for c in class_out))
        cls_top, box_top, indices, classes = self._post_process(class_out, box_out, self.num_levels, self.num_classes,
                                                                candidates)
        results = []
        for i in range(len(images)):
            d = self._generate_detections(cls_top[i], box_top[i], self.anchors.boxes, indices[i], classes[i], None, None,
                                          max_det_per_image=self.detections_per_img)
            keep = d[:, 4] > self.score_thresh  # rows padded with zeros are dropped here too
            boxes = clip_boxes_to_image(d[keep, :4], batch.tensors.shape[-2:])
            results.append({"boxes": boxes, "scores": d[keep, 4], "labels": d[keep, 5].long()})
        return self.transform.postprocess(results, batch.image_sizes, original_sizes)


def _efficientdet(variant: str) -> None:
    def build(num_classes: int, image_size: int = 640, pretrained: bool = False, pretrained_backbone: bool = False,
              score_thresh: float = 0.001, detections_per_img: int = 100) -> nn.Module:
        if pretrained:
            raise WeightsUnavailable(f"{variant}: COCO detector weights are not loaded by visiondoctor (they need a "
                                     "download); use model.pretrained=false")
        return EfficientDetDetector(variant, num_classes, image_size, pretrained_backbone, score_thresh,
                                    detections_per_img)

    build.__name__ = variant
    build.__doc__ = (f"EfficientDet {variant[-2:].upper()} from the `effdet` extra (BiFPN on EfficientNet), trained "
                     f"from scratch; image_size must be a multiple of 128. {EFFDET_HINT}.")
    register(variant, task="detection")(build)


_efficientdet("efficientdet_d0")
_efficientdet("efficientdet_d1")
