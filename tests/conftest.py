import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_CIFAR_N = os.path.join(ROOT, "..", "shared", "cifar-n")
SYNTHETIC_EPOCHS = 24  # with the demo schedule of run.sh: the tipping epoch is found for every label set
SYNTHETIC_SCHEDULE = ["--n_epoch", SYNTHETIC_EPOCHS, "--lr", 0.1, "--lr_decay_every", 5]
N_SYNTHETIC = 4000


def script_env(threads=None, cuda=False):
    """The environment of a script run by a test. The scripts use CUDA whenever they see it, but most tests check
    CPU properties (byte-identical reruns, gloo ranks, timings of a few seconds): those hide the GPUs, so the suite
    means the same on a GPU workstation as in CI. The CUDA tier (tests/test_cuda.py) passes cuda=True."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=threads or os.environ.get("OMP_NUM_THREADS", "2"))
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run(script, *args, cwd=ROOT, launcher=(), offline=False, cuda=False):
    """Run a script of the repository as a user would: a subprocess, from the repository root, on the CPU unless
    cuda=True. offline=True points downloads at a closed local port, so they fail at once as without network."""
    env = script_env("1" if launcher else None, cuda)  # torchrun: one thread per process
    if offline:
        env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="")
    return subprocess.run([*launcher, *([] if launcher else [sys.executable]), os.path.join(ROOT, script),
                           *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def fake_cifar(tmp_path):
    """A small CIFAR-10 and CIFAR-100 in the real on-disk layout (bytes keys, (N, 3072) uint8 rows, label
    lists), 5 x 20 training and 20 test images for CIFAR-10, 100 + 20 for CIFAR-100."""
    rng = np.random.default_rng(0)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    labels10 = []
    for i in range(1, 6):
        labels = rng.integers(0, 10, 20).tolist()
        labels10 += labels
        write_pickle(c10 / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels,
                                               b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)})
    write_pickle(c10 / "test_batch", {b"labels": rng.integers(0, 10, 20).tolist(),
                                      b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)})
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    labels100 = rng.integers(0, 100, 100).tolist()
    write_pickle(c100 / "train", {b"fine_labels": labels100, b"coarse_labels": [0] * 100,
                                  b"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8)})
    write_pickle(c100 / "test", {b"fine_labels": rng.integers(0, 100, 20).tolist(), b"coarse_labels": [0] * 20,
                                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)})
    return dict(dir=str(tmp_path), labels10=np.array(labels10), labels100=np.array(labels100))


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
    """One single-process BKD run on the synthetic worst labels, then learning.py and detection.py on it."""
    results = tmp_path_factory.mktemp("results")
    flags = ["--dataset", "synthetic", "--noise_type", "worst", "--seed", "0", "--results_dir", results]
    train = run("blind_knowledge_dist_training.py", *flags, *SYNTHETIC_SCHEDULE, "--print_freq", 10,
                "--noisy_val_freq", 3, "--clean_test_freq", 3)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    return dict(dir=results / "synthetic_worst_seed_0", flags=flags, train=train,
                learning=run("learning.py", *flags), learning_best=run("learning.py", *flags, "--checkpoint", "best"),
                detection=run("detection.py", *flags))


@pytest.fixture
def fake_run(fake_cifar, tmp_path):
    """A small-CNN run on 100 fake CIFAR-10 images: a few seconds, and its tipping epoch is found."""
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": np.where(np.arange(100) % 3 == 0,
                                                                                         (clean + 1) % 10, clean)})
    flags = ["--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"],
             "--noise_path", tmp_path / "labels.pt", "--n_epoch", 40, "--batch_size", 16, "--print_freq", 1000,
             "--noisy_val_freq", 3, "--clean_test_freq", 5]
    return dict(flags=flags, tmp=tmp_path)
