"""torchrun: one BKD run on several processes (gloo on CPU) behaves as the single-process run."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import N_SYNTHETIC, ROOT, SYNTHETIC_SCHEDULE, outputs, run, script_env, write_pickle
from tests.test_resume import epochs_done

pytestmark = pytest.mark.slow  # starts scripts: not in the quick tier


def torchrun(n):
    return (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n))


def test_two_processes_agree_and_match_the_single_process_run(synthetic_run, tmp_path):
    result = run("blind_knowledge_dist_training.py", "--dataset", "synthetic", "--results_dir", tmp_path,
                 *SYNTHETIC_SCHEDULE, "--print_freq", 1000, launcher=torchrun(2))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "x 2 processes" in result.stdout and result.stdout.count("arguments:") == 1  # only rank 0 logs
    assert "all 2 ranks agree on the tipping epoch and the groups" in result.stdout
    run_dir = tmp_path / "synthetic_worst_seed_0"
    single_dir = synthetic_run["dir"]
    by_detection_py = ("detection.json", "review.html")
    two_files, one_files = (sorted(p.name for p in d.iterdir() if p.name not in by_detection_py)
                            for d in (run_dir, single_dir))
    assert two_files == one_files
    flagged = np.load(run_dir / "detection.npy")
    assert flagged.dtype == np.bool_ and flagged.shape == (N_SYNTHETIC,)
    two, one = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, single_dir))
    assert abs(two["tipping_epoch"] - one["tipping_epoch"]) <= 2
    # the stated tolerance (README): detection F1 within 0.05 of the single-process run
    assert abs(two["detection"]["f1"] - one["detection"]["f1"]) < 0.05, (two["detection"], one["detection"])


def small_cifar_flags(fake_cifar, tmp_path, n_epoch):
    """A small-CNN run on 100 fake CIFAR-10 images with half of the labels wrong: seconds per run (the reference's
    tipping rule: on random images the plateau rule sees no end of the rise in a few epochs; see fake_run_flags)."""
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": (clean + np.arange(100) % 2) % 10})
    return ["--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"], "--noise_path",
            tmp_path / "labels.pt", "--n_epoch", n_epoch, "--batch_size", 16, "--print_freq", 1000, "--tipping_rule", "reference"]


def test_torchrun_with_one_process_is_plain_python(fake_cifar, tmp_path):
    flags = small_cifar_flags(fake_cifar, tmp_path, n_epoch=10)
    plain = run("blind_knowledge_dist_training.py", *flags, "--results_dir", tmp_path / "plain",
                launcher=(sys.executable,))  # plain python, with the one thread per process torchrun gets
    launched = run("blind_knowledge_dist_training.py", *flags, "--results_dir", tmp_path / "torchrun",
                   launcher=torchrun(1))
    assert plain.returncode == 0 and launched.returncode == 0, plain.stderr[-1000:] + launched.stderr[-1000:]
    a, b = (tmp_path / d / "cifar10_worst_seed_0" for d in ("plain", "torchrun"))
    assert (a / "detection.npy").exists()
    assert outputs(a) == outputs(b)


def test_an_empty_share_of_the_last_batch_trains_in_lock_step(fake_cifar, tmp_path):
    """90 training images in batches of 89: the last batch has one image, so with 2 ranks one rank's share is empty.
    Every rank steps on it (the empty share's loss is 0, not the nan of a mean over nothing), and the run finishes
    with finite losses; under --recipe ce as well."""
    flags = [str(f) for f in small_cifar_flags(fake_cifar, tmp_path, n_epoch=3)] + ["--batch_size", "89"]
    without_rule = flags[:flags.index("--tipping_rule")] + flags[flags.index("--tipping_rule") + 2:]
    for flags, name in ((flags, "cifar10_worst_seed_0"), ([*without_rule, "--recipe", "ce"], "cifar10_worst_seed_0_ce")):
        result = run("blind_knowledge_dist_training.py", *flags, "--results_dir", tmp_path / "r", launcher=torchrun(2))
        assert result.returncode == 0, failure_text(result)
        assert "90 training" in result.stdout and "Iter [2/2]" in result.stdout
        m = json.loads((tmp_path / "r" / name / "metrics.json").read_text())
        assert m["finished"] and all(np.isfinite(m["confidence"])) and all(np.isfinite(m["train_fit"]))


def test_sync_bn_needs_several_cuda_processes():
    result = run("blind_knowledge_dist_training.py", "--dataset", "synthetic", "--sync_bn")
    assert result.returncode == 2 and "--sync_bn needs torchrun" in result.stderr


def kill_processes_with(text):
    """SIGKILL every process whose command line contains text, and wait until they are gone. torchrun starts its
    ranks in sessions of their own, so killing the launcher's process group would leave them running."""
    def matching():
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read() and int(pid) != os.getpid():
                        pids.append(int(pid))
            except OSError:
                pass  # ended meanwhile
        return pids
    for pid in matching():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while matching() and time.time() < deadline:  # zombies of our own child are reaped by wait() below
        time.sleep(0.05)


def failure_text(result):
    """What a failed torchrun run said: its ranks' own messages come first in stderr (a rank's traceback, an abort),
    the launcher's long report last, so both ends are kept."""
    err = result.stderr
    return (result.stdout[-1500:] + "\n--- stderr, first part ---\n" + err[:3000]
            + ("\n--- stderr, last part ---\n" + err[-1500:] if len(err) > 3000 else ""))


def test_resume_under_torchrun(fake_cifar, tmp_path):
    """Kill every rank of a 2-process run mid-way, resume it under torchrun: the same outputs as uninterrupted."""
    flags = small_cifar_flags(fake_cifar, tmp_path, n_epoch=12)
    reference = run("blind_knowledge_dist_training.py", *flags, "--results_dir", tmp_path / "reference",
                    launcher=torchrun(2))
    assert reference.returncode == 0, failure_text(reference)
    env = script_env(threads="1")
    process = subprocess.Popen([*torchrun(2), os.path.join(ROOT, "blind_knowledge_dist_training.py"),
                                *map(str, flags), "--results_dir", str(tmp_path / "killed")], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "killed" / "cifar10_worst_seed_0"
    deadline = time.time() + 120
    while epochs_done(run_dir) < 6 and time.time() < deadline:  # half-way
        time.sleep(0.01)
    kill_processes_with(str(tmp_path / "killed"))  # the launcher and every rank at once
    process.wait()
    assert (run_dir / "state.pth.tar").exists() and not (run_dir / "teacher.pth.tar").exists(), "not killed mid-way"
    resumed = run("blind_knowledge_dist_training.py", *flags, "--results_dir", tmp_path / "killed", "--resume",
                  launcher=torchrun(2))
    assert resumed.returncode == 0, failure_text(resumed)
    assert "resuming from" in resumed.stdout
    assert outputs(tmp_path / "reference" / "cifar10_worst_seed_0") == outputs(run_dir)
