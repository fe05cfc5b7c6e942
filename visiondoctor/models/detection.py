"""torchvision detectors by name, with num_classes, input size and weights handled once.

Every builder takes the same keywords: `num_classes` (background included, label 0),
`image_size`, `pretrained` (COCO detector weights), `pretrained_backbone` (ImageNet
weights), plus model-specific extras. The models keep torchvision's contract: train mode
returns a dict of named losses, eval mode a list of {boxes, scores, labels}.

A builder asked for weights it cannot load raises WeightsUnavailable (`missing`: no such weights
exist for the architecture; otherwise they exist but could not be read, e.g. offline). What a run
asks for is "the best weights that exist": `resolve_weights` tries the whole model's, then the
backbone's, then none, and says in one log line what it fell back to; `load_weights_file` loads a
local file, tensors only, checked against the model's names and shapes.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small
from torchvision.models import detection as tvd
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from visiondoctor.models.registry import register

log = logging.getLogger(__name__)

SSDLITE_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's SSDLite batch norm


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but could not be loaded: `missing` when none exist for the
    architecture, otherwise they exist but could not be read (offline, no cached file); `reason` in short."""

    def __init__(self, message: str, *, missing: bool = False, reason: str = "") -> None:
        super().__init__(message)
        self.missing = missing
        self.reason = reason or message


def no_detector_weights(name: str) -> WeightsUnavailable:
    return WeightsUnavailable(f"{name}: no COCO-pretrained detector weights exist for this architecture; "
                              "use model.pretrained=false (and model.pretrained_backbone=true for ImageNet weights)",
                              missing=True, reason=f"no pretrained weights exist for {name}")


def offline_hint(what: str, exc: Exception) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{what}: pretrained weights could not be loaded ({exc.__class__.__name__}: {exc}). "
        "Without internet access, put the weights file in the torch hub cache "
        "($TORCH_HOME/hub/checkpoints) or train from scratch with model.pretrained=false "
        "model.pretrained_backbone=false.",
        reason=f"download failed ({exc.__class__.__name__}: {exc})",
    )


def build_with_weights(fn: Callable[..., nn.Module], what: str, weights_enum: Any, pretrained: bool,
           backbone_enum: Any, pretrained_backbone: bool, **kwargs: Any) -> nn.Module:
    """Build with the requested class count; COCO detector weights are loaded for every tensor
    whose shape matches (the class-specific head layers are left freshly initialised)."""
    backbone_weights = backbone_enum.DEFAULT if (pretrained_backbone and not pretrained) else None
    try:
        model = fn(weights=None, weights_backbone=backbone_weights, **kwargs)
    except (OSError, RuntimeError) as exc:
        if backbone_weights is None:
            raise
        raise offline_hint(what, exc) from exc
    if backbone_weights is not None:
        model.weights_source = f"torchvision {backbone_weights} (backbone)"
    if pretrained:
        try:
            state = weights_enum.DEFAULT.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as exc:
            raise offline_hint(what, exc) from exc
        own = model.state_dict()
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matching, strict=False)
        model.pretrained_skipped = sorted(set(own) - set(matching))  # recorded for the run log
        model.weights_source = f"torchvision {weights_enum.DEFAULT}"
    return model


def resolve_weights(build: Callable[[bool, bool], nn.Module], what: str, pretrained: bool,
                    pretrained_backbone: bool) -> tuple[nn.Module, dict[str, Any]]:
    """`build(pretrained, pretrained_backbone)` with the best weights that can be had: the whole model's (when
    `pretrained`), else the backbone's (when `pretrained_backbone`), else none. A fallback is said in ONE log
    line. Failed attempts leave the random state as it was (a fallback to no weights builds the same model as
    asking for none) and print nothing (torch.hub's download message is swallowed). Returns the model and what
    weights.json records."""
    requested = {"pretrained": pretrained, "pretrained_backbone": pretrained_backbone}
    attempts = [(p, b) for p, b in ((pretrained, pretrained_backbone), (False, pretrained_backbone)) if p or b]
    reasons: list[str] = []
    for p, b in dict.fromkeys(attempts):
        try:
            with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
                model = build(p, b)
        except WeightsUnavailable as exc:
            reasons.append(f"{'whole-model' if p else 'backbone'} weights: {exc.reason}")
            continue
        used = "pretrained" if p else "pretrained_backbone"
        source = next((m.weights_source for m in model.modules() if hasattr(m, "weights_source")),
                      f"{what}'s own {'weights' if p else 'backbone weights'}")
        if reasons:
            log.info("%s: %s; using %s", what, "; ".join(reasons), source)
        return model, {"used": used, "source": source, "requested": requested, "fallback": reasons,
                       "not_loaded": list(getattr(model, "pretrained_skipped", []))}
    model = build(False, False)
    if reasons:
        log.warning("%s: no pretrained weights could be loaded (%s): training from scratch. Offline, put the "
                    "weights file in $TORCH_HOME/hub/checkpoints or set model.pretrained=false "
                    "model.pretrained_backbone=false", what, "; ".join(reasons))
    why = "; ".join(reasons) if reasons else "none asked for (model.pretrained=false, model.pretrained_backbone=false)"
    return model, {"used": "none", "source": f"random initialisation ({why})", "requested": requested,
                   "fallback": reasons, "not_loaded": []}


def load_weights_file(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a local weights file into `model`, tensors only (weights_only=True; a .safetensors file through
    safetensors). A plain state dict or a visiondoctor checkpoint ({"model": state dict}); every tensor in it must
    name a tensor of the model of the same shape (else ValueError naming the file and the first mismatches).
    Model tensors the file lacks keep their initialisation and are recorded. Returns what weights.json records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: {path}: no such file")
    state = _read_state_dict(path)
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if unknown or wrong:
        raise ValueError(
            f"model.weights: {path} does not fit this model: {len(unknown)} tensor(s) the model does not have"
            + (f" (e.g. {', '.join(unknown[:3])})" if unknown else "") + f", {len(wrong)} of another shape"
            + (f" (e.g. {', '.join(wrong[:3])})" if wrong else "")
            + "; give weights saved from the same model.name, model.kwargs and number of classes")
    model.load_state_dict(state, strict=False)
    missing = [k for k in own if k not in state]
    return {"used": "file", "source": str(path.resolve()), "requested": {"weights": str(path)}, "fallback": [],
            "tensors_loaded": len(state), "not_loaded": missing}


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # deferred: safetensors is an optional extra
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as exc:
        raise ValueError(f"model.weights: {path}: reading .safetensors needs the safetensors package ({exc})") from exc
    except Exception as exc:  # torch raises several types for archives that are corrupt or hold pickled objects
        raise ValueError(f"model.weights: {path}: cannot be read as tensors ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a visiondoctor checkpoint
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"model.weights: {path}: expected a state dict (tensor name -> tensor) or a visiondoctor "
                         "checkpoint holding one")
    return state


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


def _ssdlite_mobilenet_v3_small(*, weights_backbone: Any = None, num_classes: int, **kwargs: Any) -> nn.Module:
    """SSDLite on MobileNetV3-Small, assembled from torchvision's SSDLite parts exactly as its
    MobileNetV3-Large builder does (torchvision ships no Small variant; same signature, so `build_with_weights`
    handles it)."""
    norm_layer = SSDLITE_NORM
    trunk = mobilenet_v3_small(weights=weights_backbone, norm_layer=norm_layer, reduced_tail=weights_backbone is None)
    if weights_backbone is None:
        _normal_init(trunk)  # torchvision's from-scratch initialisation for SSDLite trunks
    backbone = _mobilenet_extractor(trunk, 6, norm_layer)
    size = (320, 320)
    anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(backbone, size)
    head = SSDLiteHead(out_channels, anchor_generator.num_anchors_per_location(), num_classes, norm_layer)
    defaults = {"nms_thresh": 0.55, "topk_candidates": 300, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    kwargs.pop("weights", None)  # no COCO detector weights exist for it: refused by the registered builder
    return SSD(backbone, anchor_generator, size, num_classes, head=head, **{**defaults, **kwargs})


class Stride8SSDLiteExtractor(nn.Module):
    """SSDLite's MobileNetV3 feature extractor with one more level in front, at stride 8.

    torchvision's SSDLite predicts from stride 16 up; at 320 px its smallest default boxes sit on a
    20x20 grid, so objects under ~32 px reach no box at IoU 0.5 and get one forced match at most.
    The stride-8 level is taken the way SSDLite takes its stride-16 one (MobileNetV3 paper, section
    6.3): from the expansion layer of the first block of the next stage. Every other level, and its
    default boxes, stay as they were.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        to_c4 = list(extractor.features[0])  # trunk[:c4] + trunk[c4].block[0] (torchvision's layout)
        c3 = max(i for i, block in enumerate(to_c4[:-1]) if getattr(block, "_is_cn", False))
        if to_c4[c3].use_res_connect:
            raise ValueError("the first stride-16 block has a residual connection: no expansion layer to tap")
        self.features = nn.Sequential(
            nn.Sequential(*to_c4[:c3], to_c4[c3].block[0]),
            nn.Sequential(to_c4[c3].block[1:], *to_c4[c3 + 1:]),
            extractor.features[1],
        )
        self.extra = extractor.extra

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = []
        for block in self.features:  # two loops, as torchvision's extractor has them: TorchScript iterates
            x = block(x)             # a module container, not a list built from two
            outputs.append(x)
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return OrderedDict([(str(i), v) for i, v in enumerate(outputs)])


def _with_stride8_level(model: nn.Module, norm_layer: Callable[..., nn.Module]) -> None:
    """Swap in the stride-8 extractor. Its default boxes are one octave below the old finest ones
    (stride halved, scale halved); the head is rebuilt for the new level (freshly initialised)."""
    old = model.anchor_generator
    model.anchor_generator = DefaultBoxGenerator([old.aspect_ratios[0], *old.aspect_ratios],
                                                 scales=[old.scales[0] / 2, *old.scales])
    model.backbone = Stride8SSDLiteExtractor(model.backbone)
    channels = det_utils.retrieve_out_channels(model.backbone, (320, 320))
    num_classes = model.head.classification_head.num_columns
    model.head = SSDLiteHead(channels, model.anchor_generator.num_anchors_per_location(), num_classes, norm_layer)


def _ssdlite_style(builder: Callable[..., nn.Module], name: str, weights_enum: Any, backbone_enum: Any,
                   doc: str) -> Callable[..., nn.Module]:
    """A registered SSDLite builder with the input size and the default boxes' span
    ([anchor_min_ratio, anchor_max_ratio] of the image) made configurable."""

    def build(
        num_classes: int, image_size: int = 320, pretrained: bool = False, pretrained_backbone: bool = False,
        anchor_min_ratio: float = 0.2, anchor_max_ratio: float = 0.95, score_thresh: float = 0.001,
        detections_per_img: int = 100, finest_stride: int = 16,
    ) -> nn.Module:
        if pretrained and weights_enum is None:
            raise no_detector_weights(name)
        if finest_stride not in (8, 16):
            raise ValueError(f"{name}: finest_stride must be 8 or 16, got {finest_stride}")
        model = build_with_weights(builder, name, weights_enum, pretrained, backbone_enum, pretrained_backbone,
                                   num_classes=num_classes, score_thresh=score_thresh,
                                   detections_per_img=detections_per_img)
        if (anchor_min_ratio, anchor_max_ratio) != (0.2, 0.95):
            old = model.anchor_generator
            model.anchor_generator = DefaultBoxGenerator(old.aspect_ratios, min_ratio=anchor_min_ratio,
                                                         max_ratio=anchor_max_ratio)
        if finest_stride == 8:
            _with_stride8_level(model, SSDLITE_NORM)
        _fixed_size_transform(model, image_size)
        return model

    build.__name__, build.__doc__ = name, doc
    return register(name, task="detection")(build)


ssdlite320_mobilenet_v3_large = _ssdlite_style(
    tvd.ssdlite320_mobilenet_v3_large, "ssdlite320_mobilenet_v3_large", tvd.SSDLite320_MobileNet_V3_Large_Weights,
    tvd.ssdlite.MobileNet_V3_Large_Weights,
    "SSDLite with a MobileNetV3-Large trunk. `anchor_min_ratio` sets the smallest default box as a "
    "fraction of the image; lower it, or add a stride-8 level with `finest_stride=8`, for small objects "
    "(the doctor's anchors.coverage says when).")
ssdlite_mobilenet_v3_small = _ssdlite_style(
    _ssdlite_mobilenet_v3_small, "ssdlite_mobilenet_v3_small", None, MobileNet_V3_Small_Weights,
    "SSDLite with a MobileNetV3-Small trunk: about a third of the Large variant's training cost per image "
    "on CPU, which buys more passes over the data in a short CPU budget (the demo's model, with "
    "`finest_stride=8`).")


@register("ssd300_vgg16", task="detection")
def ssd300_vgg16(
    num_classes: int, image_size: int = 300, pretrained: bool = False, pretrained_backbone: bool = False,
    detections_per_img: int = 100,
) -> nn.Module:
    model = build_with_weights(
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
        return build_with_weights(
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
