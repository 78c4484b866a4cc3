"""Networks: PreResNet18's state_dict layout is exactly that of spec section 2 (reference checkpoints load)."""
import pytest
import torch

from models import ARCHS, build_model


def expected_preresnet18_shapes(num_classes=10):
    """The spec's layout, written out independently of models/preresnet.py."""
    def bn(name, c):
        return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}
    shapes = {"conv1.weight": (64, 3, 3, 3), **bn("bn1", 64)}
    c_in = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            shapes.update(bn(f"{p}.bn1", c_in))
            shapes[f"{p}.conv1.weight"] = (width, c_in, 3, 3)
            shapes.update(bn(f"{p}.bn2", width))
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            if block == 0 and layer > 1:
                shapes[f"{p}.shortcut.0.weight"] = (width, c_in, 1, 1)
            c_in = width
    shapes.update({"linear.weight": (num_classes, 512), "linear.bias": (num_classes,)})
    return shapes


def test_preresnet18_state_dict_is_the_reference_layout():
    model = build_model("preresnet18", 10)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_preresnet18_shapes()
    assert len(got) == 107
    assert sum(p.numel() for p in model.parameters()) == 11_171_274


def test_preresnet18_block_order():
    """Pre-activation: the identity shortcut is the activated input, and nothing follows the add."""
    block = build_model("preresnet18", 10).layer1[0].eval()
    x = torch.randn(2, 64, 8, 8)
    activated = torch.relu(block.bn1(x))
    expected = block.conv2(torch.relu(block.bn2(block.conv1(activated)))) + activated
    assert torch.allclose(block(x), expected, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_every_arch_maps_cifar_images_to_logits(arch, num_classes):
    model = build_model(arch, num_classes).eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, num_classes)


def test_resnet34_size():
    assert sum(p.numel() for p in build_model("resnet34", 10).parameters()) == 21_282_122


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("size", [8, 20, 64])
def test_every_arch_takes_any_image_size(arch, size):
    """--image_size: the networks end with a global average pool, so any side of 8 pixels or more works."""
    model = build_model(arch, 7).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_preresnet18_global_pool_is_the_reference_4x4_pool_at_32():
    model = build_model("preresnet18", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    features = torch.relu(model.bn1(model.conv1(x)))
    features = model.layer4(model.layer3(model.layer2(model.layer1(features))))
    assert features.shape[-2:] == (4, 4)
    reference = model.linear(torch.nn.functional.avg_pool2d(features, 4).flatten(1))
    assert torch.allclose(model(x), reference, atol=1e-6)
