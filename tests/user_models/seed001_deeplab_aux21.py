"""DeepLabV3 (torchvision, MobileNetV3-Large backbone, from scratch here) for my street scenes. I built the
COCO/VOC model with its auxiliary classifier and replaced the last layer of the main classifier for my
classes; the training loop uses `model(images)["out"]` with CrossEntropyLoss(ignore_index=255).

FAULT (seed 001, "Model 1"): only `model.classifier[-1]` was replaced; `model.aux_classifier[-1]` still
outputs the 21 VOC classes, and since the loss reads only "out", the auxiliary head is never trained (its
parameters get no gradient) and nobody notices its wrong size.
Measured: outputs "out" (4, 3, 64, 64) and "aux" (4, 21, 64, 64); after one backward the 5 aux_classifier
parameters (3851 numbers) have grad None; the main head trains (4 images, 100 Adam steps: loss 1.13 ->
0.10).
"""
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large


def build(num_classes=3) -> nn.Module:
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True)  # 21 classes
    model.classifier[-1] = nn.Conv2d(256, num_classes, kernel_size=1)
    return model


def main_only_loss(outputs, masks):
    return F.cross_entropy(outputs["out"], masks, ignore_index=255)
