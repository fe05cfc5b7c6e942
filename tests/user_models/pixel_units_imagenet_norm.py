"""Lightweight encoder-decoder without normalisation layers (they slowed my Jetson export): strided 3x3 convs
with ReLU down to stride 8, nearest upsampling with skip concatenation back to full size. The model brings
its own preprocessing, so the deployment code can feed frames straight from the camera: scale to pixel
units, then ImageNet mean/std.

FAULT: the preprocessing mixes two conventions: `x * 255` (to pixel units) followed by the ImageNet
mean/std written for 0..1 inputs. Inputs in 0..1 (torchvision's contract) become values of about 100 to
1100 instead of roughly -2..2.6, and no normalisation layer brings them back.
Measured: the first conv sees inputs in [109, 1111] with std 183 ([-1.7, 2.2], std 0.70 without `* 255`);
the loss starts at 28.8 instead of 1.15. Adam copes in this tiny from-scratch model (4 images, 100 steps:
pixel accuracy 0.998 either way), but SGD (lr 0.01, momentum 0.9) turns the loss into NaN within 10 steps
(without `* 255`: 1.15 -> 0.012); pretrained weights would see inputs ~250x outside their range.
"""
import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class NoNormSeg(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.c2 = nn.Conv2d(16, 32, 3, 2, 1)
        self.c3 = nn.Conv2d(32, 48, 3, 2, 1)
        self.m3 = nn.Conv2d(48, 48, 3, 1, 1)
        self.u2 = nn.Conv2d(48 + 32, 32, 3, 1, 1)
        self.u1 = nn.Conv2d(32 + 16, 16, 3, 1, 1)
        self.u0 = nn.Conv2d(16 + 3, 16, 3, 1, 1)
        self.cls = nn.Conv2d(16, num_classes, 1)

    def preprocess(self, x):
        x = x * 255.0
        return (x - MEAN.to(x.device)) / STD.to(x.device)

    def forward(self, x):
        x = self.preprocess(x)
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        c = F.relu(self.m3(F.relu(self.c3(b))))
        up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="nearest")
        d = F.relu(self.u2(torch.cat([up(c, b), b], 1)))
        e = F.relu(self.u1(torch.cat([up(d, a), a], 1)))
        f = F.relu(self.u0(torch.cat([up(e, x), x], 1)))
        return self.cls(f)


def build(num_classes=3):
    return NoNormSeg(num_classes)
