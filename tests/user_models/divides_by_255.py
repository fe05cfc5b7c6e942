"""Plain-conv centre-cell detector, no normalisation layers (batch norm misbehaved with my batches of 2):
five 3x3 convs with LeakyReLU down to stride 8. The cell that holds a box centre predicts objectness (BCE on
all cells), the class (cross-entropy) and the box (centre offset in the cell, log width/height; L1).
My images come from cv2 as 0..255 floats, so forward starts with `images / 255`.

FAULT: under torchvision's contract the images arrive already scaled to 0..1; dividing again leaves inputs
in 0..0.004, and with no normalisation layer to undo the scale the first activations are ~250x too small.
Measured: the first conv sees inputs with max 0.0039 and std 0.0006 (1.0 and 0.16 without the division).
4 images, 100 Adam steps: loss 2.26 -> 1.05 and AP50 on the batch 0.32; the same model without `/ 255`
goes 2.26 -> 0.11 with AP50 1.0 (100 steps on 12 images: val AP50 0.02 vs 0.89).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

STRIDE = 8


class CentreCellNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.n = num_classes - 1
        act = lambda: nn.LeakyReLU(0.1)
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), act(), nn.Conv2d(32, 32, 3, 1, 1), act(),
            nn.Conv2d(32, 64, 3, 2, 1), act(), nn.Conv2d(64, 64, 3, 2, 1), act(),
            nn.Conv2d(64, 64, 3, 1, 1), act())
        self.out = nn.Conv2d(64, 1 + self.n + 4, 1)

    def forward(self, images, targets=None):
        x = torch.stack(list(images)) / 255.0
        y = self.out(self.body(x))
        obj, cls, box = y[:, 0], y[:, 1:1 + self.n], y[:, 1 + self.n:]
        if self.training:
            return self.loss(obj, cls, box, targets)
        return self.decode(obj, cls, box)

    def loss(self, obj, cls, box, targets):
        n, h, w = obj.shape
        obj_t = torch.zeros_like(obj)
        cls_l, box_l = [], []
        for i, t in enumerate(targets):
            for (x1, y1, x2, y2), lab in zip(t["boxes"].tolist(), t["labels"].tolist()):
                cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
                r, c = min(int(cy), h - 1), min(int(cx), w - 1)
                obj_t[i, r, c] = 1.0
                cls_l.append(F.cross_entropy(cls[i, :, r, c][None], torch.tensor([lab - 1])))
                goal = torch.tensor([cx - c, cy - r, torch.tensor((x2 - x1) / STRIDE).log(), torch.tensor((y2 - y1) / STRIDE).log()])
                box_l.append(F.l1_loss(box[i, :, r, c], goal))
        return {"obj": F.binary_cross_entropy_with_logits(obj, obj_t, pos_weight=torch.tensor(10.0)),
                "cls": torch.stack(cls_l).mean(), "box": torch.stack(box_l).mean()}

    @torch.no_grad()
    def decode(self, obj, cls, box):
        n, h, w = obj.shape
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        res = []
        for i in range(n):
            p, lab = cls[i].softmax(0).max(0)
            s = (obj[i].sigmoid() * p).flatten()
            cx, cy = (c + box[i, 0]) * STRIDE, (r + box[i, 1]) * STRIDE
            bw, bh = box[i, 2].exp() * STRIDE, box[i, 3].exp() * STRIDE
            b = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).reshape(-1, 4)
            keep = s > 0.05
            lab = lab.flatten()[keep] + 1
            k = batched_nms(b[keep], s[keep], lab, 0.5)[:50]
            res.append({"boxes": b[keep][k], "scores": s[keep][k], "labels": lab[k]})
        return res


def build(num_classes=3):
    return CentreCellNet(num_classes)
