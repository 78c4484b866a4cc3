"""Shared by the studies (tools/*_study.py): the label sets they are chosen and confirmed on, many training runs, a
few at a time, each reused once finished and resumed where it stopped; paired statistics over seeds; markdown tables.

A study is a grid of runs that differ in one thing (a rule, precision, label fixes) and share everything else,
including the seeds: the paired difference over seeds then measures that one thing, free of the seed-to-seed spread.
A rule is chosen on some label sets and confirmed on others from sources the choice never saw (CONFIRMED_ON); the
worst confirmed row decides."""
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
STUDY_DATA = os.path.expanduser("~/data/study")  # where tools/make_study_npz.py writes its files
# Every shipped choice was made on the synthetic stand-in (CIFAR-10N's label sets) and scikit-learn's digits (real
# scans; instance-dependent look-alike flips, uniform flips, systematic pair flips). Real sources no choice saw confirm
# them: Fashion-MNIST's photos and Animal-MNIST's drawings, and MNIST's digits, added for the flagged cut chosen again
# after the first two had been used (docs/detection.md).
CONFIRMING_SOURCES = ("fashion", "animals", "mnist")
CONFIRMED_ON = ("fashion uniform 20", "fashion pair 25", "animals uniform 20", "animals pair 25", "mnist uniform 20",
                "mnist pair 25")


class LabelSet:
    """A label set of the studies by name: 'synthetic <noise type>' or '<source> <noise model> <percent>' (a file of
    tools/make_study_npz.py in study_data). Its training flags, the folder its runs go to, and its run's name."""

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
        return (f"{path}: no such file; make it with python tools/make_study_npz.py --out {os.path.dirname(path)} "
                f"(see its --help for what it needs)")


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
