"""Throughput benchmark of the training step the script uses, eager and captured, against a baseline written the
reference's way, and seconds per epoch of the training script itself.

    python tests/benchmark.py                 # default: PreResNet18 pair, batch 128, 50,000 CIFAR-shaped images
    python tests/benchmark.py --compile       # with torch.compile
    python tests/benchmark.py --arch small_cnn --n_images 4000 --device cpu   # the CPU pipeline-cost check
    python tests/benchmark.py --script_args="--deterministic"   # extra flags for the training script's loop

Prints, for utils.step.TrainStep (what blind_knowledge_dist_training.py calls) eager and, on CUDA, captured as a
CUDA graph: training images/s and ms per step; then the full-set pass, peak device memory, the reference-style
baseline (PIL images, torchvision transforms, DataLoader with 4 workers, fp32) on the same device in the same run,
and the speed-up. With --loop_epochs (default 3 on CUDA, 0 on CPU) it also writes --n_images CIFAR-shaped random
images in the real CIFAR-10 file format and runs the training script on them for that many epochs: seconds per
pre-split epoch (training + full-set pass) and the projected wall time of a default 300-epoch run. On CUDA it
prints model FLOP utilisation against the device's bf16 peak. For each mode it also counts the operations one
steady-state step dispatches (count_dispatched_ops): the launch-overhead proxy that a CPU can measure too.

Each measurement runs on its own: one that fails prints its traceback to stderr, shows as FAILED in the table, and
the others still run. The table of the figures always comes last; the exit code is 1 if a measurement failed.
Not a test: pytest does not collect it.
"""
import argparse
import collections
import functools
import io
import os
import pickle
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import MEAN_STD  # noqa: E402
from data.pipeline import DeviceBatches, to_device_images  # noqa: E402
from models import ARCHS, build_model  # noqa: E402
from utils.engine import agreement_pass, get_device, make_optimizer, resolve_precision, train_step  # noqa: E402
from utils.history import PassHistory  # noqa: E402
from utils.step import TrainStep  # noqa: E402
from utils.tipping import DEFAULT_RULE, history_slots  # noqa: E402

BF16_PEAK_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "H800": 989, "A100": 312, "L40S": 362, "A10": 125}
STDERR_TAIL_LINES = 40  # of the training script's stderr, in the error of a failed loop


class Table:
    """The figures printed last, one (measure, value) row each. A measurement that raises becomes a FAILED row."""

    def __init__(self):
        self.rows, self.failures = [], 0

    def add(self, measure, value):
        self.rows.append((measure, value))

    def measure(self, label, fn, *args):
        """fn(*args), or None if it raised: then its traceback (chained exceptions included) goes to stderr, the
        row `label | FAILED: <type>: <first line of the message>` to the table, and the benchmark goes on."""
        try:
            return fn(*args)
        except Exception as e:  # not KeyboardInterrupt: Ctrl-C still stops the benchmark
            self.failures += 1
            sys.stdout.flush()  # the figures printed so far come before the traceback in a shared log
            print(f"benchmark.py: {label}: failed", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            lines = str(e).strip().splitlines()
            self.add(label, f"FAILED: {type(e).__name__}" + (f": {lines[0]}" if lines else ""))
            return None

    def print(self):
        width = max([len("measure")] + [len(m) for m, _ in self.rows])
        print("\n| " + "measure".ljust(width) + " | value |\n|" + "-" * (width + 2) + "|-------|")
        for measure, value in self.rows:
            print(f"| {measure.ljust(width)} | {value} |")
        sys.stdout.flush()


class ScriptFailed(RuntimeError):
    """The training script exited with an error; the message's first line is its last line on stderr (usually
    the error itself), the rest is the tail of its stderr."""


@functools.lru_cache(None)
def is_view(name):
    """Whether an aten op does no work by itself: it only allocates (empty*, new_empty*), or the first return of
    each of its overloads that return tensors aliases an input without writing it (detach, t, expand, view, slice,
    as_strided, a to() that may return its input, ...). Overloads that return no tensor (TorchScript's slice.str)
    are not looked at. "aten::detach" -> True, "aten::add_" -> False."""
    op = name.split("::", 1)[1]
    if op.startswith("empty") or op.startswith("new_empty"):
        return True
    packet = getattr(torch.ops.aten, op, None)
    if packet is None:
        return False
    schemas = [getattr(packet, overload)._schema for overload in packet.overloads()]
    firsts = [s.returns[0] for s in schemas if s.returns and "Tensor" in str(s.returns[0].type)]
    return bool(firsts) and all(r.alias_info is not None and not r.alias_info.is_write for r in firsts)


def does_work(event):
    """A profiler event does work unless it is a view or a bare allocation none of whose aten descendants does
    (a to() that copies does: it calls _to_copy and copy_)."""
    return not is_view(event.name) or any(c.name.startswith("aten::") and does_work(c) for c in event.cpu_children)


def count_dispatched_ops(step_fn):
    """Counter {aten op name: count} of the operations one call of step_fn dispatches that do work: the aten::
    events of a CPU profile with no aten:: ancestor (an op's own sub-ops are not counted again), except views and
    bare allocations (does_work). It depends on the code path only, not on timing or on the batch size."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_fn()
    counts = collections.Counter()
    for event in prof.events():
        if event.name.startswith("aten::") and not aten_ancestor(event) and does_work(event):
            counts[event.name] += 1
    return counts


def aten_ancestor(event):
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith("aten::"):
        parent = parent.cpu_parent
    return parent is not None


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


def make_step(args, device, precision, cuda_graph):
    """The training script's TrainStep on a fresh PreResNet (or --arch) pair and its SGD."""
    nets, runs = make_pair(args, device)
    optimizer = make_optimizer(nets, argparse.Namespace(lr=0.02, momentum=0.9, weight_decay=5e-4), device)
    return TrainStep(*runs, optimizer, precision, args.batch_size, cuda_graph=cuda_graph)


def full_batches(args, padded, labels, device):
    """Endless full training batches (x, y) of the project's pipeline: the steady state, never an epoch's last
    smaller batch."""
    if len(labels) < args.batch_size:
        raise ValueError(f"--n_images {len(labels)} is smaller than --batch_size {args.batch_size}: no full batch")
    g = torch.Generator(device=device).manual_seed(0)
    train = DeviceBatches(padded, labels, None, MEAN_STD["cifar10"], args.batch_size, augment=True, shuffle=True,
                          generator=g, channels_last=True)
    while True:
        for x, y, pos in train:
            if len(y) == args.batch_size:
                yield x, y


def step_throughput(args, padded, labels, device, precision, cuda_graph):
    """(images/s, s per step, peak device memory in GiB) of TrainStep on full batches of the project's pipeline."""
    step = make_step(args, device, precision, cuda_graph)
    batches = full_batches(args, padded, labels, device)
    alphas = torch.zeros(args.batch_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def steps(n):
        for _ in range(n):
            step(*next(batches), alphas)
    steps(args.warmup)  # includes TrainStep's own warm-up and the capture
    with Timer(device) as t:
        steps(args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return args.steps * args.batch_size / t.seconds, t.seconds / args.steps, peak


def ops_per_step(args, padded, labels, device, precision, cuda_graph):
    """count_dispatched_ops of one steady-state TrainStep call, after its eager warm-up steps and, with
    cuda_graph on CUDA, the capture: that call is a replay, and its launch counts as one "cuda graph launch"."""
    step = make_step(args, device, precision, cuda_graph)
    batches = full_batches(args, padded, labels, device)
    alphas = torch.zeros(args.batch_size, device=device)
    for _ in range(step.warmup + 1):  # warm-up steps (SGD's momentum buffers, cuDNN), then capture + first replay
        step(*next(batches), alphas)
    x, y = next(batches)
    ops = count_dispatched_ops(lambda: step(x, y, alphas))
    if step.graph is not None:
        ops["cuda graph launch"] += 1
    sync(device)
    return ops


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


def pass_history_memory(args, device):
    """(slots, bytes of its host tensors, bytes it leaves allocated on a CUDA device (None on a CPU), bytes in a saved
    state) of the pass history the training script keeps until the split (utils.history.PassHistory), for --n_images
    images of --history_classes classes, filled as the script fills it: from passes made on the training device."""
    slots = history_slots(DEFAULT_RULE)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else None
    history = PassHistory(slots, args.n_images, args.history_classes)
    for slot in range(slots):
        history.add(slot, slot, torch.full((args.n_images,), 0.5, device=device),
                    torch.full((args.n_images, args.history_classes), 0.5, device=device),
                    torch.ones(args.n_images, dtype=torch.long, device=device))
    on_device = torch.cuda.memory_allocated(device) - before if cuda else None
    saved = io.BytesIO()
    torch.save(history.state(), saved)
    return slots, history.nbytes(), on_device, saved.tell()


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
    CIFAR-shaped random images; the epochs before the split, so each includes the full-set pass. --script_args
    go to the script last. Raises ScriptFailed, with the tail of the script's stderr, if the script fails."""
    with tempfile.TemporaryDirectory() as folder:
        write_fake_cifar(folder, args.n_images, np.random.default_rng(0))
        command = [sys.executable, os.path.join(ROOT, "blind_knowledge_dist_training.py"), "--dataset", "cifar10",
                   "--arch", args.arch, "--data_dir", folder, "--noise_path", os.path.join(folder, "labels.pt"),
                   "--results_dir", os.path.join(folder, "results"), "--n_epoch", str(args.loop_epochs),
                   "--batch_size", str(args.batch_size), "--precision", args.precision, "--device", args.device,
                   "--noisy_val_freq", "1000", "--clean_test_freq", "1000", "--print_freq", "1000000",
                   "--cuda_graph" if cuda_graph else "--no-cuda_graph"] + (["--compile"] if args.compile else [])
        out = subprocess.run(command + shlex.split(args.script_args), capture_output=True, text=True)
    if out.returncode != 0:
        tail = out.stderr.rstrip().splitlines()[-STDERR_TAIL_LINES:]
        raise ScriptFailed(f"the training script exited with code {out.returncode}: "
                           f"{tail[-1].strip() if tail else '(nothing on stderr)'}\n"
                           + "".join(f"    {line}\n" for line in tail))
    epoch_line = r"^epoch \d+: student confidence [\d.]+, ([\d.]+) s \(training ([\d.]+) s\)"
    epochs = [(float(total), float(training)) for total, training in re.findall(epoch_line, out.stdout, re.M)]
    if not epochs:
        raise RuntimeError("the training script printed no epoch line (student confidence, seconds); its output "
                           "ended with:\n" + out.stdout[-2000:])
    return epochs


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
        while done < n:  # n = 0: no step
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
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: fp32, as the scripts")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--baseline_workers", type=int, default=4, help="DataLoader workers of the reference-style baseline")
    p.add_argument("--no_baseline", action="store_true", help="skip the reference-style baseline")
    p.add_argument("--history_classes", type=int, default=100,
                   help="classes of the pass-history memory figure (100: CIFAR-100 sizes with the default images)")
    p.add_argument("--loop_epochs", type=int, default=None,
                   help="epochs of the training script on the stand-in images (0 = skip). Default: 3 on CUDA, 0 on CPU")
    p.add_argument("--epochs", type=int, default=300, help="epochs of the projected run")
    p.add_argument("--tipping_epoch", type=int, default=30,
                   help="assumed tipping epoch of the projection (full-set passes run until it is found, +2)")
    p.add_argument("--script_args", default="",
                   help="extra flags for the training script's loop, split like a shell does and given after the "
                        "benchmark's own (so they override them), e.g. --script_args=\"--deterministic\"")
    args = p.parse_args()
    if args.steps < 1:
        p.error("--steps must be at least 1")
    device = get_device(args.device)
    precision = resolve_precision(args.precision)[0]
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
    table = Table()

    modes = [("eager", False)] + ([("CUDA graph", True)] if cuda else [])
    step_ips = {}  # images/s of the step modes that were measured
    for mode, cuda_graph in modes:
        measured = table.measure(f"training step, {mode}", step_throughput, args, padded, device_labels, device,
                                 precision, cuda_graph)
        if measured is not None:
            ips, step_s, peak = measured
            step_ips[mode] = ips
            print(f"training step, {mode}: {ips:,.0f} images/s ({step_s * 1000:.2f} ms/step)"
                  + (f", peak device memory {peak:.2f} GiB" if cuda else ""))
            table.add(f"training step, {mode}", f"{ips:,.0f} images/s ({step_s * 1000:.2f} ms/step)")
            if cuda:
                table.add(f"peak device memory, {mode}", f"{peak:.2f} GiB")
        ops = table.measure(f"ops dispatched per step, {mode}", ops_per_step, args, padded, device_labels, device,
                            precision, cuda_graph)
        if ops is not None:
            n_ops = sum(ops.values())
            listed = ", ".join(f"{op.split('::')[-1]} {n}" for op, n in ops.most_common(8))
            print(f"operations dispatched per step, {mode}: {n_ops} ({listed}{', ...' if len(ops) > 8 else ''})"
                  + ("; aten ops only, the kernels torch.compile generates are not counted" if args.compile else ""))
            table.add(f"ops dispatched per step, {mode}", f"{n_ops}")
    best_mode = max(step_ips, key=step_ips.get) if step_ips else None

    measured = table.measure("full-set pass", pass_and_pipeline, args, padded, device_labels, device, precision)
    full_ips = None
    if measured is not None:
        full_ips, pipe_s = measured
        print(f"full-set pass: {full_ips:,.0f} images/s; making a training batch: {pipe_s * 1000:.2f} ms"
              + (f" = {100 * pipe_s * step_ips[best_mode] / args.batch_size:.1f} % of a {best_mode} step"
                 if best_mode else ""))
        table.add("full-set pass", f"{full_ips:,.0f} images/s")

    measured = table.measure("pass history until the split", pass_history_memory, args, device)
    if measured is not None:
        slots, in_memory, on_device, saved = measured
        device_part = "" if on_device is None else f", {on_device / 2**20:.1f} MiB left on the device"
        print(f"pass history until the split ({slots} passes, {args.n_images} images x {args.history_classes} "
              f"classes): {in_memory / 2**20:.1f} MiB of host tensors{device_part}, {saved / 2**20:.1f} MiB in the "
              f"saved state")
        table.add("pass history until the split", f"{in_memory / 2**20:.1f} MiB host{device_part}, "
                                                  f"{saved / 2**20:.1f} MiB saved")

    if cuda:
        flops = table.measure("MFU", lambda: forward_flops(make_pair(args, device)[0][0], device))
        peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        if flops is not None and best_mode:
            achieved = step_ips[best_mode] * 2 * 3 * flops / 1e12  # two networks, forward + backward = 3 x forward
            print(f"model FLOPs: {flops / 1e9:.2f} GFLOP per image per network forward; achieved {achieved:.1f} "
                  f"TFLOP/s" + (f", MFU {100 * achieved / peak_tflops:.1f} % of the {peak_tflops} TFLOP/s bf16 peak"
                                if peak_tflops else " (bf16 peak of this device unknown)"))
            if peak_tflops:
                table.add(f"MFU, {best_mode}", f"{100 * achieved / peak_tflops:.1f} %")
        elif flops is not None:
            table.add("MFU", "not computed: no training step figure")

    if not args.no_baseline:
        base_ips = table.measure("reference-style baseline", reference_baseline, args, images, labels, device)
        if base_ips is not None:
            print(f"reference-style baseline training: {base_ips:,.0f} images/s "
                  f"(PIL + torchvision transforms, DataLoader {args.baseline_workers} workers, fp32)")
            table.add("reference-style baseline", f"{base_ips:,.0f} images/s")
            if best_mode:
                table.add(f"speed-up, {best_mode} step over the baseline", f"{step_ips[best_mode] / base_ips:.1f}x")

    n_val, n_test = int(args.n_images * 0.1), min(10000, max(args.n_images // 10, 1))
    evals = args.epochs // 10 + 1  # validation and test every 10 epochs and at the last
    for mode, cuda_graph in modes if loop_epochs else []:
        epochs = table.measure(f"training script, {mode}: s per pre-split epoch", real_loop, args, cuda_graph)
        if epochs is None:
            continue
        later = epochs[1:] or epochs  # epoch 0 includes start-up: cuDNN autotuning, capture, compilation
        total, training = (float(np.mean(x)) for x in zip(*later))
        if full_ips is not None:
            projected = (args.epochs * training + (args.tipping_epoch + 2) * (total - training)
                         + evals * (n_val + n_test) / full_ips)
            projection = f"{projected / 60:.1f} min"
        else:  # the projection's evaluations are timed by the full-set pass
            projection = "not computed: no full-set pass figure"
        print(f"training script, {mode}: epoch 0 {epochs[0][0]:.1f} s, later epochs {total:.2f} s per pre-split epoch "
              f"(training {training:.2f} s); projected {args.epochs}-epoch run {projection} "
              f"(tipping epoch {args.tipping_epoch})")
        table.add(f"training script, {mode}: s per pre-split epoch",
                  f"{total:.2f} s (first epoch {epochs[0][0]:.1f} s)")
        table.add(f"training script, {mode}: projected {args.epochs}-epoch run", projection)

    table.print()
    return 1 if table.failures else 0


if __name__ == "__main__":
    sys.exit(main())
