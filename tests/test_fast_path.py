"""The fast path computes what the plain one does: bf16 autocast vs fp32, compiled networks' checkpoints."""
import numpy as np
import pytest
import torch

from data.pipeline import DeviceBatches, to_device_images
from models import build_model
from utils.checkpoint import load_network, save_checkpoint
from utils.engine import agreement_pass, make_optimizer, train_step


@pytest.fixture(scope="module")
def trained_pair(steps=30):
    """A small-CNN pair trained briefly on an easy task (class = brightest channel), so logits are decisive."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 512)
    images = rng.integers(0, 100, (512, 32, 32, 3)).astype(np.uint8)
    images[np.arange(512), :, :, labels] += 120
    padded = to_device_images(images, "reflect", torch.device("cpu"))
    batches = DeviceBatches(padded, torch.as_tensor(labels), None, ((0.5,) * 3, (0.25,) * 3), 64, augment=True,
                            shuffle=True, generator=torch.Generator().manual_seed(0))
    nets = [build_model("small_cnn", 3) for _ in range(2)]
    opt = make_optimizer(nets, type("A", (), dict(lr=0.05, momentum=0.9, weight_decay=5e-4)), torch.device("cpu"))
    done = 0
    while done < steps:
        for x, y, _ in batches:
            train_step(*nets, opt, x, y, torch.zeros(len(y)), "fp32")
            done += 1
    batches.augment, batches.shuffle = False, False
    return nets, batches


def test_bf16_and_fp32_give_the_same_predictions(trained_pair):
    nets, batches = trained_pair
    agree32, predicted32, _ = agreement_pass(*nets, batches, "fp32")
    agree16, predicted16, _ = agreement_pass(*nets, batches, "bf16")
    assert agree16.dtype == torch.float32  # statistics stay fp32 under autocast
    assert (predicted32 == batches.labels).float().mean() > 0.9
    assert (predicted16 == predicted32).float().mean() > 0.98
    assert torch.allclose(agree16, agree32, atol=0.05)


def test_bf16_training_step_keeps_losses_fp32_and_finite(trained_pair):
    nets, batches = trained_pair
    opt = make_optimizer(nets, type("A", (), dict(lr=0.01, momentum=0.9, weight_decay=0)), torch.device("cpu"))
    x, y, _ = next(iter(batches))
    loss, loss_ce, loss_c, agree_on_label, confidence = train_step(*nets, opt, x, y, torch.full((len(y),), 0.5),
                                                                   "bf16")
    assert loss.dtype == agree_on_label.dtype == confidence.dtype == torch.float32 and torch.isfinite(loss)
    assert not loss.requires_grad and not agree_on_label.requires_grad  # nothing keeps the autograd graph alive
    assert agree_on_label.shape == (len(y),) and 0 <= agree_on_label.min() <= agree_on_label.max() <= 1
    assert 1 / 3 * len(y) <= confidence <= len(y)  # a sum of highest probabilities of 3 classes


@pytest.mark.slow
def test_compiled_network_saves_clean_keys(tmp_path):
    model = build_model("preresnet18", 10)
    compiled = torch.compile(model)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_checkpoint(tmp_path / "teacher.pth.tar", compiled, 7, "preresnet18")
    saved = torch.load(tmp_path / "teacher.pth.tar", weights_only=True)
    assert list(saved["state_dict"]) == list(model.state_dict())
    loaded, checkpoint = load_network(str(tmp_path / "teacher.pth.tar"), "preresnet18", 10)
    assert checkpoint["epoch"] == 7
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
