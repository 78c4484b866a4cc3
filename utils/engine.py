"""Device, precision and evaluation helpers shared by the training and evaluation scripts."""
import contextlib
import random

import numpy as np
import torch

from utils import InputError
from utils.bkd import agreement


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


def autocast(device, precision):
    """bf16 autocast on CUDA when asked; a no-op context otherwise (fp32 = the reference's numerics)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def agreement_pass(teacher, student, batches, precision="fp32"):
    """Both networks in eval mode over every sample of `batches`, in split order: (agreement on the sample's
    label, whether the agreement's argmax equals that label), as device tensors."""
    teacher.eval()
    student.eval()
    device = batches.indices.device
    n = len(batches.indices)
    agree_on_label = torch.empty(n, device=device)
    correct = torch.empty(n, dtype=torch.bool, device=device)
    for x, y, pos in batches:
        with autocast(device, precision):
            t, s = teacher(x), student(x)
        p = agreement(t.float(), s.float())
        agree_on_label[pos] = p.gather(1, y[:, None]).squeeze(1)
        correct[pos] = p.argmax(dim=1) == y
    return agree_on_label, correct


def accuracy(teacher, student, batches, precision="fp32"):
    """Percent of samples whose agreement prediction equals their label (one host sync)."""
    return agreement_pass(teacher, student, batches, precision)[1].float().mean().item() * 100
