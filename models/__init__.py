"""Networks selectable with --arch. Teacher and student are always two independent instances of one arch."""
from .preresnet import PreResNet18
from .resnet import ResNet34
from .small_cnn import SmallCNN, WideCNN

ARCHS = {"preresnet18": PreResNet18, "resnet34": ResNet34, "small_cnn": SmallCNN, "wide_cnn": WideCNN}


def build_model(arch, num_classes):
    return ARCHS[arch](num_classes=num_classes)
