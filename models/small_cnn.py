"""A small CNN (about 0.1 M parameters) for the synthetic dataset and quick CPU runs, and the same four times as wide
(WideCNN, 1.6 M parameters: a network large for a small data set, one that can memorise its wrong labels); any
image size of 8 pixels or more (three 2x poolings, then a global average pool)."""
import torch.nn as nn


def conv_bn(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    WIDTH = 16  # channels of the first block, doubled at each of the next three

    def __init__(self, num_classes=10):
        super().__init__()
        w = self.WIDTH
        self.features = nn.Sequential(
            conv_bn(3, w), nn.MaxPool2d(2),          # 16x16 (at 32x32 input)
            conv_bn(w, 2 * w), nn.MaxPool2d(2),      # 8x8
            conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),  # 4x4
            conv_bn(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        return self.linear(self.features(x))


class WideCNN(SmallCNN):
    WIDTH = 64
