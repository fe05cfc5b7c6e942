"""A user's own detector, written without visiondoctor: a CenterNet-style heatmap detector.

Train mode: model(images, targets) -> {"heatmap": ..., "size": ...}; eval mode: a list of
{"boxes", "scores", "labels"} (torchvision's conventions, so `visiondoctor diagnose --model-file`
can run it). Labels start at 1; 0 is background.
"""
import torch
import torch.nn.functional as F
from torch import nn


class CenterNetLite(nn.Module):
    def __init__(self, num_classes=3, stride=4):
        super().__init__()
        self.num_classes = num_classes
        self.stride = stride
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.heatmap = nn.Conv2d(32, num_classes - 1, 1)
        self.size = nn.Conv2d(32, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)

    def forward(self, images, targets=None):
        x = torch.stack(list(images))
        f = self.features((x - 0.5) / 0.25)
        heat, size = self.heatmap(f), self.size(f)
        if self.training:
            return self.compute_loss(heat, size, targets)
        return self.decode(heat, size)

    def compute_loss(self, heat, size, targets):
        b, c, h, w = heat.shape
        target = torch.zeros_like(heat)
        size_target = torch.zeros_like(size)
        mask = torch.zeros(b, h, w, dtype=torch.bool, device=heat.device)
        ys = torch.arange(h, device=heat.device).view(-1, 1).float()
        xs = torch.arange(w, device=heat.device).view(1, -1).float()
        for i, t in enumerate(targets):
            for (x1, y1, x2, y2), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
                cx, cy = (x1 + x2) / 2 / self.stride, (y1 + y2) / 2 / self.stride
                sigma = max(0.5, min(x2 - x1, y2 - y1) / self.stride / 6)
                g = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
                target[i, label - 1] = torch.maximum(target[i, label - 1], g)
                j, k = min(int(cy), h - 1), min(int(cx), w - 1)
                target[i, label - 1, j, k] = 1.0
                mask[i, j, k] = True
                size_target[i, :, j, k] = torch.tensor([x2 - x1, y2 - y1], device=heat.device).log()
        p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
        pos = target.eq(1).float()
        focal = -(pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - target) ** 4 * p ** 2 * (1 - p).log())
        heat_loss = focal.sum() / pos.sum().clamp(min=1)
        size_loss = F.l1_loss(size.permute(0, 2, 3, 1)[mask], size_target.permute(0, 2, 3, 1)[mask]) if mask.any() else size.sum() * 0
        return {"heatmap": heat_loss, "size": 0.1 * size_loss}

    @torch.no_grad()
    def decode(self, heat, size, k=20):
        out = []
        p = torch.sigmoid(heat)
        peaks = p * (p == F.max_pool2d(p, 3, 1, 1))
        b, c, h, w = p.shape
        for i in range(b):
            scores, idx = peaks[i].flatten().topk(min(k, c * h * w))
            label = idx // (h * w)
            cell = idx % (h * w)
            cy, cx = (cell // w).float() + 0.5, (cell % w).float() + 0.5
            wh = size[i].flatten(1)[:, cell].exp()
            cx, cy = cx * self.stride, cy * self.stride
            boxes = torch.stack([cx - wh[0] / 2, cy - wh[1] / 2, cx + wh[0] / 2, cy + wh[1] / 2], 1)
            out.append({"boxes": boxes, "scores": scores, "labels": label + 1})
        return out


def build(num_classes=3):
    return CenterNetLite(num_classes)
