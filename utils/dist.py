"""torchrun support in a few helpers: plain `python script.py` runs as a world of one, and every helper is
then a no-op."""
import gc
import os

import torch
import torch.distributed as dist


def init_distributed(device):
    """(rank, world_size, device) from torchrun's environment, for the device the flags chose
    (utils.engine.get_device); starts the process group (NCCL on GPUs, gloo on CPU) and gives each rank its own
    GPU, cuda:LOCAL_RANK. Without torchrun: (0, 1, device)."""
    if "RANK" not in os.environ:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # streams and CUDA graphs are made on the current device
        return 0, 1, device
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return rank, world_size, device


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(tensor, op="sum"):
    """In place over all ranks (a no-op in a world of one); returns the tensor."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def same_on_all_ranks(tensor):
    """True when every rank holds the same values (a checksum compared across ranks)."""
    if world_size() == 1:
        return True
    checksum = torch.stack([tensor.double().sum(), (tensor.double() * torch.arange(1, tensor.numel() + 1,
                            device=tensor.device, dtype=torch.double).view_as(tensor)).sum()])
    low, high = -checksum.clone(), checksum.clone()
    all_reduce(low, "max")
    all_reduce(high, "max")
    return bool(torch.equal(-low, high))


def teardown():
    """The end of a process under torchrun, whatever ended it: free what holds the process group, then destroy it.
    DistributedDataParallel wrappers sit in reference cycles, so they outlive the function that made them until the
    garbage collector runs; a group destroyed while they hold it keeps gloo's worker threads alive until interpreter
    shutdown, where a rank with nothing left to do (rank 1, while rank 0 writes its files) can die of std::terminate
    (SIGABRT) instead of exiting with its code. A no-op without a process group."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def sync_buffers(*models):
    """Copy rank 0's BatchNorm running statistics to every rank, so evaluation is the same everywhere
    (with per-rank BatchNorm each rank's last training batch moved its own statistics)."""
    if world_size() > 1:
        for model in (m for m in models if m is not None):  # a ce run has no student
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
