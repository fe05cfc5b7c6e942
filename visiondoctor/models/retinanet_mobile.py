"""RetinaNet on a MobileNetV3-Large FPN: a one-stage anchor detector light enough to train on a CPU.

torchvision ships RetinaNet only on ResNet-50 (about 10x the compute); its MobileNetV3-Large FPN
backbone (the one of fasterrcnn_mobilenet_v3_large_fpn) carries RetinaNet's head as well. Three
pyramid levels at strides 16, 32 and 64, three scales per octave and three aspect ratios, as RetinaNet.
No COCO detector weights exist for this pairing: `pretrained` is refused (the run falls back to the
ImageNet backbone).
"""
from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from visiondoctor.models.detection import build_with_weights, no_detector_weights
from visiondoctor.models.registry import register

NAME = "retinanet_mobilenet_v3_large_fpn"


def _retinanet_mobilenet(*, weights: Any = None, weights_backbone: Any = None, num_classes: int,
                         smallest_anchor: int = 32, **kwargs: Any) -> nn.Module:
    """torchvision's builders' signature (weights, weights_backbone, num_classes), so build_with_weights loads
    the backbone's ImageNet weights or says how to get them offline. Frozen BatchNorm only over trained weights:
    frozen random statistics would never move."""
    trained = weights_backbone is not None
    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=weights_backbone, fpn=True,
                                  norm_layer=FrozenBatchNorm2d if trained else nn.BatchNorm2d,
                                  trainable_layers=6 if not trained else 3,
                                  returned_layers=[3, 5])  # stride 16 and the last stride-32 block (+ pool: 64)
    octave = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    sizes = tuple(tuple(round(smallest_anchor * 2**level * s) for s in octave) for level in range(3))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(backbone, num_classes, anchor_generator=anchors, **kwargs)


@register(NAME, task="detection")
def retinanet_mobilenet_v3_large_fpn(num_classes: int, image_size: int = 512, pretrained: bool = False,
                                     pretrained_backbone: bool = False, detections_per_img: int = 100,
                                     smallest_anchor: int = 32, **kwargs: Any) -> nn.Module:
    """RetinaNet, MobileNetV3-Large FPN; images resized so the longer side is `image_size`. `smallest_anchor`:
    the side in pixels of the finest level's smallest anchor (lower it for small objects)."""
    if pretrained:
        raise no_detector_weights(NAME)
    return build_with_weights(_retinanet_mobilenet, NAME, None, False, MobileNet_V3_Large_Weights,
                              pretrained_backbone, num_classes=num_classes, min_size=image_size, max_size=image_size,
                              detections_per_img=detections_per_img, smallest_anchor=smallest_anchor, **kwargs)
