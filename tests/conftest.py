import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_CIFAR_N = os.path.join(ROOT, "..", "shared", "cifar-n")
SYNTHETIC_EPOCHS = 18  # the demo's schedule (run.sh: 24 epochs) cut short: the worst labels split at epoch 15
SYNTHETIC_SCHEDULE = ["--n_epoch", SYNTHETIC_EPOCHS, "--lr", 0.1, "--lr_decay_every", 5]
N_SYNTHETIC = 4000


# The quick tier (python -m pytest -q -m "not slow" tests, under a minute): tests of functions, files and pages in
# this process. A test is slow when it trains, runs a script or drives a browser: marked by the fixtures it uses
# (below), or with @pytest.mark.slow where it starts a script itself.
SLOW_FIXTURES = {"synthetic_run", "fake_run", "fake_cifar_run", "chromium", "browser", "study_data", "reference"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains, runs a script or drives a browser; -m 'not slow' is the quick tier")


# Tests that share an expensive fixture run on one worker under pytest-xdist (-n 2 --dist loadgroup), so that it is
# made once: the session's synthetic run, and the reference run of tests/test_resume.py.
SHARED_FIXTURES = ("synthetic_run", "reference")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        for name in SHARED_FIXTURES:
            if name in fixtures:
                item.add_marker(pytest.mark.xdist_group(name))
                break


# The scripts the tests start, and torch in the test process, get the cores shared out between the pytest-xdist
# workers (one each with -n 2 on 2 cores): OpenMP threads that outnumber the cores spin-wait for each other and make
# a run ten times slower.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
THREADS = min(THREADS, 2)  # 2: what the tests' timings and byte-for-byte comparisons were made with
if "PYTEST_XDIST_WORKER" in os.environ:
    import torch
    torch.set_num_threads(THREADS)


def script_env(threads=None, cuda=False):
    """The environment of a script run by a test. The scripts use CUDA whenever they see it, but most tests check
    CPU properties (byte-identical reruns, gloo ranks, timings of a few seconds): those hide the GPUs, so the suite
    means the same on a GPU workstation as in CI. The CUDA tier (tests/test_cuda.py) passes cuda=True."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=threads or os.environ.get("OMP_NUM_THREADS", str(THREADS)))
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


def write_fake_cifar(tmp_path):
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


@pytest.fixture
def fake_cifar(tmp_path):
    return write_fake_cifar(tmp_path)


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
                learning_pair=run("learning.py", *flags, "--predict", "pair"),
                detection=run("detection.py", *flags))


FAKE_EPOCHS = 10  # its tipping epoch is found at epoch 5


def fake_run_flags(fake_cifar, tmp_path, n_epoch=FAKE_EPOCHS):
    """The flags of a small-CNN run on the 100 fake CIFAR-10 images, every third label wrong (a labels file written
    into tmp_path): a few seconds, and its tipping epoch is found. With the reference's tipping rule: random images
    are learnt so slowly that the plateau rule sees no end of the rise in 24 epochs, and what these runs test
    (resuming, fixes, checkpoints, the CLI) is the same under either rule; the synthetic run tests the default."""
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": np.where(np.arange(100) % 3 == 0,
                                                                                         (clean + 1) % 10, clean)})
    return ["--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"],
            "--noise_path", tmp_path / "labels.pt", "--n_epoch", n_epoch, "--batch_size", 16, "--print_freq", 1000,
            "--noisy_val_freq", 3, "--clean_test_freq", 5, "--tipping_rule", "reference"]


@pytest.fixture
def fake_run(fake_cifar, tmp_path):
    return dict(flags=fake_run_flags(fake_cifar, tmp_path), tmp=tmp_path)


# ---------------------------------------------------------------------------- the reference run of the resume tests
RUN_DIR = "cifar10_worst_seed_0"
REFERENCE_EPOCHS = 24  # long enough to be killed at several moments, before and after its split (epoch 5)
OUTPUTS = ("teacher.pth.tar", "student.pth.tar", "best_teacher.pth.tar", "best_student.pth.tar", "detection.npy",
           "detection_scores.npy", "label_issues.csv")


def outputs(run_dir, names=OUTPUTS):
    return {name: (run_dir / name).read_bytes() for name in names}


def train(flags, results, *extra, cuda=False):
    result = run("blind_knowledge_dist_training.py", *flags, "--results_dir", results, *extra, cuda=cuda)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The fake CIFAR-10 run, trained once, uninterrupted, for the tests that compare an interrupted, resumed or
    repeated run against it: its flags (without --results_dir), its run directory, its outputs and its split epoch."""
    tmp = tmp_path_factory.mktemp("reference")
    flags = fake_run_flags(write_fake_cifar(tmp), tmp, n_epoch=REFERENCE_EPOCHS)
    train(flags, tmp / "results")
    split = json.loads((tmp / "results" / RUN_DIR / "metrics.json").read_text())["tipping_found_epoch"]
    assert split is not None and 2 <= split <= REFERENCE_EPOCHS // 2 - 4, split  # the kills are placed around it
    return dict(flags=flags, dir=tmp / "results" / RUN_DIR, outputs=outputs(tmp / "results" / RUN_DIR), split=split)
