"""FCN-style segmenter with transposed-convolution upsampling (strides 2, 4, 8 and back). The model ends with
a softmax so that the app gets per-pixel class probabilities straight from it; training uses
nn.CrossEntropyLoss(ignore_index=255) on the model output.

FAULT: CrossEntropyLoss applies log-softmax itself, so here it runs on probabilities, not logits: the
"logits" it sees lie in [0, 1], the loss cannot fall below -log(e / (e + C - 1)) = 0.55 for 3 classes, and
the gradients are squashed by the softmax Jacobian.
Measured (64-px squares, 4 images, 100 Adam steps): loss 1.13 -> 0.73 (64 % of the start; floor 0.551)
while the same network returning logits goes 1.24 -> 0.31 (25 %). Pixel accuracy on the batch is 0.99 in
both cases: the argmax still learns; the loss floor and the flat gradients are what the fault costs. The
model's outputs sum to 1 over the classes at every pixel and never leave [0, 1].
"""
from torch import nn


def down(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FCNProbs(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.d1, self.d2, self.d3 = down(3, 16), down(16, 32), down(32, 64)
        self.u3, self.u2, self.u1 = up(64, 32), up(32, 16), up(16, 16)
        self.score = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        a = self.d1(x * 2 - 1)
        b = self.d2(a)
        c = self.d3(b)
        y = self.u1(self.u2(self.u3(c) + b) + a)
        return self.score(y).softmax(dim=1)  # probabilities for the app


criterion = nn.CrossEntropyLoss(ignore_index=255)


def train_loss(outputs, masks):
    return criterion(outputs, masks)


def build(num_classes=3):
    return FCNProbs(num_classes)

