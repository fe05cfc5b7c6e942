"""Backbone + neck + heads. The backbone (stride 4) feeds a small neck with a dilated context branch, and
three heads read the neck: a per-class centre heatmap (penalty-reduced focal loss on Gaussian targets), a
sub-cell offset and the box size (L1 at the centres). To keep the noisy head gradients of the first epochs
from wrecking the backbone, the features are detached before the neck.

FAULT: `feats = self.backbone(x).detach()` cuts the graph: the backbone's parameters never receive a
gradient (not "smaller" gradients: none at all), so the backbone stays a random feature extractor forever.
Measured: after one backward the 12 backbone parameters (35 808 numbers, 12 of the model's 22 tensors) have
grad None and stay at their initial values. On these easy squares the heads still learn on random
features (4 images, 100 Adam steps: loss 4.13 -> 0.087, AP50 1.0; without the .detach(): 4.13 -> 0.061;
val AP50 after 100 steps on 12 images 0.76 vs 0.78): the fault costs little here and shows only in the
gradients.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 48, 3, 2, 1), nn.BatchNorm2d(48), nn.ReLU(inplace=True),
            nn.Conv2d(48, 48, 3, 1, 1), nn.BatchNorm2d(48), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.layers(x)


class Neck(nn.Module):
    def __init__(self, c=48):
        super().__init__()
        self.local = nn.Conv2d(c, c, 3, padding=1)
        self.context = nn.Conv2d(c, c, 3, padding=4, dilation=4)

    def forward(self, f):
        return F.relu(self.local(f) + self.context(f))


class HeatmapDetector(nn.Module):
    stride = 4

    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone, self.neck = Backbone(), Neck()
        self.centre_head = nn.Conv2d(48, num_classes - 1, 1)
        self.offset_head = nn.Conv2d(48, 2, 1)
        self.size_head = nn.Conv2d(48, 2, 1)
        nn.init.constant_(self.centre_head.bias, -2.2)

    def forward(self, images, targets=None):
        x = torch.stack(list(images))
        feats = self.backbone((x - 0.5) / 0.25).detach()
        n = self.neck(feats)
        heat, off, size = self.centre_head(n), self.offset_head(n), self.size_head(n)
        return self.losses(heat, off, size, targets) if self.training else self.decode(heat, off, size)

    def losses(self, heat, off, size, targets):
        b, c, h, w = heat.shape
        gauss = torch.zeros_like(heat)
        at = torch.zeros(b, h, w, dtype=torch.bool)
        off_t, size_t = torch.zeros(b, 2, h, w), torch.zeros(b, 2, h, w)
        yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        for i, t in enumerate(targets):
            for (x1, y1, x2, y2), lab in zip(t["boxes"].tolist(), t["labels"].tolist()):
                cx, cy = (x1 + x2) / 2 / self.stride, (y1 + y2) / 2 / self.stride
                q, r = min(int(cx), w - 1), min(int(cy), h - 1)
                sig = max(0.7, min(x2 - x1, y2 - y1) / self.stride / 5)
                gauss[i, lab - 1] = torch.maximum(gauss[i, lab - 1], torch.exp(-((xx - q) ** 2 + (yy - r) ** 2) / (2 * sig ** 2)))
                at[i, r, q] = True
                off_t[i, :, r, q] = torch.tensor([cx - q, cy - r])
                size_t[i, :, r, q] = torch.tensor([(x2 - x1) / self.stride, (y2 - y1) / self.stride]).log()
        p = heat.sigmoid().clamp(1e-4, 1 - 1e-4)
        peak = gauss.ge(0.999).float()
        focal = -(peak * (1 - p) ** 2 * p.log() + (1 - peak) * (1 - gauss) ** 4 * p ** 2 * (1 - p).log()).sum()
        npk = max(1.0, float(peak.sum()))
        sel = lambda z: z.permute(0, 2, 3, 1)[at]
        return {"heatmap": focal / npk, "offset": F.l1_loss(sel(off), sel(off_t)), "size": F.l1_loss(sel(size), sel(size_t))}

    @torch.no_grad()
    def decode(self, heat, off, size, k=30):
        b, c, h, w = heat.shape
        p = heat.sigmoid()
        p = p * (F.max_pool2d(p, 3, 1, 1) == p)
        res = []
        for i in range(b):
            s, idx = p[i].flatten().topk(k)
            cls, cell = idx // (h * w), idx % (h * w)
            r, q = (cell // w).float(), (cell % w).float()
            o, z = off[i].flatten(1)[:, cell], size[i].flatten(1)[:, cell].clamp(max=4).exp()
            cx, cy = (q + o[0]) * self.stride, (r + o[1]) * self.stride
            bw, bh = z[0] * self.stride, z[1] * self.stride
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).clamp(0, w * self.stride)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            res.append({"boxes": boxes[ok], "scores": s[ok], "labels": cls[ok] + 1})
        return res


def build(num_classes=3):
    return HeatmapDetector(num_classes)
