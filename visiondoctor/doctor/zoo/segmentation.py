"""Segmentation cases of the zoo: the unused 21-class auxiliary head (seed 001) and heavy overfitting (seed 003)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from visiondoctor.doctor.api import Doctor
from visiondoctor.doctor.checks.evaluation import check_generalization_gap
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.model_io import ModelIO
from visiondoctor.doctor.training import train_briefly
from visiondoctor.doctor.zoo.case import ZooCase, register
from visiondoctor.doctor.zoo.common import (
    ListDataset,
    TinyBackbone,
    masks_from_squares,
    squares,
)

IGNORE = 255


class _AuxOutBackbone(nn.Module):
    """TinyBackbone's stride-8 / stride-16 maps as {"aux", "out"}, the keys torchvision's DeepLabV3 reads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyBackbone(stages=4, outputs=(3, 4))

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return OrderedDict([("aux", feats["0"]), ("out", feats["1"])])


def tiny_deeplabv3(num_classes: int, aux_classes: int | None = None) -> nn.Module:
    """torchvision's DeepLabV3 (ASPP head + FCN auxiliary head) on a tiny backbone."""
    return DeepLabV3(_AuxOutBackbone(), DeepLabHead(32, num_classes), FCNHead(32, aux_classes or num_classes))


def main_output_only_loss(outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """The seed's training loop: cross-entropy on output['out'] only."""
    return F.cross_entropy(outputs["out"], masks, ignore_index=IGNORE)


def _aux_head(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    classes = 3
    pairs = masks_from_squares(squares(4, size=64, seed=7))
    images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    if healthy:  # both heads sized for the data; loss = out + 0.4 aux (the doctor's default segmentation loss)
        model, loss_fn = tiny_deeplabv3(classes), None
    else:  # only classifier[-1] replaced; aux_classifier left at 21 (VOC) outputs; loss on 'out' only
        model, loss_fn = tiny_deeplabv3(classes, aux_classes=21), main_output_only_loss
    doc = Doctor(model, task="segmentation", num_classes=classes, loss_fn=loss_fn)
    try:
        return doc.static_checks(images, masks)
    finally:
        doc.close()


register(ZooCase(
    "aux-head-21", "001",
    "DeepLabV3 whose aux_classifier keeps 21 outputs and whose loss uses output['out'] only",
    "both classifiers with the data's 3 classes; loss = CE(out) + 0.4 CE(aux)",
    "head.num-classes-mismatch", _aux_head))


class TinyFCN(nn.Module):
    """A stride-8 fully convolutional segmenter: TinyBackbone + 1x1 classifier, upsampled to the input."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = TinyBackbone(stages=3, outputs=(3,))
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone((x - 0.5) / 0.25)["0"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _object_masks(items: list, shuffle_labels_seed: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Masks of the squares only (background ignored); optionally with each square's class drawn at random,
    which no model can learn from the image and every model can memorise."""
    if shuffle_labels_seed is not None:
        g = torch.Generator().manual_seed(shuffle_labels_seed)
        items = [(im, {**t, "labels": torch.randint(1, 3, t["labels"].shape, generator=g)}) for im, t in items]
    return [(im, torch.where(m == 0, torch.full_like(m, IGNORE), m)) for im, m in masks_from_squares(items)]


def _overfitting(healthy: bool, steps: int = 160) -> list[Finding]:
    torch.manual_seed(0)
    kw = dict(size=32, min_side=6, max_side=14)
    if healthy:  # 32 images whose class is the square's colour
        train, val = _object_masks(squares(32, seed=10, **kw)), _object_masks(squares(16, seed=11, **kw))
    else:  # 8 images whose labels carry nothing to generalise: memorised, never learned
        train, val = _object_masks(squares(8, seed=10, **kw), 1), _object_masks(squares(16, seed=11, **kw), 2)
    trainer, _ = train_briefly(TinyFCN(), ListDataset(train), ModelIO("segmentation"), steps=steps, batch_size=4, lr=3e-3,
                               val_set=ListDataset(val))
    return check_generalization_gap(trainer.history)


register(ZooCase(
    "overfitting", "003",
    "segmenter trained on 8 images whose labels cannot be learned from the pixels (memorised): validation loss climbs",
    "32 images whose class follows the colour: validation loss falls with training loss",
    "fit.generalization-gap", _overfitting))
