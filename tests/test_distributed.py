"""torchrun: one BKD run on several processes (gloo on CPU) behaves as the single-process run."""
import json
import sys

import numpy as np
import pytest

from tests.conftest import N_SYNTHETIC, SYNTHETIC_SCHEDULE, run, write_pickle
from tests.test_resume import OUTPUTS, outputs


def torchrun(n):
    return (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n))


def test_two_processes_agree_and_match_the_single_process_run(synthetic_run, tmp_path):
    schedule = [*SYNTHETIC_SCHEDULE[:1], 16, *SYNTHETIC_SCHEDULE[2:]]  # the split happens by epoch 15
    result = run("blind_knowledge_dist_training.py", "--dataset", "synthetic", "--results_dir", tmp_path,
                 *schedule, "--print_freq", 1000, launcher=torchrun(2))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "x 2 processes" in result.stdout and result.stdout.count("arguments:") == 1  # only rank 0 logs
    assert "all 2 ranks agree on the tipping epoch and the groups" in result.stdout
    run_dir = tmp_path / "synthetic_worst_seed_0"
    single_dir = synthetic_run["dir"]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
    flagged = np.load(run_dir / "detection.npy")
    assert flagged.dtype == np.bool_ and flagged.shape == (N_SYNTHETIC,)
    two, one = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, single_dir))
    assert abs(two["tipping_epoch"] - one["tipping_epoch"]) <= 2
    # the stated tolerance (README): detection F1 within 0.05 of the single-process run
    assert abs(two["detection"]["f1"] - one["detection"]["f1"]) < 0.05, (two["detection"], one["detection"])


def test_torchrun_with_one_process_is_plain_python(fake_cifar, tmp_path):
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": (clean + np.arange(100) % 2) % 10})
    flags = ["--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"], "--noise_path",
             tmp_path / "labels.pt", "--n_epoch", 30, "--batch_size", 16, "--print_freq", 1000]
    plain = run("blind_knowledge_dist_training.py", *flags, "--results_dir", tmp_path / "plain",
                launcher=(sys.executable,))  # plain python, with the one thread per process torchrun gets
    launched = run("blind_knowledge_dist_training.py", *flags, "--results_dir", tmp_path / "torchrun",
                   launcher=torchrun(1))
    assert plain.returncode == 0 and launched.returncode == 0, plain.stderr[-1000:] + launched.stderr[-1000:]
    a, b = (tmp_path / d / "cifar10_worst_seed_0" for d in ("plain", "torchrun"))
    assert (a / "detection.npy").exists()
    assert outputs(a) == outputs(b)


def test_sync_bn_needs_several_cuda_processes():
    result = run("blind_knowledge_dist_training.py", "--dataset", "synthetic", "--sync_bn")
    assert result.returncode == 2 and "--sync_bn needs torchrun" in result.stderr
