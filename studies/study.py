"""Shared by the studies (studies/*_study.py): the label sets they are chosen and confirmed on, many training runs, a
few at a time, each reused once finished and resumed where it stopped; paired statistics over seeds; markdown tables.

A study is a grid of runs that differ in one thing (a rule, precision, label fixes) and share everything else,
including the seeds: the paired difference over seeds then measures that one thing, free of the seed-to-seed spread.
A rule is chosen on some label sets and confirmed on others from sources that choice had not seen; the worst confirmed
row decides. Which sources a choice has seen grows with every round: the first studies confirmed on CONFIRMED_ON, the
flagged cut's second round was chosen on those too (so they no longer confirm anything), and the studies of the
learning guard and the final judgement (studies/learning_study.py, studies/ranking_study.py) were chosen on all four
sources used so far (CHOSEN_SOURCES) and confirmed on drawings none of them had seen (NEW_SOURCES)."""
import json
import math
import os
import shlex
import subprocess
import sys
import time

import numpy as np
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run.sh's short schedule of the synthetic demo (its demo_flags): 24 epochs, a few minutes per run on a CPU
DEMO_FLAGS = ["--n_epoch", "24", "--lr", "0.1", "--lr_decay_every", "5", "--print_freq", "10",
              "--noisy_val_freq", "3", "--clean_test_freq", "3"]


# ---------------------------------------------------------------------------- label sets
STUDY_DATA = os.path.expanduser("~/data/study")  # where studies/make_study_npz.py writes its files
# The tipping rule, the fix policies and the first round of the flagged cut were chosen on the synthetic stand-in
# (CIFAR-10N's label sets) and scikit-learn's digits, and confirmed on Fashion-MNIST's photos and Animal-MNIST's
# drawings, which the second round of the cut was then chosen on as well: only MNIST confirmed that round
# (flag_study.md). The studies that use CONFIRMED_ON today replay those rounds; new choices confirm on NEW_SOURCES.
CONFIRMING_SOURCES = ("fashion", "animals", "mnist")
CONFIRMED_ON = ("fashion uniform 20", "fashion pair 25", "animals uniform 20", "animals pair 25", "mnist uniform 20",
                "mnist pair 25")


class LabelSet:
    """A label set of the studies by name: 'synthetic <noise type>' or '<source> <noise model> <percent>' (a file of
    studies/make_study_npz.py in study_data). Its training flags, the folder its runs go to, and its run's name."""

    def __init__(self, name, study_data=STUDY_DATA):
        self.name = name
        words = name.split()
        self.part = "confirmed on" if words[0] in CONFIRMING_SOURCES else "chosen on"  # by its source
        if words[0] == "synthetic" and len(words) == 2:
            self.flags, self.run_name = ["--dataset", "synthetic", "--noise_type", words[1]], f"synthetic_{words[1]}"
        elif len(words) == 3:
            self.path = os.path.join(study_data, "_".join(words) + ".npz")
            self.flags, self.run_name = ["--dataset", "npz", "--data_dir", self.path, "--arch", "small_cnn"], "npz_given"
        else:
            raise ValueError(f"unknown label set {name!r}: 'synthetic <noise type>' or '<source> <noise> <percent>'")
        self.folder = "_".join(words)

    def data(self):
        """Its Dataset (the labels the runs train with, and the ground truth that scores them)."""
        sys.path.insert(0, ROOT)
        from data import load_dataset
        if self.flags[1] == "synthetic":
            return load_dataset("synthetic", self.flags[3], None)
        return load_dataset("npz", "given", self.path)

    def missing_file(self):
        """A line saying how to make the label set's file, or None when it is there (or needs none)."""
        path = getattr(self, "path", None)
        if path is None or os.path.isfile(path):
            return None
        return (f"{path}: no such file; make it with python studies/make_study_npz.py --out {os.path.dirname(path)} "
                f"(see its --help for what it needs)")


# ---------------------------------------------------------------------------- the grid of the learning and ranking studies
# studies/learning_study.py (clean test accuracy) and studies/ranking_study.py (which labels are wrong) share their runs:
# every label set of these sources, clean and with wrong labels, under every schedule, seed and method
CHOSEN_SOURCES = ("digits", "fashion", "animals", "mnist")  # what the choices of issues 37 and 38 were made on
NEW_SOURCES = ("doodles", "emoji")  # drawings no choice saw: they confirm
NOISES = ("uniform 0", "uniform 20", "pair 25")
EVERY_EPOCH = ["--print_freq", "100", "--noisy_val_freq", "1", "--clean_test_freq", "1"]
STUDY_SCHEDULES = {  # name: the training flags (validation and test every epoch: the curves, and the best epoch)
    "demo": ["--n_epoch", "24", "--lr", "0.1", "--lr_decay_every", "5"] + EVERY_EPOCH,  # run.sh's demo
    "long": ["--n_epoch", "60", "--lr", "0.1", "--lr_decay_every", "30"] + EVERY_EPOCH,  # 30 epochs at 0.1, 30 at 0.01
    # the long schedule with a network large for the data (1.6 M parameters, 60 training images per class): one
    # network with plain cross-entropy memorises the wrong labels there (studies/learning_study.py shows its fit of them)
    "memorise": ["--n_epoch", "60", "--lr", "0.1", "--lr_decay_every", "30", "--arch", "wide_cnn"] + EVERY_EPOCH,
}
# the memorise schedule's sources (their small versions), one chosen on and both new ones
SMALL_SOURCES = {"fashion": "fashion-small", "doodles": "doodles-small", "emoji": "emoji-small",
                 "solar": "solar-small", "letters": "letters-small"}
BKD_METHODS = {  # name: the training script's flags (the sources are own data: the robust recipe by default)
    "plateau": ["--tipping_rule", "plateau", "--record_passes"],  # the robust recipe, its guard on; its passes recorded
    "noguard": ["--tipping_rule", "plateau", "--no-guard", "--record_passes"],  # the plateau rule, never going back
    "reference": ["--tipping_rule", "reference"],  # the paper's method (the reference recipe's training exactly)
    "none": ["--tipping_rule", "none", "--record_passes"],  # never split (the pair of networks, one-hot throughout)
    "ce": ["--recipe", "ce"],  # plain cross-entropy: one network in the same pipeline (the baseline)
}
TRAINING = os.path.join(ROOT, "blind_knowledge_dist_training.py")


def label_sets(sources, noises=NOISES, schedule=None):
    """The label sets of the sources (studies/make_study_npz.py's files), or, for the memorise schedule, those of the
    sources' small versions that it has (SMALL_SOURCES)."""
    if schedule == "memorise":
        sources = [SMALL_SOURCES[s] for s in sources if s in SMALL_SOURCES]
    return [f"{source} {noise}" for source in sources for noise in noises]


def confirming(name):
    """Whether a label set of the grid comes from a source no choice saw (NEW_SOURCES, or a small version of one)."""
    return name.split()[0].removesuffix("-small") in NEW_SOURCES


def grid_run(results_dir, schedule, method, name, seed, study_data=STUDY_DATA):
    """The Run of a BKD method (BKD_METHODS) on a label set, seed and schedule of the grid."""
    ls = LabelSet(name, study_data)
    out = os.path.join(results_dir, "runs", schedule, method, ls.folder)
    flags = ls.flags + ["--seed", seed, "--results_dir", out] + BKD_METHODS[method] + STUDY_SCHEDULES[schedule]
    recipe = flags[flags.index("--recipe") + 1] if "--recipe" in flags else "robust"  # the sources' default: robust
    return Run(TRAINING, flags, os.path.join(out, f"{ls.run_name}_seed_{seed}" + ("" if recipe == "robust" else
                                                                                   f"_{recipe}")))


def guarded_run(results_dir, schedule, name, seed, study_data=STUDY_DATA):
    """The run of the default rule (its guard on) of a cell, and whether it must be trained: up to the guard's
    decision a run with the guard is the run without it (the same steps, the same noisy-validation curve), and it
    differs only where the guard goes back. So where the finished run without the guard shows (utils.watch, replayed
    on its curve) that the guard would not have gone back, that run is the guarded one too, and nothing is trained."""
    guarded = grid_run(results_dir, schedule, "plateau", name, seed, study_data)
    if guarded.metrics() is not None:
        return guarded, False
    unguarded = grid_run(results_dir, schedule, "noguard", name, seed, study_data)
    metrics = unguarded.metrics()
    if metrics is not None and not guard_goes_back(metrics):
        return unguarded, False
    return guarded, True


def guard_goes_back(metrics):
    """Whether the guard would go back in a finished run of the default rule without it (watch_replay)."""
    return watch_replay(metrics, guard=True)[0]


def watch_replay(metrics, guard=False):
    """(whether the guard goes back, whether the accuracy falls clearly: the warning) of utils.watch replayed epoch by
    epoch after the split on a finished run's noisy-validation curve, as a run makes them (with the guard: up to its
    going back); (False, False) for a run that did not split or was not validated every epoch."""
    sys.path.insert(0, ROOT)
    from utils.watch import Watch
    split = metrics["tipping_found_epoch"]
    curve = metrics.get("val_every_epoch") or [v["accuracy"] for v in metrics["val"]]  # runs of before the watch
    if split is None or len(curve) != len(metrics["confidence"]):  # validated every epoch: the grid's runs are
        return False, False
    watch = Watch(guard=guard)
    watch.snapshot = {} if guard else None  # stands for the networks of the split
    replay = dict(tipping_found_epoch=split, warnings=[], watch=None)
    for epoch in range(split + 1, len(curve)):
        replay["val_every_epoch"] = curve[:epoch + 1]
        warning, back = watch.check(replay, epoch)
        if warning:
            replay["warnings"].append(warning)
        if back:
            return True, bool(replay["warnings"])
    return False, bool(replay["warnings"])


def schedule_values(schedule):
    """(epochs, learning rate, epochs between its steps) of a schedule's flags."""
    flags = STUDY_SCHEDULES[schedule] if isinstance(schedule, str) else schedule
    return tuple(float(flags[flags.index(flag) + 1]) for flag in ("--n_epoch", "--lr", "--lr_decay_every"))


def train_one_network(data, train_positions, seed, schedule, on_epoch=None, arch="small_cnn"):
    """One network trained with plain cross-entropy on the noisy labels of data's images at train_positions, with the
    training script's augmentation, batches, optimizer (SGD, momentum 0.9, weight decay 5e-4) and schedule (a name of
    STUDY_SCHEDULES or its flags), on the CPU: the peer's folds (studies/flag_study.py, cleanlab's cross-validation of
    images the product's pipeline has no notion of), and the former plain cross-entropy of the learning study, which
    --recipe ce replaced (studies/ce_pipeline_study.py compares the two). on_epoch(epoch, predict) is called after every epoch, where
    predict(images (N, S, S, 3) uint8) gives the network's softmax (N, C) without augmentation. Returns predict and
    the image-epochs it trained."""
    import torch
    from data.pipeline import DeviceBatches, to_device_images
    from models import build_model
    from utils.engine import seed_everything
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seed_everything(seed)
    n_epoch, lr, decay = (int(v) if k != 1 else v for k, v in enumerate(schedule_values(schedule)))
    flags = STUDY_SCHEDULES[schedule] if isinstance(schedule, str) else schedule
    arch = flags[flags.index("--arch") + 1] if "--arch" in flags else arch  # the schedule's network, if it names one
    pad_mode, flip_first = data.augment
    generator = torch.Generator().manual_seed(seed)
    common = dict(mean_std=data.mean_std, flip_first=flip_first, generator=generator, channels_last=True)
    train = DeviceBatches(to_device_images(data.train_images, pad_mode, torch.device("cpu")),
                          torch.as_tensor(data.noisy_labels), train_positions, batch_size=128, augment=True,
                          shuffle=True, **common)
    net = build_model(arch, data.num_classes).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay, gamma=0.1)

    @torch.inference_mode()
    def predict(images):
        net.eval()
        batches = DeviceBatches(to_device_images(images, pad_mode, torch.device("cpu")),
                                torch.zeros(len(images), dtype=torch.long), None, batch_size=256, **common)
        probs = np.zeros((len(images), data.num_classes), dtype=np.float32)
        for x, _, pos in batches:
            probs[pos.numpy()] = torch.softmax(net(x), dim=1).numpy()
        return probs
    for epoch in range(n_epoch):
        net.train()
        for x, y, _ in train:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, predict)
    return predict, n_epoch * len(train.indices)


def add_arguments(parser, results_dir):
    """The flags both studies share: the data, the training flags, how many runs at once, where the runs go."""
    parser.add_argument("--dataset", default="synthetic", help="a data set with ground truth (synthetic, cifar10, npz...)")
    parser.add_argument("--data_dir", default=None, help="its --data_dir, where it needs one")
    parser.add_argument("--noise_path", default=None, help="its --noise_path (CIFAR-N label file), where it needs one")
    parser.add_argument("--train_flags", default=" ".join(DEMO_FLAGS),
                        help="more flags of every training run (default: run.sh's schedule of the synthetic demo)")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (they share the CPU cores)")
    parser.add_argument("--results_dir", default=results_dir, help="where the runs and study.md go")


def data_flags(args, noise_type, seed):
    """The flags naming a run's data, label set and seed (the training script's, so every script takes them)."""
    flags = ["--dataset", args.dataset, "--noise_type", noise_type, "--seed", seed]
    return flags + [x for flag in ("data_dir", "noise_path") if getattr(args, flag)
                    for x in (f"--{flag}", getattr(args, flag))]


class Run:
    """One training run: the command (a script of the repository and its flags) and its run directory."""

    def __init__(self, script, flags, run_dir):
        self.script, self.flags, self.run_dir = script, [str(f) for f in flags], run_dir

    def metrics(self):
        """metrics.json of the run, or None while it is not finished."""
        try:
            with open(os.path.join(self.run_dir, "metrics.json")) as f:
                metrics = json.load(f)
        except (OSError, ValueError):
            return None
        return metrics if metrics.get("finished") else None

    def command(self):
        return [sys.executable, self.script, *self.flags, "--resume"]  # --resume: a fresh run, or go on where it stopped


def stop_if_missing(names, study_data, tool):
    """Exit with one line saying how to make the first of the label sets' files that is missing."""
    missing = [m for m in (LabelSet(n, study_data).missing_file() for n in names) if m]
    if missing:
        sys.exit(f"{tool}: {missing[0]}")


def write_study(path, text):
    """A study's tables: written to path (its folder made) and printed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(text)


def threads_per_job(jobs):
    """Torch threads for each of `jobs` concurrent runs: the machine's cores shared out (at least one)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def run_all(runs, jobs, label="runs"):
    """Train every run that is not finished, `jobs` at a time, each with its cores' share of torch threads (the
    thread count changes a CPU run's rounding, so every run of a study uses the same). Logs go to training.log in
    each run directory (appended on resume). Returns the runs that failed, after all others have finished."""
    runs = list({r.run_dir: r for r in runs}.values())  # two policies may make the same fixes: one run for both
    todo = [r for r in runs if r.metrics() is None]
    print(f"{label}: {len(runs) - len(todo)} of {len(runs)} finished already, {len(todo)} to train, {jobs} at a time "
          f"({threads_per_job(jobs)} torch thread{'s' if threads_per_job(jobs) > 1 else ''} each)", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_job(jobs)), PYTHONUNBUFFERED="1")
    running, failed, done, t0 = {}, [], 0, time.time()
    while todo or running:
        while todo and len(running) < jobs:
            run = todo.pop(0)
            os.makedirs(run.run_dir, exist_ok=True)
            log = open(os.path.join(run.run_dir, "training.log"), "a")
            running[subprocess.Popen(run.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)] = (run, log)
        time.sleep(0.5)
        for process in [p for p in running if p.poll() is not None]:
            run, log = running.pop(process)
            log.close()
            done += 1
            status = "done" if process.returncode == 0 else f"FAILED (exit code {process.returncode})"
            print(f"  [{done}/{done + len(todo) + len(running)}, {(time.time() - t0) / 60:.1f} min] "
                  f"{os.path.relpath(run.run_dir)}: {status}", flush=True)
            if process.returncode != 0:
                failed.append(run)
    return failed


def stop_if_failed(failed):
    if failed:
        lines = []
        for run in failed:
            with open(os.path.join(run.run_dir, "training.log"), errors="replace") as f:
                tail = f.read().splitlines()[-3:]
            lines += [f"{os.path.relpath(run.run_dir)}: " + shlex.join(run.command()[1:])] + [f"    {t}" for t in tail]
        sys.exit(f"{len(failed)} run(s) failed; the end of each log:\n" + "\n".join(lines))


def mean_ci(values):
    """(mean, half-width of the 95 % confidence interval of the mean, Student's t); nan half-width for one value."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return (float(x[0]) if x.size else math.nan), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def paired(a, b):
    """Paired comparison of b against a over the same seeds: (mean of b - a, its 95 % half-width, two-sided p of
    the paired t-test). p is nan when every difference is equal (no spread to test against)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    mean, half = mean_ci(d)
    p = math.nan if d.size < 2 or np.all(d == d[0]) else float(stats.ttest_rel(b, a).pvalue)
    return mean, half, p


def pm(mean, half, decimals):
    """'mean ± half-width' (no ± where there is no interval)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.{decimals}f}" if math.isnan(half) else f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def signed(mean, half, decimals):
    """A difference with its sign: '+0.12 ± 0.30'."""
    return "–" if math.isnan(mean) else f"{mean:+.{decimals}f}" + ("" if math.isnan(half) else f" ± {half:.{decimals}f}")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n"


def device_line():
    """The device the runs of this machine use, in words (the scripts take CUDA whenever they see it)."""
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    return f"CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def device_tag():
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"
