"""Throughput benchmark of the training step the script uses, eager and captured, against a baseline written the
reference's way, and seconds per epoch of the training script itself.

    python tests/benchmark.py                 # default: PreResNet18 pair, batch 128, 50,000 CIFAR-shaped images
    python tests/benchmark.py --compile       # with torch.compile
    python tests/benchmark.py --arch small_cnn --n_images 4000 --device cpu   # the CPU pipeline-cost check

Prints, for utils.step.TrainStep (what blind_knowledge_dist_training.py calls) eager and, on CUDA, captured as a
CUDA graph: training images/s and ms per step; then the full-set pass, peak device memory, the reference-style
baseline (PIL images, torchvision transforms, DataLoader with 4 workers, fp32) on the same device in the same run,
and the speed-up. With --loop_epochs (default 3 on CUDA, 0 on CPU) it also writes --n_images CIFAR-shaped random
images in the real CIFAR-10 file format and runs the training script on them for that many epochs: seconds per
pre-split epoch (training + full-set pass) and the projected wall time of a default 300-epoch run. On CUDA it
prints model FLOP utilisation against the device's bf16 peak. A table of the figures comes last.
Not a test: pytest does not collect it.
"""
import argparse
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import MEAN_STD  # noqa: E402
from data.pipeline import DeviceBatches, to_device_images  # noqa: E402
from models import ARCHS, build_model  # noqa: E402
from utils.engine import agreement_pass, get_device, make_optimizer, resolve_precision, train_step  # noqa: E402
from utils.step import TrainStep  # noqa: E402

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


def make_pair(args, device):
    torch.manual_seed(0)
    nets = [build_model(args.arch, 10).to(device, memory_format=torch.channels_last) for _ in range(2)]
    runs = [torch.compile(n) for n in nets] if args.compile else nets
    return nets, runs


def step_throughput(args, padded, labels, device, precision, cuda_graph):
    """(images/s, s per step, peak device memory in GiB) of TrainStep on full batches of the project's pipeline."""
    nets, runs = make_pair(args, device)
    optimizer = make_optimizer(nets, argparse.Namespace(lr=0.02, momentum=0.9, weight_decay=5e-4), device)
    step = TrainStep(*runs, optimizer, precision, args.batch_size, cuda_graph=cuda_graph)
    g = torch.Generator(device=device).manual_seed(0)
    train = DeviceBatches(padded, labels, None, MEAN_STD["cifar10"], args.batch_size, augment=True, shuffle=True,
                          generator=g, channels_last=True)
    alphas = torch.zeros(args.batch_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def steps(n):
        done = 0
        while True:
            for x, y, pos in train:
                if len(y) < args.batch_size:
                    continue  # full batches only: the figure is the steady state
                step(x, y, alphas)
                done += 1
                if done == n:
                    return
    steps(args.warmup)  # includes TrainStep's own warm-up and the capture
    with Timer(device) as t:
        steps(args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return args.steps * args.batch_size / t.seconds, t.seconds / args.steps, peak


def pass_and_pipeline(args, padded, labels, device, precision):
    """(full-set pass images/s, s to make one training batch) with the project's pipeline."""
    nets, runs = make_pair(args, device)
    g = torch.Generator(device=device).manual_seed(0)
    common = dict(mean_std=MEAN_STD["cifar10"], flip_first=True, generator=g, channels_last=True)
    full = DeviceBatches(padded, labels, None, batch_size=args.eval_batch_size, augment=True, **common)
    train = DeviceBatches(padded, labels, None, batch_size=args.batch_size, augment=True, shuffle=True, **common)
    agreement_pass(*runs, full, precision)  # warm-up (and compile) of the evaluation path
    with Timer(device) as t_full:
        agreement_pass(*runs, full, precision)
    with Timer(device) as t_pipe:  # making the batches alone, no network
        for made, batch in enumerate(train, start=1):
            if made == args.steps:
                break
    return len(padded) / t_full.seconds, t_pipe.seconds / made


def write_fake_cifar(folder, n_images, rng):
    """n_images random CIFAR-shaped training images (and a tenth as many test images, at most 10,000) in the real
    CIFAR-10 file layout, with a CIFAR-N-style label file whose 'worse_label' is 40 % wrong."""
    batches = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(batches)
    labels = rng.integers(0, 10, n_images)
    n_test = min(10000, max(n_images // 10, 1))
    parts = np.array_split(np.arange(n_images), 5)
    for i, part in enumerate(parts, start=1):
        with open(os.path.join(batches, f"data_batch_{i}"), "wb") as f:
            pickle.dump({b"labels": labels[part].tolist(),
                         b"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8)}, f, protocol=2)
    with open(os.path.join(batches, "test_batch"), "wb") as f:
        pickle.dump({b"labels": rng.integers(0, 10, n_test).tolist(),
                     b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)}, f, protocol=2)
    noisy = np.where(rng.random(n_images) < 0.4, (labels + rng.integers(1, 10, n_images)) % 10, labels)
    with open(os.path.join(folder, "labels.pt"), "wb") as f:
        pickle.dump({"clean_label": labels, "worse_label": noisy}, f, protocol=2)


def real_loop(args, cuda_graph):
    """[(seconds of the epoch, seconds of its training steps)] of the training script itself, one per epoch, on
    CIFAR-shaped random images; the epochs before the split, so each includes the full-set pass."""
    with tempfile.TemporaryDirectory() as folder:
        write_fake_cifar(folder, args.n_images, np.random.default_rng(0))
        command = [sys.executable, os.path.join(ROOT, "blind_knowledge_dist_training.py"), "--dataset", "cifar10",
                   "--arch", args.arch, "--data_dir", folder, "--noise_path", os.path.join(folder, "labels.pt"),
                   "--results_dir", os.path.join(folder, "results"), "--n_epoch", str(args.loop_epochs),
                   "--batch_size", str(args.batch_size), "--precision", args.precision, "--device", args.device,
                   "--noisy_val_freq", "1000", "--clean_test_freq", "1000", "--print_freq", "1000000",
                   "--cuda_graph" if cuda_graph else "--no-cuda_graph"] + (["--compile"] if args.compile else [])
        out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"benchmark.py: the training script failed:\n{out.stderr[-2000:]}")
    return [(float(total), float(training)) for total, training in
            re.findall(r"^epoch \d+: student confidence [\d.]+, ([\d.]+) s \(training ([\d.]+) s\)", out.stdout, re.M)]


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
    p.add_argument("--steps", type=int, default=200, help="timed training steps")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (cudnn autotuning, capture, compile)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--baseline_workers", type=int, default=4, help="DataLoader workers of the reference-style baseline")
    p.add_argument("--no_baseline", action="store_true", help="skip the reference-style baseline")
    p.add_argument("--loop_epochs", type=int, default=None,
                   help="epochs of the training script on the stand-in images (0 = skip). Default: 3 on CUDA, 0 on CPU")
    p.add_argument("--epochs", type=int, default=300, help="epochs of the projected run")
    p.add_argument("--tipping_epoch", type=int, default=30,
                   help="assumed tipping epoch of the projection (full-set passes run until it is found, +2)")
    args = p.parse_args()
    device = get_device(args.device)
    precision = resolve_precision(args.precision, device)
    args.device = str(device)
    cuda = device.type == "cuda"
    loop_epochs = args.loop_epochs if args.loop_epochs is not None else (3 if cuda else 0)
    args.loop_epochs = loop_epochs
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n_images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n_images)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {args.arch} pair, batch {args.batch_size}, "
          f"{args.n_images} images, precision {precision}, compile {args.compile}")
    padded = to_device_images(images, "reflect", device)
    device_labels = torch.as_tensor(labels, device=device)
    rows = []  # (measure, value) of the table printed last

    modes = [("eager", False)] + ([("CUDA graph", True)] if cuda else [])
    step_ips = {}
    for mode, cuda_graph in modes:
        ips, step_s, peak = step_throughput(args, padded, device_labels, device, precision, cuda_graph)
        step_ips[mode] = ips
        print(f"training step, {mode}: {ips:,.0f} images/s ({step_s * 1000:.2f} ms/step)"
              + (f", peak device memory {peak:.2f} GiB" if cuda else ""))
        rows += [(f"training step, {mode}", f"{ips:,.0f} images/s ({step_s * 1000:.2f} ms/step)")]
        if cuda:
            rows += [(f"peak device memory, {mode}", f"{peak:.2f} GiB")]
    full_ips, pipe_s = pass_and_pipeline(args, padded, device_labels, device, precision)
    best_mode = max(step_ips, key=step_ips.get)
    print(f"full-set pass: {full_ips:,.0f} images/s; making a training batch: {pipe_s * 1000:.2f} ms "
          f"= {100 * pipe_s * step_ips[best_mode] / args.batch_size:.1f} % of a {best_mode} step")
    rows += [("full-set pass", f"{full_ips:,.0f} images/s")]
    if cuda:
        flops = forward_flops(make_pair(args, device)[0][0], device)
        peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        achieved = step_ips[best_mode] * 2 * 3 * flops / 1e12  # two networks, forward + backward = 3 x forward
        print(f"model FLOPs: {flops / 1e9:.2f} GFLOP per image per network forward; achieved {achieved:.1f} TFLOP/s"
              + (f", MFU {100 * achieved / peak_tflops:.1f} % of the {peak_tflops} TFLOP/s bf16 peak" if peak_tflops
                 else " (bf16 peak of this device unknown)"))
        if peak_tflops:
            rows += [(f"MFU, {best_mode}", f"{100 * achieved / peak_tflops:.1f} %")]
    if not args.no_baseline:
        base_ips = reference_baseline(args, images, labels, device)
        print(f"reference-style baseline training: {base_ips:,.0f} images/s "
              f"(PIL + torchvision transforms, DataLoader {args.baseline_workers} workers, fp32)")
        rows += [("reference-style baseline", f"{base_ips:,.0f} images/s"),
                 (f"speed-up, {best_mode} step over the baseline", f"{step_ips[best_mode] / base_ips:.1f}x")]
    n_val, n_test = int(args.n_images * 0.1), min(10000, max(args.n_images // 10, 1))
    evals = args.epochs // 10 + 1  # validation and test every 10 epochs and at the last
    for mode, cuda_graph in modes if loop_epochs else []:
        epochs = real_loop(args, cuda_graph)
        later = epochs[1:] or epochs  # epoch 0 includes start-up: cuDNN autotuning, capture, compilation
        total, training = (float(np.mean(x)) for x in zip(*later))
        projected = (args.epochs * training + (args.tipping_epoch + 2) * (total - training)
                     + evals * (n_val + n_test) / full_ips)
        print(f"training script, {mode}: epoch 0 {epochs[0][0]:.1f} s, later epochs {total:.2f} s per pre-split epoch "
              f"(training {training:.2f} s); projected {args.epochs}-epoch run {projected / 60:.1f} min "
              f"(tipping epoch {args.tipping_epoch})")
        rows += [(f"training script, {mode}: s per pre-split epoch", f"{total:.2f} s (first epoch {epochs[0][0]:.1f} s)"),
                 (f"training script, {mode}: projected {args.epochs}-epoch run", f"{projected / 60:.1f} min")]
    width = max(len(m) for m, _ in rows)
    print("\n| " + "measure".ljust(width) + " | value |\n|" + "-" * (width + 2) + "|-------|")
    for measure, value in rows:
        print(f"| {measure.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
