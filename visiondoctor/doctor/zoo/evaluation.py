"""Evaluation cases of the zoo: mIoU on 10 of N images (seed 001) and a degenerate early exit (seed 000)."""
from __future__ import annotations

import math

import torch
from torch import nn

from visiondoctor.doctor.checks.evaluation import check_sample_size
from visiondoctor.doctor.checks.exits import check_exit_distribution
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
from visiondoctor.doctor.zoo.segmentation import TinyFCN
from visiondoctor.evaluation.segmentation import ConfusionMatrix


def _miou_on_ten(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    kw = dict(size=32, min_side=6, max_side=14)
    model = TinyFCN(3)
    train_briefly(model, ListDataset(masks_from_squares(squares(16, seed=20, **kw))), ModelIO("segmentation"),
                  steps=40, batch_size=8, lr=3e-3)
    split = masks_from_squares(squares(40, seed=21, **kw))
    # the seed's protocol: every 4th image of the first 40 (indices 0, 4, ..., 36), quoted as the split's figure
    chosen = split if healthy else split[::4]
    conf = ConfusionMatrix(3)
    model.eval()
    with torch.no_grad():
        for image, mask in chosen:
            conf.update(model(image[None]).argmax(1)[0], mask)
    metrics = conf.compute(["background", "red", "green"], total_images=len(split))
    return check_sample_size(metrics)


register(ZooCase(
    "miou-on-10", "001",
    "mIoU computed on 10 of 40 validation images (every 4th) and reported as the split's mIoU",
    "mIoU on the whole split",
    "eval.sample-bias", _miou_on_ten))


class TinyEarlyExit(nn.Module):
    """Three exits (after stride 4, 8 and 16); an exit's confidence is its maximum foreground probability."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone(stages=4, outputs=(2, 3, 4))
        self.exits = nn.ModuleList(nn.Conv2d(32, 1, 1) for _ in range(3))

    def confidences(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone((x - 0.5) / 0.25).values())
        return torch.stack([torch.sigmoid(head(f)).amax(dim=(1, 2, 3)) for head, f in zip(self.exits, feats)], dim=1)


def exit_policy(confidences: torch.Tensor, thresholds: list[float]) -> list[int]:
    """Each image leaves at the first exit whose confidence reaches its threshold; the last exit takes the rest."""
    out = []
    for row in confidences.tolist():
        k = next((i for i, t in enumerate(thresholds) if row[i] >= t), len(thresholds))
        out.append(k)
    return out


def _early_exit(healthy: bool) -> list[Finding]:
    torch.manual_seed(0)
    model = TinyEarlyExit().eval()
    images = torch.stack([im for im, _ in squares(32, seed=30)])
    if not healthy:  # exit 1 collapsed to a constant 0.475 (seed 000), threshold set by hand below it
        with torch.no_grad():
            model.exits[0].weight.zero_()
            model.exits[0].bias.fill_(math.log(0.475 / 0.525))
        thresholds = [0.45, 0.45]
    with torch.no_grad():
        conf = model.confidences(images)
    if healthy:  # thresholds calibrated on the data: ~1/3 leave at exit 1, half the rest at exit 2
        thresholds = [float(torch.quantile(conf[:, 0], 2 / 3)), float(torch.quantile(conf[:, 1], 0.5))]
    exits = exit_policy(conf, thresholds)
    return check_exit_distribution(exits, conf.tolist(), thresholds, num_exits=3)


register(ZooCase(
    "early-exit-threshold", "000",
    "early-exit model whose first exit outputs a constant 0.475 with its threshold at 0.45: every image leaves there",
    "exit thresholds calibrated on the data's confidence quantiles",
    "early-exit.degenerate", _early_exit))
