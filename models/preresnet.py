"""PreResNet18 of the reference, with its exact state_dict layout (spec section 2), so that reference
checkpoints load with strict=True. It takes any image size of 8 pixels or more: the reference's 4x4 average
pool of the 4x4 map at 32x32 is a global average pool, which is what is used here."""
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    """bn1 -> ReLU -> conv1 -> bn2 -> ReLU -> conv2, plus a shortcut taken from the activated input."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Sequential()  # identity: no state_dict entries
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut  # no activation after the add


class PreResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, strides, in_planes = (64, 128, 256, 512), (1, 2, 2, 2), 64
        for i, (width, stride) in enumerate(zip(widths, strides), start=1):
            setattr(self, f"layer{i}", nn.Sequential(PreActBlock(in_planes, width, stride), PreActBlock(width, width)))
            in_planes = width
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = the reference's avg_pool2d(out, 4) at 32x32
        return self.linear(out)
