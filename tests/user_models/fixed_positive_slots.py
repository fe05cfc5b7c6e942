"""YOLO-v1 for my 64-px crops: an S x S grid (S = 8), each cell predicts B = 2 boxes (x, y, w, h, confidence)
and one set of class probabilities; the sum-squared-error loss of the paper (lambda_coord 5, lambda_noobj 0.5).
The cell responsible for an object is the one containing its centre; of its B boxes, the one with the higher
IoU is responsible.

FAULT: the box centre is normalised to 0..1 first and then divided by the cell size in pixels
(`col = int(cx // self.cell)`), so every object is given to cell (0, 0) whatever its position: the same
two output slots are the only positives in every image.
Measured (4 images, 100 Adam steps): 100 % of the positives sit in cell (0, 0), i.e. in 2 fixed slots of 128;
the loss goes 325 -> 250 and stalls (its x/y targets, cx * S - 0, reach 7.5 while the sigmoid output stops
at 1), AP50 on that batch 0.00, val AP50 after 100 steps on 12 images 0.00. With `col = int(cx * self.S)`
the same model reaches loss 0.006, batch AP50 1.0 and val AP50 0.56.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, nms


class Yolo1(nn.Module):
    def __init__(self, num_classes=3, S=8, B=2, img=64):
        super().__init__()
        self.S, self.B, self.C, self.img = S, B, num_classes - 1, img
        self.cell = img / S  # pixels per cell
        layers, cin = [], 3
        for cout in (16, 32, 64):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1), nn.MaxPool2d(2)]
            cin = cout
        layers += [nn.Conv2d(64, 64, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(64, B * 5 + self.C, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images, targets=None):
        x = torch.stack(list(images))
        out = self.net(x).permute(0, 2, 3, 1)  # N, S, S, B*5 + C
        boxes = torch.sigmoid(out[..., :self.B * 5]).reshape(*out.shape[:3], self.B, 5)  # x, y, w, h, conf in 0..1
        cls = out[..., self.B * 5:].softmax(-1)
        if self.training:
            return self.yolo_loss(boxes, cls, targets)
        return self.to_detections(boxes, cls)

    def to_xyxy(self, boxes):
        """Cell-relative (x, y) and image-relative (w, h) -> pixel xyxy, for every cell and slot."""
        gy, gx = torch.meshgrid(torch.arange(self.S), torch.arange(self.S), indexing="ij")
        cx = (gx[..., None] + boxes[..., 0]) / self.S * self.img
        cy = (gy[..., None] + boxes[..., 1]) / self.S * self.img
        w, h = boxes[..., 2] * self.img, boxes[..., 3] * self.img
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)

    def yolo_loss(self, boxes, cls, targets):
        pred_xyxy = self.to_xyxy(boxes)
        coord = obj = noobj = cls_err = boxes.new_zeros(())
        for i, t in enumerate(targets):
            resp = torch.zeros(self.S, self.S, self.B, dtype=torch.bool)
            for (x1, y1, x2, y2), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
                cx, cy = (x1 + x2) / 2 / self.img, (y1 + y2) / 2 / self.img  # normalised centre
                col, row = min(int(cx // self.cell), self.S - 1), min(int(cy // self.cell), self.S - 1)
                gt = torch.tensor([[x1, y1, x2, y2]])
                k = int(box_iou(pred_xyxy[i, row, col].detach(), gt).argmax())
                resp[row, col, k] = True
                target = torch.tensor([cx * self.S - col, cy * self.S - row, (x2 - x1) / self.img, (y2 - y1) / self.img])
                p = boxes[i, row, col, k]
                coord = coord + F.mse_loss(p[:2], target[:2], reduction="sum") \
                    + F.mse_loss(p[2:4].sqrt(), target[2:].sqrt(), reduction="sum")
                iou = box_iou(pred_xyxy[i, row, col, k:k + 1].detach(), gt)[0, 0]
                obj = obj + (p[4] - iou) ** 2
                cls_err = cls_err + ((cls[i, row, col] - F.one_hot(torch.tensor(label - 1), self.C).float()) ** 2).sum()
            noobj = noobj + (boxes[i, ..., 4][~resp] ** 2).sum()
        n = len(targets)
        return {"coord": 5.0 * coord / n, "obj": obj / n, "noobj": 0.5 * noobj / n, "cls": cls_err / n}

    @torch.no_grad()
    def to_detections(self, boxes, cls):
        xyxy = self.to_xyxy(boxes).clamp(0, self.img)
        results = []
        for i in range(len(boxes)):
            cls_p, cls_i = cls[i].max(-1)  # S, S
            scores = (boxes[i, ..., 4] * cls_p[..., None]).flatten()
            labels = (cls_i[..., None].expand(-1, -1, self.B) + 1).flatten()
            b = xyxy[i].reshape(-1, 4)
            keep = scores > 0.01
            b, scores, labels = b[keep], scores[keep], labels[keep]
            k = nms(b, scores, 0.5)[:50]
            results.append({"boxes": b[k], "scores": scores[k], "labels": labels[k]})
        return results


def build(num_classes=3):
    return Yolo1(num_classes)
