"""A small CNN (about 0.1 M parameters) for the synthetic dataset and quick CPU runs; any image size of 8 pixels
or more (three 2x poolings, then a global average pool)."""
import torch.nn as nn


def conv_bn(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), nn.MaxPool2d(2),    # 16x16 (at 32x32 input)
            conv_bn(16, 32), nn.MaxPool2d(2),   # 8x8
            conv_bn(32, 64), nn.MaxPool2d(2),   # 4x4
            conv_bn(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.linear(self.features(x))
