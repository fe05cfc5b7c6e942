"""torchvision detectors by name, with num_classes, input size and weights handled once.

Every builder takes the same keywords: `num_classes` (background included, label 0),
`image_size`, `pretrained` (COCO detector weights), `pretrained_backbone` (ImageNet
weights), plus model-specific extras. The models keep torchvision's contract: train mode
returns a dict of named losses, eval mode a list of {boxes, scores, labels}.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from visiondoctor.models.registry import register


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but could not be loaded (offline, or no such weights)."""


def _offline_hint(what: str, exc: Exception) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{what}: pretrained weights could not be loaded ({exc.__class__.__name__}: {exc}). "
        "Without internet access, put the weights file in the torch hub cache "
        "($TORCH_HOME/hub/checkpoints) or train from scratch with model.pretrained=false "
        "model.pretrained_backbone=false."
    )


def _build(fn: Callable[..., nn.Module], what: str, weights_enum: Any, pretrained: bool,
           backbone_enum: Any, pretrained_backbone: bool, **kwargs: Any) -> nn.Module:
    """Build with the requested class count; COCO detector weights are loaded for every tensor
    whose shape matches (the class-specific head layers are left freshly initialised)."""
    backbone_weights = backbone_enum.DEFAULT if (pretrained_backbone and not pretrained) else None
    try:
        model = fn(weights=None, weights_backbone=backbone_weights, **kwargs)
    except (OSError, RuntimeError) as exc:
        if backbone_weights is None:
            raise
        raise _offline_hint(what, exc) from exc
    if pretrained:
        try:
            state = weights_enum.DEFAULT.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as exc:
            raise _offline_hint(what, exc) from exc
        own = model.state_dict()
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matching, strict=False)
        model.pretrained_skipped = sorted(set(own) - set(matching))  # recorded for the run log
    return model


def _fixed_size_transform(model: nn.Module, image_size: int) -> None:
    """SSD builders fix the input at 300/320 px; make it configurable, keeping their normalisation."""
    old = model.transform
    model.transform = GeneralizedRCNNTransform(
        min_size=image_size,
        max_size=image_size,
        image_mean=old.image_mean,
        image_std=old.image_std,
        size_divisible=1,
        fixed_size=(image_size, image_size),
    )


@register("ssdlite320_mobilenet_v3_large", task="detection")
def ssdlite320_mobilenet_v3_large(
    num_classes: int,
    image_size: int = 320,
    pretrained: bool = False,
    pretrained_backbone: bool = False,
    anchor_min_ratio: float = 0.2,
    anchor_max_ratio: float = 0.95,
    score_thresh: float = 0.001,
    detections_per_img: int = 100,
) -> nn.Module:
    """SSDLite with a MobileNetV3-Large trunk. `anchor_min_ratio` sets the smallest default box
    as a fraction of the image; lower it for small objects (the doctor's anchors.coverage says when)."""
    model = _build(
        tvd.ssdlite320_mobilenet_v3_large,
        "ssdlite320_mobilenet_v3_large",
        tvd.SSDLite320_MobileNet_V3_Large_Weights, pretrained, tvd.ssdlite.MobileNet_V3_Large_Weights, pretrained_backbone,
        num_classes=num_classes,
        score_thresh=score_thresh,
        detections_per_img=detections_per_img,
    )
    if (anchor_min_ratio, anchor_max_ratio) != (0.2, 0.95):
        old = model.anchor_generator
        model.anchor_generator = DefaultBoxGenerator(old.aspect_ratios, min_ratio=anchor_min_ratio, max_ratio=anchor_max_ratio)
    _fixed_size_transform(model, image_size)
    return model


@register("ssd300_vgg16", task="detection")
def ssd300_vgg16(
    num_classes: int, image_size: int = 300, pretrained: bool = False, pretrained_backbone: bool = False,
    detections_per_img: int = 100,
) -> nn.Module:
    model = _build(
        tvd.ssd300_vgg16,
        "ssd300_vgg16",
        tvd.SSD300_VGG16_Weights, pretrained, tvd.ssd.VGG16_Weights, pretrained_backbone,
        num_classes=num_classes,
        detections_per_img=detections_per_img,
    )
    _fixed_size_transform(model, image_size)
    return model


def _rcnn_style(fn: Callable[..., nn.Module], name: str, weights_enum: Any, backbone_enum: Any) -> Callable[..., nn.Module]:
    """Builders of the GeneralizedRCNNTransform family take min/max size directly."""

    def build(
        num_classes: int, image_size: int = 512, pretrained: bool = False, pretrained_backbone: bool = False,
        detections_per_img: int = 100, **kwargs: Any,
    ) -> nn.Module:
        return _build(
            fn,
            name,
            weights_enum, pretrained, backbone_enum, pretrained_backbone,
            num_classes=num_classes,
            min_size=image_size,
            max_size=image_size,
            **{("box_detections_per_img" if "rcnn" in name else "detections_per_img"): detections_per_img},
            **kwargs,
        )

    build.__name__ = name
    build.__doc__ = f"torchvision {name}; images resized so the longer side is `image_size`."
    return register(name, task="detection")(build)


_rcnn_style(tvd.retinanet_resnet50_fpn_v2, "retinanet_resnet50_fpn_v2",
            tvd.RetinaNet_ResNet50_FPN_V2_Weights, tvd.retinanet.ResNet50_Weights)
_rcnn_style(tvd.retinanet_resnet50_fpn, "retinanet_resnet50_fpn",
            tvd.RetinaNet_ResNet50_FPN_Weights, tvd.retinanet.ResNet50_Weights)
_rcnn_style(tvd.fcos_resnet50_fpn, "fcos_resnet50_fpn", tvd.FCOS_ResNet50_FPN_Weights, tvd.fcos.ResNet50_Weights)
_rcnn_style(tvd.fasterrcnn_mobilenet_v3_large_fpn, "fasterrcnn_mobilenet_v3_large_fpn",
            tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights, tvd.faster_rcnn.MobileNet_V3_Large_Weights)
_rcnn_style(tvd.fasterrcnn_resnet50_fpn_v2, "fasterrcnn_resnet50_fpn_v2",
            tvd.FasterRCNN_ResNet50_FPN_V2_Weights, tvd.faster_rcnn.ResNet50_Weights)
