"""Smoke check of the captured training step, for the first minutes of a GPU window (tests/gpu_check.sh smoke):

    python tests/gpu_smoke.py                 # on a CUDA machine: bf16 and fp32, PreResNet18 pair, batch 128
    python tests/gpu_smoke.py --device cpu    # the same comparison machinery on a CPU (the test suite runs it)

Prints the device and the versions that matter (driver, torch, CUDA, cuDNN, Triton), then steps two identical
PreResNet18 pairs side by side through the TrainStep the training script uses, one eagerly and one captured as a
CUDA graph, over a dozen batches that include the eager warm-up, the capture, replays, a smaller last batch (eager
on the graph's tensors) and a learning-rate change (a new capture), with random per-sample alphas (soft targets).
After every step it compares the two: the losses and statistics the step returns (kept as returned, so a later
replay overwriting them would show), the parameters, their updates, the gradients, the momentum buffers and the
BatchNorm statistics, and prints the largest difference per quantity. Then ms per step for each mode and the peak
device memory. On a CPU there is no graph: the second pair steps eagerly with its gradients zeroed in place (what a
captured run's eager steps do), which must change nothing either. Any error prints its whole traceback, chained
exceptions included. The table comes last; the exit code is 1 on a mismatch or an error.
"""
import argparse
import os
import platform
import subprocess
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from models import ARCHS, build_model  # noqa: E402
from utils.engine import get_device, make_optimizer, train_step  # noqa: E402
from utils.step import TrainStep  # noqa: E402

# Largest difference allowed, relative to the largest magnitude of the quantity (the same kernels run in both
# modes, so in practice the differences are at rounding level or zero).
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
OUTPUTS = ("loss", "naive loss", "compensation loss", "agreement on the label", "confidence sum")


def versions(device):
    """(name, value) of everything a GPU report needs."""
    rows = [("python", platform.python_version()), ("torch", torch.__version__)]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rows += [("device", f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB, "
                            f"compute capability {props.major}.{props.minor}"),
                 ("CUDA (torch build)", torch.version.cuda), ("cuDNN", str(torch.backends.cudnn.version()))]
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = "unknown (no nvidia-smi)"
        rows.append(("driver", driver))
    else:
        rows.append(("device", f"CPU ({torch.get_num_threads()} threads)"))
    try:
        import triton
        rows.append(("triton", triton.__version__))
    except ImportError:
        rows.append(("triton", "not installed"))
    return rows


def make_batches(device, batch_size, n_steps, small_at, seed=0):
    """n_steps batches of random CIFAR-shaped images, labels and per-sample alphas (soft targets from the first
    capture on); the batch at `small_at` is smaller, like the last batch of an epoch."""
    g = torch.Generator(device=device).manual_seed(seed)
    batches = []
    for i in range(n_steps):
        b = batch_size * 5 // 8 if i == small_at else batch_size
        batches.append((torch.randn(b, 3, 32, 32, device=device, generator=g).contiguous(
                            memory_format=torch.channels_last),
                        torch.randint(0, 10, (b,), device=device, generator=g),
                        torch.rand(b, device=device, generator=g) * (i >= 2)))
    return batches


def make_pair(device, arch, lr=0.02):
    torch.manual_seed(0)
    nets = [build_model(arch, 10).to(device, memory_format=torch.channels_last) for _ in range(2)]
    return nets, make_optimizer(nets, argparse.Namespace(lr=lr, momentum=0.9, weight_decay=5e-4), device)


def make_steps(device, arch, precision, batch_size):
    """The two pairs and their steps: (name, nets, optimizer, step function) for eager and captured."""
    modes = []
    for captured in (False, True):
        nets, optimizer = make_pair(device, arch)
        if device.type == "cuda":
            step = TrainStep(*nets, optimizer, precision, batch_size, cuda_graph=captured)
        elif captured:  # no graph on a CPU: the captured run's eager step, gradient tensors zeroed in place
            step = (lambda n, o: lambda x, y, a: train_step(*n, o, x, y, a, precision, keep_grad_tensors=True))(
                nets, optimizer)
        else:
            step = TrainStep(*nets, optimizer, precision, batch_size)
        name = ("captured" if device.type == "cuda" else "grads in place") if captured else "eager"
        modes.append((name, nets, optimizer, step))
    return modes


def state_of(nets, optimizer):
    """Every tensor the step updates, by quantity: parameters, gradients, momentum, BatchNorm statistics."""
    params = [p for net in nets for p in net.parameters()]
    return {"parameters": [p.detach().clone() for p in params],
            "gradients": [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params],
            "momentum": [optimizer.state[p]["momentum_buffer"].clone() if "momentum_buffer" in optimizer.state[p]
                         else torch.zeros_like(p) for p in params],
            "BatchNorm statistics": [b.float().clone() for net in nets for b in net.buffers()]}


def largest_difference(a, b):
    """(largest absolute difference, largest magnitude) over two lists of tensors."""
    diff = max(((x.float() - y.float()).abs().max().item() for x, y in zip(a, b) if x.numel()), default=0.0)
    return diff, max((y.float().abs().max().item() for y in b if y.numel()), default=0.0)


def merge(worst, quantity, difference):
    """Keep the largest difference (and the largest magnitude) seen for a quantity."""
    old = worst.get(quantity, (0.0, 0.0))
    worst[quantity] = (max(old[0], difference[0]), max(old[1], difference[1]))


def compare(device, arch, precision, batch_size, n_steps=12, small_at=6, lr_change_at=9):
    """Step both modes in lockstep: ({quantity: (largest difference, largest magnitude) over all steps}, the modes)."""
    modes = make_steps(device, arch, precision, batch_size)
    batches = make_batches(device, batch_size, n_steps, small_at)
    worst, kept_outputs = {}, {name: [] for name, *_ in modes}
    before = [state_of(nets, opt) for _, nets, opt, _ in modes]
    for i, (x, y, alphas) in enumerate(batches):
        for name, nets, optimizer, step in modes:
            if i == lr_change_at:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.1
            kept_outputs[name].append(step(x, y, alphas))  # as returned: a later replay must not change them
        after = [state_of(nets, opt) for _, nets, opt, _ in modes]
        for quantity in after[0]:
            merge(worst, quantity, largest_difference(after[0][quantity], after[1][quantity]))
        updates = [[a - b for a, b in zip(after[k]["parameters"], before[k]["parameters"])] for k in range(2)]
        merge(worst, "parameter updates", largest_difference(*updates))
        before = after
    eager, captured = (kept_outputs[name] for name, *_ in modes)
    for i in range(n_steps):  # compared only now, after every replay
        for name, u, v in zip(OUTPUTS, eager[i], captured[i]):
            merge(worst, name, largest_difference([u], [v]))
    return worst, modes


def ms_per_step(step, device, batch_size, n):
    """Milliseconds per full-batch step after a warm-up (CUDA events on a GPU)."""
    batches = make_batches(device, batch_size, 4, small_at=-1, seed=1)
    for x, y, a in batches:
        step(x, y, a)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for k in range(n):
        step(*batches[k % len(batches)])
    if device.type == "cuda":
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    return (time.perf_counter() - t0) * 1000 / n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="bf16,fp32", help="comma-separated precisions to check")
    p.add_argument("--arch", default="preresnet18", choices=sorted(ARCHS), help="network of teacher and student")
    p.add_argument("--batch_size", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    p.add_argument("--timing_steps", type=int, default=20, help="steps timed per mode")
    args = p.parse_args()
    rows, ok = [], True
    try:
        device = get_device(args.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = False  # the same kernels in both modes, so differences mean something
            torch.backends.cudnn.deterministic = True
        batch_size = args.batch_size or (128 if device.type == "cuda" else 8)
        for name, value in versions(device):
            print(f"{name}: {value}", flush=True)
        for precision in args.precision.split(","):
            t0 = time.perf_counter()
            worst, modes = compare(device, args.arch, precision, batch_size)
            for quantity, (difference, magnitude) in worst.items():
                good = difference <= TOLERANCE[precision] * magnitude
                ok &= good
                rows.append((f"{precision}: {quantity}", f"{difference:.3g} (of values up to {magnitude:.3g})",
                             "ok" if good else "MISMATCH"))
            print(f"{precision}: compared in {time.perf_counter() - t0:.1f} s", flush=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for name, _, _, step in modes:
                rows.append((f"{precision}: ms per step, {name}",
                             f"{ms_per_step(step, device, batch_size, args.timing_steps):.2f}", ""))
            if device.type == "cuda":
                rows.append((f"{precision}: peak device memory", f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB",
                             ""))
    except Exception:  # the whole story, chained exceptions included: the point of a smoke check
        traceback.print_exc()
        rows.append(("error", "see the traceback above", "FAILED"))
        ok = False
    width = max([len(r[0]) for r in rows] + [8])
    print(f"\n| {'quantity'.ljust(width)} | largest difference / value | verdict |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for quantity, value, verdict in rows:
        print(f"| {quantity.ljust(width)} | {value} | {verdict} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
