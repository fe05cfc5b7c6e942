"""Centre-size detector. Priors are kept as (cx, cy, half-width, half-height) in a buffer, 2 per cell of the
stride-8 grid (16 and 26 px). A prior matches a box at IoU >= 0.45 (plus each box's best prior); targets
are the usual (dx / w, dy / h, log(gw / w), log(gh / h)); focal loss on the classes, smooth-L1 on the offsets.

FAULT: the inference decoder takes the stored half-extent as the prior size, `w = half_w * exp(dw)`, while
the encoder used the full size `2 * half_w`; every output box is centred right but half as wide and half as
tall as it should be.
Measured (4 images, 100 Adam steps: loss 9.3 -> 0.009): the most confident box on each object is 0.497 to
0.504 times its width (6 of 6 objects); AP50 on the batch 0.00, val AP50 after 100 steps on 12 images 0.00
(1.0 and 0.27 when the decoder uses `2 * half_w`).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou, sigmoid_focal_loss


def centre_size_priors(cells=8, stride=8, sizes=(16.0, 26.0)):
    c = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    rows = [torch.stack([cx.flatten(), cy.flatten(), torch.full_like(cx.flatten(), s / 2), torch.full_like(cx.flatten(), s / 2)], 1)
            for s in sizes]
    return torch.stack(rows, 1).reshape(-1, 4)  # cell-major: cell 0 size 0, cell 0 size 1, ...


def corners(p):
    return torch.cat([p[:, :2] - p[:, 2:], p[:, :2] + p[:, 2:]], 1)


class CentreSizeDet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.c = num_classes - 1
        self.body = nn.Sequential(
            nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 48, 3, 2, 1), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.register_buffer("priors", centre_size_priors())
        self.pred = nn.Conv2d(64, 2 * (self.c + 4), 3, padding=1)
        nn.init.constant_(self.pred.bias, 0.0)

    def forward(self, images, targets=None):
        x = torch.stack(list(images))
        p = self.pred(self.body((x - 0.5) * 4)).permute(0, 2, 3, 1).reshape(len(x), -1, self.c + 4)
        logits, d = p[..., :self.c], p[..., self.c:]
        return self.loss(logits, d, targets) if self.training else self.infer(logits, d, x.shape[-1])

    def encode(self, gt):
        cx, cy, w, h = self.priors.unbind(1)
        w, h = 2 * w, 2 * h  # stored as half extents
        gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
        return torch.stack([(gx - cx) / w, (gy - cy) / h, (gw / w).log(), (gh / h).log()], 1)

    def loss(self, logits, d, targets):
        prior_boxes = corners(self.priors)
        cls_t = torch.zeros_like(logits)
        reg, n = [], 0
        for i, t in enumerate(targets):
            iou = box_iou(prior_boxes, t["boxes"])
            v, g = iou.max(1)
            v[iou.argmax(0)] = 1.0
            g[iou.argmax(0)] = torch.arange(len(t["boxes"]))
            pos = v >= 0.45
            cls_t[i, pos, t["labels"][g[pos]] - 1] = 1.0
            reg.append(F.smooth_l1_loss(d[i, pos], self.encode(t["boxes"][g])[pos], reduction="sum"))
            n += int(pos.sum())
        n = max(n, 1)
        return {"focal": sigmoid_focal_loss(logits, cls_t, reduction="sum") / n, "smooth_l1": sum(reg) / n}

    @torch.no_grad()
    def infer(self, logits, d, size):
        cx, cy, half_w, half_h = self.priors.unbind(1)
        out = []
        for lg, dd in zip(logits.sigmoid(), d):
            w, h = half_w * dd[:, 2].exp(), half_h * dd[:, 3].exp()
            x, y = cx + dd[:, 0] * 2 * half_w, cy + dd[:, 1] * 2 * half_h
            boxes = torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1).clamp(0, size)
            s, lab = lg.max(1)
            keep = (s > 0.05) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            k = batched_nms(boxes[keep], s[keep], lab[keep], 0.5)[:50]
            out.append({"boxes": boxes[keep][k], "scores": s[keep][k], "labels": lab[keep][k] + 1})
        return out


def build(num_classes=3):
    return CentreSizeDet(num_classes)
