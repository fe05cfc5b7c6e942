"""U-Net with deep supervision: besides the full-resolution output, a small head on the bottleneck (stride 4)
predicts the classes too, upsampled; forward returns {"out": ..., "aux": ...}. My loss file trains the
segmentation with CE + 0.5 * soft Dice on the main output.

FAULT: the deep-supervision head is computed on every forward but my loss only reads outputs["out"]; the
aux head's parameters never get a gradient (they stay at their random init), so the deep supervision I
think I have does not exist and "aux" is noise.
Measured: after one backward the 4 deep_sup parameters (6979 numbers) have grad None; after 100 Adam steps
on 4 images the main output reaches pixel accuracy 1.00 (loss 1.54 -> 0.44) while the aux output's
accuracy is 0.03 and its 4 parameters are bit-for-bit unchanged.
"""
import torch
import torch.nn.functional as F
from torch import nn


def double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DeepSupUNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.inc = double_conv(3, 16)
        self.enc1 = double_conv(16, 32)
        self.enc2 = double_conv(32, 48)
        self.up1 = nn.ConvTranspose2d(48, 32, 2, 2)
        self.dec1 = double_conv(64, 32)
        self.up0 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.dec0 = double_conv(32, 16)
        self.logits = nn.Conv2d(16, num_classes, 1)
        self.deep_sup = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, num_classes, 1))

    def forward(self, x):
        a = self.inc(x)
        b = self.enc1(F.max_pool2d(a, 2))
        c = self.enc2(F.max_pool2d(b, 2))
        d = self.dec1(torch.cat([self.up1(c), b], 1))
        e = self.dec0(torch.cat([self.up0(d), a], 1))
        aux = F.interpolate(self.deep_sup(c), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": self.logits(e), "aux": aux}


def seg_loss(outputs, masks):
    logits = outputs["out"]
    ce = F.cross_entropy(logits, masks, ignore_index=255)
    valid = (masks != 255).unsqueeze(1)
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(masks.masked_fill(masks == 255, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dice = 1 - ((2 * (probs * onehot).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)).mean()
    return {"ce": ce, "dice": 0.5 * dice}


def build(num_classes=3):
    return DeepSupUNet(num_classes)
