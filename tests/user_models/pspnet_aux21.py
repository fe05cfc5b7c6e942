"""PSPNet-lite: a stride-8 encoder, a pyramid pooling module (1, 2 and 4 bins) and a main head; plus the
auxiliary head on the stride-4 stage that PSPNet trains with weight 0.4. Forward returns {"out", "aux"},
both upsampled to the input; trained with CE(out) + 0.4 * CE(aux) (the usual recipe, no loss file).

FAULT: the auxiliary head's last layer is `nn.Conv2d(32, 21, 1)`, copied from the VOC config, while the main
head has `num_classes` (3) outputs. CE on the aux output accepts labels 0..2 silently, so training runs; 18
of its 21 channels are classes that do not exist, and anything reading "aux" (an ensemble, a consistency
check, an export) gets 21 classes.
Measured: "out" is (4, 3, 64, 64), "aux" (4, 21, 64, 64). 4 images, 100 Adam steps: loss 2.22 -> 0.40,
main pixel accuracy 0.99; in eval mode the 18 phantom aux channels still hold 34 % of the aux probability.
"""
import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    def __init__(self, c, bins=(1, 2, 4)):
        super().__init__()
        self.bins = bins
        self.reduce = nn.ModuleList(nn.Conv2d(c, c // 4, 1) for _ in bins)

    def forward(self, x):
        h, w = x.shape[-2:]
        pooled = [F.interpolate(conv(F.adaptive_avg_pool2d(x, b)), size=(h, w), mode="bilinear", align_corners=False)
                  for b, conv in zip(self.bins, self.reduce)]
        return torch.cat([x] + pooled, 1)


class PSPLite(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.stage4 = nn.Sequential(cbr(3, 16, 2), cbr(16, 32, 2))
        self.stage8 = nn.Sequential(cbr(32, 64, 2), cbr(64, 64))
        self.ppm = PyramidPooling(64)
        self.main_head = nn.Sequential(cbr(64 + 3 * 16, 48), nn.Conv2d(48, num_classes, 1))
        self.aux_head = nn.Sequential(cbr(32, 32), nn.Dropout2d(0.1), nn.Conv2d(32, 21, 1))

    def forward(self, x):
        size = x.shape[-2:]
        f4 = self.stage4(x - 0.5)
        f8 = self.stage8(f4)
        out = F.interpolate(self.main_head(self.ppm(f8)), size=size, mode="bilinear", align_corners=False)
        aux = F.interpolate(self.aux_head(f4), size=size, mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux}


def build(num_classes=3):
    return PSPLite(num_classes)
