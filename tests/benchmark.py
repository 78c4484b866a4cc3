"""Throughput benchmark of the training fast path against a baseline written the reference's way.

    python tests/benchmark.py                 # default: PreResNet18 pair, batch 128, 50,000 CIFAR-shaped images
    python tests/benchmark.py --compile       # with torch.compile
    python tests/benchmark.py --arch small_cnn --n_images 4000 --device cpu   # the CPU pipeline-cost check

Prints training images/s, full-set pass images/s, peak device memory and the projected wall time of a default
300-epoch run for the fast path, then the same training figure for the reference-style baseline (PIL images,
torchvision transforms, DataLoader with 4 workers, fp32) on the same device, and their ratio. On CUDA it also
prints model FLOP utilisation against the device's bf16 peak. Not a test: pytest does not collect it.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import MEAN_STD  # noqa: E402
from data.pipeline import DeviceBatches, to_device_images  # noqa: E402
from models import ARCHS, build_model  # noqa: E402
from utils.engine import agreement_pass, get_device, make_optimizer, resolve_precision, train_step  # noqa: E402

BF16_PEAK_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "H800": 989, "A100": 312, "L40S": 362, "A10": 125}


class Timer:
    """Wall time of a region; on CUDA measured with events around the queued work."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(model, device):
    """Multiply-accumulates x 2 of one forward pass of one 32x32 image, counted from conv and linear layers."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += 2 * output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32, device=device))
    for h in handles:
        h.remove()
    return total


def fast_path(args, images, labels, device, precision):
    """Images/s of training and of the full-set pass with the project's own pipeline and step."""
    torch.manual_seed(0)
    nets = [build_model(args.arch, 10).to(device, memory_format=torch.channels_last) for _ in range(2)]
    runs = [torch.compile(n) for n in nets] if args.compile else nets
    optimizer = make_optimizer(nets, argparse.Namespace(lr=0.02, momentum=0.9, weight_decay=5e-4), device)
    g = torch.Generator(device=device).manual_seed(0)
    padded = to_device_images(images, "reflect", device)
    labels = torch.as_tensor(labels, device=device)
    common = dict(mean_std=MEAN_STD["cifar10"], flip_first=True, generator=g, channels_last=True)
    train = DeviceBatches(padded, labels, None, batch_size=args.batch_size, augment=True, shuffle=True, **common)
    full = DeviceBatches(padded, labels, None, batch_size=args.eval_batch_size, augment=True, **common)
    alphas = torch.zeros(args.batch_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def steps(n):
        done = 0
        for _ in range(n // len(train) + 1):
            for x, y, pos in train:
                if len(y) < args.batch_size:
                    continue  # keep one batch shape (compile)
                train_step(*runs, optimizer, x, y, alphas, precision)
                done += 1
                if done == n:
                    return
    steps(args.warmup)
    with Timer(device) as t_train:
        steps(args.steps)
    agreement_pass(*runs, full, precision)  # warm-up (and compile) of the evaluation path
    with Timer(device) as t_full:
        agreement_pass(*runs, full, precision)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")

    # pipeline cost alone: making the batches, no network
    with Timer(device) as t_pipe:
        made = 0
        for x, y, pos in train:
            made += 1
            if made == args.steps:
                break
    return (args.steps * args.batch_size / t_train.seconds, len(images) / t_full.seconds, peak,
            t_pipe.seconds / made, t_train.seconds / args.steps, forward_flops(nets[0], device))


def reference_baseline(args, images, labels, device):
    """Images/s of the same step fed the reference's way: PIL images, torchvision transforms in 4 workers, fp32."""
    import torchvision.transforms as T
    from PIL import Image

    class PILDataset(torch.utils.data.Dataset):
        def __init__(self):
            self.transform = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4, padding_mode="reflect"),
                                        T.ToTensor(), T.Normalize(*MEAN_STD["cifar10"])])

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(images[i])), int(labels[i]), i

    torch.manual_seed(0)
    nets = [build_model(args.arch, 10).to(device) for _ in range(2)]
    params = [p for n in nets for p in n.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(PILDataset(), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.baseline_workers, drop_last=True,
                                         pin_memory=device.type == "cuda", persistent_workers=args.baseline_workers > 0)
    alphas = torch.zeros(args.batch_size, device=device)

    def steps(n):
        done = 0
        while True:
            for x, y, _ in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                train_step(*nets, optimizer, x, y, alphas, "fp32")
                done += 1
                if done == n:
                    return
    steps(args.warmup)
    sync(device)
    t0 = time.perf_counter()
    steps(args.steps)
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="preresnet18", choices=sorted(ARCHS), help="network of teacher and student")
    p.add_argument("--n_images", type=int, default=50000, help="size of the CIFAR-shaped stand-in training set")
    p.add_argument("--batch_size", type=int, default=128, help="training batch size")
    p.add_argument("--eval_batch_size", type=int, default=1024, help="batch size of the full-set pass")
    p.add_argument("--steps", type=int, default=100, help="timed training steps")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (cudnn autotuning, compile)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--baseline_workers", type=int, default=4, help="DataLoader workers of the reference-style baseline")
    p.add_argument("--no_baseline", action="store_true", help="skip the reference-style baseline")
    p.add_argument("--epochs", type=int, default=300, help="epochs of the projected run")
    p.add_argument("--tipping_epoch", type=int, default=30,
                   help="assumed tipping epoch of the projection (full-set passes run until it is found, +3)")
    args = p.parse_args()
    device = get_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n_images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n_images)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {args.arch} pair, batch {args.batch_size}, "
          f"{args.n_images} images, precision {precision}, compile {args.compile}")

    train_ips, full_ips, peak, pipe_s, step_s, flops = fast_path(args, images, labels, device, precision)
    # a default run: 300 epochs over 90 % of the images, validation (10 %) and test (10,000) every 10 epochs,
    # and a full-set pass after each epoch until the tipping point is found
    n_train, n_val = int(args.n_images * 0.9), int(args.n_images * 0.1)
    evals = args.epochs // 10 + 1
    projected = (args.epochs * n_train / train_ips + (args.tipping_epoch + 3) * args.n_images / full_ips
                 + evals * (n_val + 10000) / full_ips)
    print(f"fast path   training: {train_ips:,.0f} images/s ({step_s * 1000:.1f} ms/step, of which making the batch "
          f"{pipe_s * 1000:.2f} ms = {100 * pipe_s / step_s:.1f} %)")
    print(f"fast path   full-set pass: {full_ips:,.0f} images/s")
    print(f"fast path   peak device memory: {peak:.2f} GiB" if device.type == "cuda" else
          "fast path   peak device memory: n/a on CPU")
    print(f"projected default run ({args.epochs} epochs, tipping at epoch {args.tipping_epoch}): "
          f"{projected / 60:.1f} min")
    if device.type == "cuda":
        peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        achieved = train_ips * 2 * 3 * flops / 1e12  # two networks, forward + backward = 3 x forward
        print(f"model FLOPs: {flops / 1e9:.2f} GFLOP per image per network forward; achieved {achieved:.1f} TFLOP/s"
              + (f", MFU {100 * achieved / peak_tflops:.1f} % of the {peak_tflops} TFLOP/s bf16 peak" if peak_tflops
                 else " (bf16 peak of this device unknown)"))
    if not args.no_baseline:
        base_ips = reference_baseline(args, images, labels, device)
        print(f"reference-style baseline training: {base_ips:,.0f} images/s "
              f"(PIL + torchvision transforms, DataLoader {args.baseline_workers} workers, fp32)")
        print(f"speed-up of the fast path: {train_ips / base_ips:.1f}x")


if __name__ == "__main__":
    main()
