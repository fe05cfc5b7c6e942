"""A dense detector that finds what a text query names.

    image -> ResNet-18 (layer3 fused top-down into layer2, stride 8) -> features F (B, C, H, W)
    query -> sentence embedding t (384-d, encoder.py) -> projections

Per query and location:
- similarity (the CAM): s = scale * cos(embed(F), proj(t)) + bias, a logit;
- box: distances (left, top, right, bottom) from the location centre, exp-parametrised in
  strides (FCOS), from a box tower conditioned on the query (FiLM: F * (1 + gamma(t)) + beta(t));
- quality: a logit predicting the IoU of that box with the object (IoU-aware branch).

The detection score is a stated function of these (`score_fn`):
- consistent: score = sigmoid(s) ** (1 - a) * sigmoid(quality) ** a   (a = quality_weight, 0.5);
- seed:       score = sigmoid(s)   (the seed's CAM confidence; quality neither trained nor used);
- iou_aware:  score = sigmoid(s), with s itself trained to the IoU of its box at positives and 0
              elsewhere (quality focal loss; one score, no separate quality branch).
All emit a box from every location above the score threshold; they differ in whether that
score knows anything about the box. iou_aware is the default (measured best, docs/text_query.md).

torchvision's contract: train mode returns a dict of named losses (so the project's Trainer
trains it), eval mode a list of {boxes, scores, labels, locations} per image, where labels
are query indices and `locations` the flat feature-map index each box came from (for the
positives-versus-rest analysis). Without `query_embeddings` the model answers the queries it
was trained with (its class names, kept in the `class_embeddings` buffer).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import batched_nms, clip_boxes_to_image

from visiondoctor.models.detection import no_detector_weights, offline_hint
from visiondoctor.models.registry import register
from visiondoctor.models.text_query.assign import location_centres
from visiondoctor.models.text_query.encoder import EMBED_DIM, EmbeddingCache
from visiondoctor.models.text_query.loss import LossConfig, text_query_losses

#: The loss settings each scoring needs (LossConfig fields); other fields come from `loss`.
#: The default: the one scoring measured better than the seed's on both mAP and score-IoU rank
#: correlation (benchmarks/text_query.py; the separate quality branch was not, see docs/text_query.md).
DEFAULT_SCORING = "iou_aware"
SCORING_LOSS = {"consistent": {"train_quality": True, "cls_target": "binary"},
                "seed": {"train_quality": False, "cls_target": "binary"},
                "iou_aware": {"train_quality": False, "cls_target": "iou"}}
SCORINGS = tuple(SCORING_LOSS)
MODEL_NAME = "text_query_dense"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def score_fn(sim_logits: torch.Tensor, quality_logits: torch.Tensor, scoring: str, quality_weight: float) -> torch.Tensor:
    """The detection score of each (query, location); see the module docstring."""
    if scoring in ("seed", "iou_aware"):
        return sim_logits.sigmoid()
    a = quality_weight
    return sim_logits.sigmoid().pow(1.0 - a) * quality_logits.sigmoid().pow(a)


class ResNetTrunk(nn.Module):
    """ResNet-18 to layer3 (random init unless `pretrained_backbone`), layer3 fused top-down into
    layer2: one stride-8 map with stride-16 context. (torchvision's FPN would also compute a
    stride-16 output this head never reads; at 128 px layer4 would be 4x4, so it is dropped.)"""
    stride = 8

    def __init__(self, channels: int, pretrained_backbone: bool = False):
        super().__init__()
        weights = None
        if pretrained_backbone:
            weights = ResNet18_Weights.DEFAULT
        try:
            trunk = resnet18(weights=weights)
        except (OSError, RuntimeError) as exc:  # offline, or a broken cached file
            raise offline_hint(f"{MODEL_NAME} (resnet18 backbone)", exc) from exc
        self.body = create_feature_extractor(trunk, {"layer2": "c3", "layer3": "c4"})
        self.lateral3 = nn.Conv2d(128, channels, 1)
        self.lateral4 = nn.Conv2d(256, channels, 1)
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        top = F.interpolate(self.lateral4(f["c4"]), size=f["c3"].shape[-2:], mode="nearest")
        return self.smooth(self.lateral3(f["c3"]) + top)


def _tower(channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(16, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class TextQueryDetector(nn.Module):
    def __init__(self, class_embeddings: torch.Tensor, scoring: str = DEFAULT_SCORING, quality_weight: float = 0.5,
                 channels: int = 64, embed_dim: int = 64, pretrained_backbone: bool = False,
                 score_threshold: float = 0.05, nms_iou: float = 0.5, max_detections: int = 100,
                 pre_nms_top_k: int = 1000, loss: LossConfig | None = None):
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"scoring={scoring!r}: expected one of {', '.join(SCORINGS)}")
        if not 0.0 <= quality_weight <= 1.0:
            raise ValueError(f"quality_weight={quality_weight}: expected a number in [0, 1]")
        self.scoring, self.quality_weight = scoring, float(quality_weight)
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.max_detections, self.pre_nms_top_k = max_detections, pre_nms_top_k
        self.loss_cfg = loss or LossConfig(**SCORING_LOSS[scoring])
        self.register_buffer("class_embeddings", class_embeddings.float().clone())
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.backbone = ResNetTrunk(channels, pretrained_backbone)
        self.stride = self.backbone.stride
        text_dim = class_embeddings.shape[1]
        self.text_proj = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.ReLU(inplace=True), nn.Linear(embed_dim, embed_dim))
        self.image_embed = nn.Sequential(_tower(channels, 1), nn.Conv2d(channels, embed_dim, 1))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        prior = 0.01  # the focal-loss prior (RetinaNet): start every location at a low score
        self.logit_bias = nn.Parameter(torch.tensor(-math.log((1 - prior) / prior)))
        self.box_tower = _tower(channels, 2)
        self.film = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.box_out = nn.Conv2d(channels, 5, 1)  # ltrb (4) + quality (1)
        nn.init.normal_(self.box_out.weight, std=0.01)
        nn.init.constant_(self.box_out.bias, 0.0)
        with torch.no_grad():
            self.box_out.bias[:4] = math.log(2.0)  # start at a 4-stride-wide box
            self.box_out.bias[4] = -math.log((1 - prior) / prior)  # and at a low quality (most boxes miss)

    # ----- forward ------------------------------------------------------------------------------
    def batch_images(self, images: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise and pad (bottom/right, zeros after normalisation) to a multiple of 16."""
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        align = 2 * self.stride
        height = math.ceil(max(h for h, _ in sizes) / align) * align
        width = math.ceil(max(w for _, w in sizes) / align) * align
        batch = self.pixel_mean.new_zeros(len(sizes), 3, height, width)
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i}: expected a (3, H, W) float tensor in [0, 1], got shape {tuple(im.shape)}")
            batch[i, :, : im.shape[-2], : im.shape[-1]] = (im.to(batch) - self.pixel_mean[0]) / self.pixel_std[0]
        return batch, sizes

    def head(self, features: torch.Tensor, query_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c, h, w = features.shape
        q = query_embeddings.shape[0]
        text = self.text_proj(query_embeddings.to(features.dtype))  # (Q, E)
        image = self.image_embed(features)  # (B, E, H, W)
        sim = torch.einsum("behw,qe->bqhw", F.normalize(image, dim=1), F.normalize(text, dim=1))
        sim_logits = sim * self.logit_scale.exp().clamp(max=100.0) + self.logit_bias
        tower = self.box_tower(features)  # (B, C, H, W)
        gamma, beta = self.film(text).chunk(2, dim=1)  # (Q, C) each
        conditioned = F.relu(tower[:, None] * (1 + gamma[None, :, :, None, None]) + beta[None, :, :, None, None])
        # float32 from here on: boxes, IoUs and the losses are not for half precision (autocast on GPU)
        raw = self.box_out(conditioned.reshape(b * q, c, h, w)).reshape(b, q, 5, h * w).float()
        distances = raw[:, :, :4].clamp(max=8.0).exp() * self.stride  # (B, Q, 4, HW) pixels
        centres = location_centres(h, w, self.stride, features.device)  # (HW, 2)
        xy = centres.t()[None, None]  # (1, 1, 2, HW)
        boxes = torch.cat([xy - distances[:, :, :2], xy + distances[:, :, 2:]], dim=2).permute(0, 1, 3, 2)
        return {"sim_logits": sim_logits.reshape(b, q, h * w).float(), "boxes": boxes,
                "quality_logits": raw[:, :, 4], "centres": centres, "grid": (h, w)}

    def forward(self, images: Sequence[torch.Tensor] | torch.Tensor, targets: list[dict] | None = None,
                query_embeddings: torch.Tensor | None = None) -> Any:
        batch, sizes = self.batch_images(images)
        queries = self.class_embeddings if query_embeddings is None else query_embeddings
        out = self.head(self.backbone(batch), queries)
        if self.training:
            if targets is None:
                raise ValueError(f"{MODEL_NAME}: targets are required in train mode")
            if query_embeddings is None and not bool(self.class_embeddings.abs().sum() > 0):
                raise ValueError(f"{MODEL_NAME} was built without class_names, so it has no queries to learn; "
                                 "train it with visiondoctor.text_query.task.train_text_query")
            return text_query_losses(out, targets, out["centres"], out["grid"], tuple(batch.shape[-2:]), self.loss_cfg)
        return self.postprocess(out, sizes)

    # ----- inference ----------------------------------------------------------------------------
    def scores(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return score_fn(out["sim_logits"], out["quality_logits"], self.scoring, self.quality_weight)

    def postprocess(self, out: dict[str, torch.Tensor], sizes: list[tuple[int, int]],
                    max_detections: int | None = None, per_query: bool = False) -> list[dict[str, torch.Tensor]]:
        """Every (query, location) scoring above the threshold is a candidate (as in the seed);
        then per-query NMS and the top `max_detections` per image (per query with `per_query`,
        so queries evaluated together do not crowd each other out)."""
        limit = self.max_detections if max_detections is None else max_detections
        scores = self.scores(out)  # (B, Q, HW)
        num_locations = scores.shape[2]
        results = []
        for b, size in enumerate(sizes):
            flat = scores[b].reshape(-1)
            keep = torch.nonzero(flat > self.score_threshold).squeeze(1)
            top_k = self.pre_nms_top_k * (scores.shape[1] if per_query else 1)
            if len(keep) > top_k:
                keep = keep[flat[keep].topk(top_k).indices]
            labels, locations = keep // num_locations, keep % num_locations
            boxes = clip_boxes_to_image(out["boxes"][b, labels, locations], size)
            kept = batched_nms(boxes, flat[keep], labels, self.nms_iou)  # sorted by score
            if per_query:
                rank = torch.zeros_like(kept)
                for label in labels[kept].unique():
                    mine = labels[kept] == label
                    rank[mine] = torch.arange(int(mine.sum()), device=kept.device)
                kept = kept[rank < limit]
            else:
                kept = kept[:limit]
            results.append({"boxes": boxes[kept], "scores": flat[keep][kept], "labels": labels[kept],
                            "locations": locations[kept]})
        return results


@register(MODEL_NAME, task="text_query", background_label=False)
def text_query_dense(num_classes: int, class_names: Sequence[str] | None = None, encoder: str = "auto",
                     embedding_cache: str | None = None, scoring: str = DEFAULT_SCORING, quality_weight: float = 0.5,
                     image_size: int = 0, pretrained: bool = False, pretrained_backbone: bool = False,
                     loss: dict | None = None, **kwargs: Any) -> TextQueryDetector:
    """The text-query dense detector. `class_names` (the training queries, in label order) are
    embedded with `encoder` (auto | minilm | hashed), cached in `embedding_cache` when given;
    without names the class embeddings are zeros until a checkpoint is loaded.
    `image_size` is unused (the model is fully convolutional and never resizes)."""
    if pretrained:  # WeightsUnavailable: the run falls back to the backbone's ImageNet weights
        raise no_detector_weights(MODEL_NAME)
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{MODEL_NAME}: {len(class_names)} class names for {num_classes} classes")

        embeddings = EmbeddingCache(encoder, embedding_cache).embed(list(class_names))
    else:
        embeddings = torch.zeros(num_classes, EMBED_DIM)
    if scoring not in SCORING_LOSS:
        raise ValueError(f"scoring={scoring!r}: expected one of {', '.join(SCORING_LOSS)}")
    loss_cfg = LossConfig(**{**(loss or {}), **SCORING_LOSS[scoring]})
    return TextQueryDetector(embeddings, scoring=scoring, quality_weight=quality_weight,
                             pretrained_backbone=pretrained_backbone, loss=loss_cfg, **kwargs)
