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
    agree32, correct32 = agreement_pass(*nets, batches, "fp32")
    agree16, correct16 = agreement_pass(*nets, batches, "bf16")
    assert agree16.dtype == torch.float32  # statistics stay fp32 under autocast
    assert correct32.float().mean() > 0.9
    assert (correct16 == correct32).float().mean() > 0.98
    assert torch.allclose(agree16, agree32, atol=0.05)


def test_bf16_training_step_keeps_losses_fp32_and_finite(trained_pair):
    nets, batches = trained_pair
    opt = make_optimizer(nets, type("A", (), dict(lr=0.01, momentum=0.9, weight_decay=0)), torch.device("cpu"))
    x, y, _ = next(iter(batches))
    loss, loss_ce, loss_c, t, s = train_step(*nets, opt, x, y, torch.full((len(y),), 0.5), "bf16")
    assert loss.dtype == t.dtype == s.dtype == torch.float32 and torch.isfinite(loss)
    assert not loss.requires_grad and not t.requires_grad  # nothing on the hot path keeps the graph alive


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
