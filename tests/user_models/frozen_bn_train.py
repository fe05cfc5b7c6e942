"""Segmenter on a frozen encoder: the encoder (conv + BatchNorm stages, stride 8) comes from my classification
model and is frozen with `requires_grad_(False)` so that only the light decoder (two convs and bilinear
upsampling) is fine-tuned on the small dataset. (Here the encoder is randomly initialised; in my project it
is loaded from a checkpoint.)

FAULT: freezing the parameters does not freeze BatchNorm: `model.train()` puts the encoder's BatchNorm layers
in training mode, so every forward normalises with the batch statistics and overwrites the running
mean/var the checkpoint came with. The "frozen" encoder drifts away from the one that was trained.
Measured: 4 images, 100 Adam steps: no encoder weight changes (all requires_grad False), yet the running
means of the 3 encoder BatchNorms move by up to 0.25, 0.69 and 0.49, their running variances by up to 0.97,
and num_batches_tracked reaches 100 in each. The decoder learns: loss 1.16 -> 0.024, pixel accuracy 0.99.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.stage3 = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))

    def forward(self, x):
        s1 = self.stage1(x)
        return s1, self.stage3(self.stage2(s1))


class FrozenEncoderSeg(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.encoder = Encoder()
        self.encoder.requires_grad_(False)  # freeze the pretrained encoder
        self.reduce = nn.Conv2d(64, 32, 1)
        self.fuse = nn.Sequential(nn.Conv2d(32 + 16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, num_classes, 1))

    def forward(self, x):
        low, high = self.encoder((x - 0.45) / 0.25)
        high = F.interpolate(self.reduce(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([high, low], 1))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build(num_classes=3):
    return FrozenEncoderSeg(num_classes)
