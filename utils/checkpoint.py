"""Saving and loading: one dict per network, written atomically, read without arbitrary unpickling."""
import json
import os
import tempfile

import numpy as np
import torch

from models import build_model
from utils import InputError

PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile


def atomic_write(path, write):
    """Call write(file object) on a temporary file next to path, then rename it into place: readers see the
    old file or the new one, never a truncated one."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def clean_state_dict(state_dict):
    """The state dict with DDP / torch.compile prefixes removed, so keys match a plain network."""
    out = {}
    for key, value in state_dict.items():
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def save_checkpoint(path, model, epoch, arch):
    state = {"state_dict": clean_state_dict(model.state_dict()), "epoch": epoch, "arch": arch}
    atomic_write(path, lambda f: torch.save(state, f))


def load_network(path, arch, num_classes):
    """(network, checkpoint dict) from a checkpoint of this project or of the reference (strict key match).
    The checkpoint's own arch wins over `arch`. One clear InputError on any problem."""
    if not os.path.isfile(path):
        raise InputError(f"no checkpoint at {path}; train first: python blind_knowledge_dist_training.py "
                         f"with the same --dataset, --noise_type and --seed")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # refuses pickled code
        if not isinstance(checkpoint, dict):
            raise ValueError(f"expected a dict, got {type(checkpoint).__name__}")
        state_dict = checkpoint.get("state_dict", checkpoint)
        model = build_model(checkpoint.get("arch", arch), num_classes)
        model.load_state_dict(clean_state_dict(state_dict), strict=True)
    except Exception as e:  # unreadable, tampered, or another architecture / class count
        lines = str(e).strip().splitlines()
        raise InputError(f"cannot load {path}: {lines[0] if lines else type(e).__name__}") from None
    return model, checkpoint
