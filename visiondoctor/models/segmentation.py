"""Semantic-segmentation models by name: torchvision's, and a DeepLabV3+ on torchvision backbones.

Every builder takes `num_classes` and sets it on the main classifier AND on the auxiliary
classifier (the seed bug: an aux head left at 21 COCO/VOC outputs and never trained).
`aux_loss=True` (default where the architecture has one) keeps the aux head; the task's
loss adds `aux_weight x CE(aux)`. Models return {"out": logits, "aux": logits} at input
resolution (no "aux" without an aux head). Weights: none by default; `pretrained` loads
torchvision's COCO-with-VOC-labels weights for every tensor whose shape matches,
`pretrained_backbone` ImageNet backbone weights; offline, a clear message says what to do.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models import segmentation as tvs
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

# The lead's detection builders already solve "weights=None unless asked, shape-matched
# pretrained loading, clear offline message"; reuse them rather than write them twice.
from visiondoctor.models.detection import build_with_weights, offline_hint
from visiondoctor.models.registry import register


def _torchvision(fn: Callable[..., nn.Module], name: str, weights_enum: Any, backbone_enum: Any, has_aux: bool):
    def build(num_classes: int, aux_loss: bool = has_aux, pretrained: bool = False,
              pretrained_backbone: bool = False, image_size: int | None = None) -> nn.Module:
        # image_size is accepted for the common builder signature; these models are fully
        # convolutional and return logits at whatever size they are given.
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if has_aux:
            kwargs["aux_loss"] = aux_loss
        elif aux_loss:
            raise ValueError(f"{name} has no auxiliary classifier; use aux_loss=False")
        return build_with_weights(fn, name, weights_enum, pretrained, backbone_enum, pretrained_backbone, **kwargs)

    build.__name__ = name
    build.__doc__ = (f"torchvision {name}; num_classes on the classifier"
                     + (" and the auxiliary classifier." if has_aux else " (no auxiliary classifier)."))
    return register(name, task="segmentation", background_label=False)(build)


deeplabv3_resnet50 = _torchvision(tvs.deeplabv3_resnet50, "deeplabv3_resnet50", tvs.DeepLabV3_ResNet50_Weights,
                                  tvm.ResNet50_Weights, True)
deeplabv3_mobilenet_v3_large = _torchvision(
    tvs.deeplabv3_mobilenet_v3_large, "deeplabv3_mobilenet_v3_large", tvs.DeepLabV3_MobileNet_V3_Large_Weights,
    tvm.MobileNet_V3_Large_Weights, True)
fcn_resnet50 = _torchvision(tvs.fcn_resnet50, "fcn_resnet50", tvs.FCN_ResNet50_Weights, tvm.ResNet50_Weights, True)
lraspp_mobilenet_v3_large = _torchvision(
    tvs.lraspp_mobilenet_v3_large, "lraspp_mobilenet_v3_large", tvs.LRASPP_MobileNet_V3_Large_Weights,
    tvm.MobileNet_V3_Large_Weights, False)


# ----- DeepLabV3+ ---------------------------------------------------------------------------------

class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (Chen et al., 2018): ASPP on the deepest features, then a decoder that
    upsamples them to stride 4 and fuses low-level features there, which sharpens boundaries.
    The backbone returns {"low", "aux"?, "out"}; `aux_classifier` (an FCN head on the stride-8/16
    features) gives deep supervision during training."""

    def __init__(self, backbone: nn.Module, low_channels: int, high_channels: int, num_classes: int,
                 aux_channels: int | None = None, atrous_rates: tuple[int, int, int] = (6, 12, 18),
                 decoder_channels: int = 256, low_projection: int = 48):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(high_channels, list(atrous_rates), decoder_channels)
        self.low_proj = nn.Sequential(nn.Conv2d(low_channels, low_projection, 1, bias=False),
                                      nn.BatchNorm2d(low_projection), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.Conv2d(decoder_channels + low_projection, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels), nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.aux_classifier = FCNHead(aux_channels, num_classes) if aux_channels else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        low = self.low_proj(feats["low"])
        high = F.interpolate(self.aspp(feats["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        result = OrderedDict(out=F.interpolate(logits, size=size, mode="bilinear", align_corners=False))
        if self.aux_classifier is not None and "aux" in feats:
            aux = self.aux_classifier(feats["aux"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result


def _backbone(name: str, pretrained_backbone: bool, aux: bool) -> tuple[nn.Module, int, int, int | None, tuple]:
    """(feature getter, low-level channels, deep channels, aux channels, atrous rates)."""
    if name.startswith("resnet"):
        deep = name in ("resnet50", "resnet101")  # Bottleneck ResNets can dilate their last stage (stride 16)
        weights = tvm.get_model_weights(name).DEFAULT if pretrained_backbone else None
        try:
            net = tvm.get_model(name, weights=weights,
                                replace_stride_with_dilation=[False, False, True] if deep else None)
        except (OSError, RuntimeError) as exc:
            if weights is None:
                raise
            raise offline_hint(f"deeplabv3plus_{name}", exc) from exc
        layers = {"layer1": "low", "layer4": "out"}
        if aux:
            layers["layer3"] = "aux"
        ch = {"resnet18": (64, 256, 512), "resnet34": (64, 256, 512), "resnet50": (256, 1024, 2048),
              "resnet101": (256, 1024, 2048)}[name]
        # BasicBlock ResNets stay at stride 32, so the ASPP rates are halved (as for output stride 32).
        rates = (6, 12, 18) if deep else (3, 6, 9)
        return IntermediateLayerGetter(net, layers), ch[0], ch[2], ch[1] if aux else None, rates
    if name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        weights = tvm.get_model_weights(name).DEFAULT if pretrained_backbone else None
        try:
            features = tvm.get_model(name, weights=weights, dilated=True).features
        except (OSError, RuntimeError) as exc:
            if weights is None:
                raise
            raise offline_hint(f"deeplabv3plus_{name}", exc) from exc
        # Stage starts (strided blocks) as torchvision's DeepLabV3 finds them: ..., C1 (stride 4), C2 (8), C3 (16), last.
        stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
        low, aux_pos, out = stages[-5], stages[-4], stages[-1]
        layers = {str(low): "low", str(out): "out"}
        if aux:
            layers[str(aux_pos)] = "aux"
        return (IntermediateLayerGetter(features, layers), features[low].out_channels, features[out].out_channels,
                features[aux_pos].out_channels if aux else None, (6, 12, 18))
    raise ValueError(f"deeplabv3plus: unknown backbone {name!r}; use resnet18/34/50/101 or mobilenet_v3_large/small")


def deeplabv3plus(num_classes: int, backbone: str = "resnet50", aux_loss: bool = True, pretrained: bool = False,
                  pretrained_backbone: bool = False, image_size: int | None = None,
                  decoder_channels: int = 256) -> DeepLabV3Plus:
    """DeepLabV3+ on a torchvision backbone. There are no published whole-model weights for it in
    torchvision, so `pretrained` means the ImageNet backbone. `decoder_channels` (ASPP and decoder
    width; 256 in the paper) trades accuracy for speed."""
    getter, low_ch, high_ch, aux_ch, rates = _backbone(backbone, pretrained or pretrained_backbone, aux_loss)
    model = DeepLabV3Plus(getter, low_ch, high_ch, num_classes, aux_ch, rates, decoder_channels,
                          low_projection=min(48, decoder_channels))
    if pretrained or pretrained_backbone:
        model.weights_source = f"torchvision {tvm.get_model_weights(backbone).DEFAULT} (backbone)"
    return model


def _plus(backbone: str, suffix: str = "", decoder_channels: int = 256) -> Callable[..., nn.Module]:
    def build(num_classes: int, aux_loss: bool = True, pretrained: bool = False, pretrained_backbone: bool = False,
              image_size: int | None = None, decoder_channels: int = decoder_channels) -> nn.Module:
        return deeplabv3plus(num_classes, backbone, aux_loss, pretrained, pretrained_backbone, image_size,
                             decoder_channels)

    name = f"deeplabv3plus_{backbone}{suffix}"
    build.__name__ = name
    build.__doc__ = (f"DeepLabV3+ on torchvision {backbone} ({decoder_channels}-channel ASPP and decoder), "
                     "with an FCN auxiliary head unless aux_loss=False.")
    return register(name, task="segmentation", background_label=False)(build)


deeplabv3plus_resnet50 = _plus("resnet50")
deeplabv3plus_resnet18 = _plus("resnet18")
deeplabv3plus_mobilenet_v3_large = _plus("mobilenet_v3_large")
deeplabv3plus_mobilenet_v3_small = _plus("mobilenet_v3_small")
# small and fast: CPU tests, the demo and benchmarks
deeplabv3plus_resnet18_lite = _plus("resnet18", "_lite", decoder_channels=64)


def head_output_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of the last conv of every classifier head ("classifier", "aux_classifier")."""
    found = {}
    for attr in ("classifier", "aux_classifier"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            found[attr] = convs[-1].out_channels
    return found
