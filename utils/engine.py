"""Device, precision and evaluation helpers shared by the training and evaluation scripts."""
import contextlib
import random

import numpy as np
import torch

from utils import InputError
from utils.dist import all_reduce
from utils.bkd import agreement, compensation_loss, robust_targets, soft_cross_entropy


def get_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_precision(precision, device):
    """--precision auto means bf16 on CUDA and fp32 (the reference's numerics) on CPU."""
    return precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")


def autocast(device, precision):
    """bf16 autocast on CUDA when asked; a no-op context otherwise (fp32 = the reference's numerics)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(networks, args, device):
    """One SGD over the parameters of both networks, fused on CUDA (one kernel for all), foreach on CPU."""
    params = [p for net in networks for p in net.parameters()]
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, **kernel)


def train_step(teacher, student, optimizer, x, y, alphas, precision):
    """One BKD step on a batch. Returns the loss, its two parts and both networks' logits, all detached fp32
    device tensors (nothing here waits for the device)."""
    with autocast(x.device, precision):
        t, s = teacher(x), student(x)
    t, s = t.float(), s.float()
    loss_c = compensation_loss(t, s, y)  # the student learns the teacher's logits, blind to the label's class
    loss_ce = soft_cross_entropy(t, robust_targets(y, s, alphas))  # the teacher learns the (softened) label
    loss = loss_ce + loss_c
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), loss_ce.detach(), loss_c.detach(), t.detach(), s.detach()


@torch.inference_mode()
def agreement_pass(teacher, student, batches, precision="fp32"):
    """Both networks in eval mode over every sample of `batches`, in split order: (agreement on the sample's
    label, 1.0 where the agreement's argmax equals that label), as device tensors. Under torchrun each rank
    fills its share and the sum over ranks completes both arrays on every rank."""
    teacher.eval()
    student.eval()
    device = batches.indices.device
    n = len(batches.indices)
    agree_on_label = torch.zeros(n, device=device)
    correct = torch.zeros(n, device=device)
    for x, y, pos in batches:
        with autocast(device, precision):
            t, s = teacher(x), student(x)
        p = agreement(t.float(), s.float())
        agree_on_label[pos] = p.gather(1, y[:, None]).squeeze(1)
        correct[pos] = (p.argmax(dim=1) == y).float()
    return all_reduce(agree_on_label), all_reduce(correct)


def accuracy(teacher, student, batches, precision="fp32"):
    """Percent of samples whose agreement prediction equals their label (one host sync)."""
    return agreement_pass(teacher, student, batches, precision)[1].mean().item() * 100
