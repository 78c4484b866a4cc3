"""Never lose a run: kill and resume byte for byte, interruption, determinism, non-finite loss, no silent
overwrite, safe loading, and a table of bad inputs that each end in one clear line."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run, script_env, write_pickle

OUTPUTS = ("teacher.pth.tar", "student.pth.tar", "best_teacher.pth.tar", "best_student.pth.tar", "detection.npy",
           "detection_scores.npy", "label_issues.csv")


def outputs(run_dir):
    return {name: (run_dir / name).read_bytes() for name in OUTPUTS}


def train(flags, results, *extra, cuda=False):
    result = run("blind_knowledge_dist_training.py", *flags, "--results_dir", results, *extra, cuda=cuda)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def start(flags, results, *extra, cuda=False):
    env = script_env(cuda=cuda)
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "blind_knowledge_dist_training.py"),
                             *map(str, flags), "--results_dir", str(results), *map(str, extra)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_same_seed_twice_gives_identical_outputs(fake_run):
    train(fake_run["flags"], fake_run["tmp"] / "a")
    train(fake_run["flags"], fake_run["tmp"] / "b")
    a, b = (fake_run["tmp"] / d / "cifar10_worst_seed_0" for d in "ab")
    assert json.loads((a / "metrics.json").read_text())["tipping_epoch"] is not None
    assert outputs(a) == outputs(b)
    assert not (a / "state.pth.tar").exists()  # a finished run keeps no state


def wait_for(path, process, timeout=120):
    """Seconds until path exists (the process still running), polling."""
    t0 = time.time()
    while not path.exists():
        assert process.poll() is None and time.time() - t0 < timeout, f"no {path.name} while the run lasted"
        time.sleep(0.02)
    return time.time() - t0


def kill_and_resume(flags, tmp, kills=3, cuda=False):
    """Run once uninterrupted; then `kills` times: start, SIGKILL at a random moment after the first saved state
    (before it, --resume starts from scratch and would prove nothing), --resume. Every resumed run must end with the
    uninterrupted run's outputs, byte for byte."""
    run_dir = "cifar10_worst_seed_0"
    reference = start(flags, tmp / "reference", cuda=cuda)
    first_state = wait_for(tmp / "reference" / run_dir / "state.pth.tar", reference)
    t0 = time.time()
    out, err = reference.communicate()
    assert reference.returncode == 0, out[-2000:] + err[-2000:]
    remaining = time.time() - t0  # from the first saved state to the end
    expected = outputs(tmp / "reference" / run_dir)
    rng = random.Random(0)
    for i, delay in enumerate(sorted(rng.uniform(0.05, 0.5) * remaining for _ in range(kills))):
        results = tmp / f"killed{i}"
        process = start(flags, results, cuda=cuda)
        wait_for(results / run_dir / "state.pth.tar", process, timeout=10 * first_state + 60)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
        resumed = train(flags, results, "--resume", cuda=cuda)
        assert "resuming from" in resumed.stdout
        assert outputs(results / run_dir) == expected, (delay, resumed.stdout[-1500:])
        assert not list((results / run_dir).glob(".*.tmp"))  # no temporary file left behind


def test_killed_at_random_moments_and_resumed_gives_identical_outputs(fake_run):
    kill_and_resume([*fake_run["flags"], "--n_epoch", 80], fake_run["tmp"])


def test_sigint_saves_state_and_resume_finishes_identically(fake_run):
    train(fake_run["flags"], fake_run["tmp"] / "reference")
    expected = outputs(fake_run["tmp"] / "reference" / "cifar10_worst_seed_0")
    results = fake_run["tmp"] / "interrupted"
    process = start(fake_run["flags"], results, "--n_epoch", 400)  # long enough to be inside training
    deadline = time.time() + 60
    while not (results / "cifar10_worst_seed_0" / "state.pth.tar").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "--resume" in err.strip().splitlines()[-1]
    assert (results / "cifar10_worst_seed_0" / "state.pth.tar").exists()
    train(fake_run["flags"], results, "--resume")
    assert outputs(results / "cifar10_worst_seed_0") == expected


def test_finished_run_is_not_overwritten_silently(fake_run):
    results = fake_run["tmp"] / "r"
    train(fake_run["flags"], results)
    before = outputs(results / "cifar10_worst_seed_0")
    again = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert outputs(results / "cifar10_worst_seed_0") == before
    assert "--resume" in again.stderr  # offered: keeping the finished run is a no-op
    resumed = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results, "--resume",
                  "--noise_path", fake_run["tmp"] / "gone.pt")  # a requeued job needs no data to do nothing
    assert resumed.returncode == 0 and "holds a finished run: nothing to resume" in resumed.stdout, resumed.stderr
    assert outputs(results / "cifar10_worst_seed_0") == before
    train(fake_run["flags"], results, "--overwrite", "--seed", "0")
    assert outputs(results / "cifar10_worst_seed_0") == before  # same seed: the same run again


def test_unfinished_run_suggests_resume(fake_run):
    results = fake_run["tmp"] / "r"
    process = start(fake_run["flags"], results, "--n_epoch", 400)
    state = results / "cifar10_worst_seed_0" / "state.pth.tar"
    deadline = time.time() + 60
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.communicate()
    again = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results)
    assert again.returncode == 2 and "--resume" in again.stderr and "unfinished" in again.stderr
    changed = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results, "--resume",
                  "--lr", "0.5")
    assert changed.returncode == 2 and "--lr 0.02 -> 0.5" in changed.stderr


def test_non_finite_loss_stops_with_epoch_and_iteration(fake_run):
    results = fake_run["tmp"] / "r"
    result = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results, "--lr", "1e30")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "non-finite loss at epoch 0, iteration" in result.stderr
    assert not (results / "cifar10_worst_seed_0" / "teacher.pth.tar").exists()


def test_tampered_checkpoint_is_refused(tmp_path):
    run_dir = tmp_path / "synthetic_worst_seed_0"
    run_dir.mkdir()
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"state_dict": RunsCode(), "epoch": 0}, run_dir / "teacher.pth.tar")
    result = run("learning.py", "--dataset", "synthetic", "--results_dir", tmp_path)
    assert result.returncode == 2 and "cannot load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from utils import RunError
    from utils.checkpoint import save_json
    path = tmp_path / "metrics.json"
    save_json(str(path), {"a": 1})

    def disk_full(f):
        raise OSError(28, "No space left on device")
    from utils import atomic_write
    with pytest.raises(RunError, match="No space left on device"):
        atomic_write(str(path), disk_full)
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["metrics.json"]


def bad_inputs(tmp_path, fake_cifar):
    """(name, script, args, expected exit code, fragment of the one error line) for a table of bad inputs."""
    d = fake_cifar["dir"]
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "short.pt", {"clean_label": clean[:50], "worse_label": clean[:50]})
    write_pickle(tmp_path / "floats.pt", {"clean_label": clean, "worse_label": clean.astype(np.float64)})
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 broken zip")
    (tmp_path / "afile").write_text("not a folder")
    results = tmp_path / "res"
    run_dir = results / "synthetic_worst_seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "detection.npy").write_bytes(b"\x93NUMPY garbage")
    (run_dir / "teacher.pth.tar").write_bytes(b"garbage")
    other = results / "synthetic_aggre_seed_0"
    other.mkdir()
    np.save(other / "detection.npy", np.zeros((4000, 2), dtype=bool))
    empty = tmp_path / "empty"
    empty.mkdir()
    cifar = ["--dataset", "cifar10", "--data_dir", d]
    train_script = "blind_knowledge_dist_training.py"
    return [
        ("unknown flag", train_script, ["--epochs", "3"], 2, "unrecognized arguments"),
        ("val_ratio too big", train_script, ["--val_ratio", "1.5"], 2, "--val_ratio"),
        ("negative val_ratio", "learning.py", ["--val_ratio", "-0.1"], 2, "--val_ratio"),
        ("zero batch", train_script, ["--batch_size", "0"], 2, "--batch_size"),
        ("zero epochs", train_script, ["--n_epoch", "0"], 2, "--n_epoch"),
        ("negative lr", train_script, ["--lr", "-1"], 2, "--lr"),
        ("alpha above 1", train_script, ["--alpha4", "1.5"], 2, "--alpha4"),
        ("not a number", train_script, ["--seed", "abc"], 2, "invalid int value"),
        ("resume and overwrite", train_script, ["--resume", "--overwrite"], 2, "choose one"),
        ("noise type of the other dataset", "detection.py", ["--noise_type", "noisy100"], 2, "aggre, clean"),
        ("no such device", train_script, ["--device", "tpu"], 2, "--device tpu"),
        ("missing CIFAR-N file", train_script, [*cifar, "--noise_path", tmp_path / "absent.pt"], 2, "no such file"),
        ("labels of the wrong length", train_script, [*cifar, "--noise_path", tmp_path / "short.pt"], 2, "100 integer"),
        ("labels of the wrong dtype", "detection.py", [*cifar, "--noise_path", tmp_path / "floats.pt"], 2, "integer"),
        ("corrupt label file", train_script, [*cifar, "--noise_path", tmp_path / "corrupt.pt"], 2, "not a readable"),
        ("missing CIFAR, offline", "learning.py", ["--data_dir", empty, "--noise_path", tmp_path / "short.pt"], 2,
         "cifar-10-python.tar.gz"),
        ("corrupt detection file", "detection.py", ["--dataset", "synthetic", "--results_dir", results], 2,
         "not a readable .npy"),
        ("detection of the wrong shape", "detection.py", ["--dataset", "synthetic", "--noise_type", "aggre",
                                                          "--results_dir", results], 2, "shape (4000,)"),
        ("corrupt checkpoint", "learning.py", ["--dataset", "synthetic", "--results_dir", results], 2, "cannot load"),
        ("results dir is a file", train_script, ["--dataset", "synthetic", "--results_dir", tmp_path / "afile"], 1,
         "cannot write into"),
    ]


def test_bad_input_table(tmp_path, fake_cifar):
    cases = bad_inputs(tmp_path, fake_cifar)
    assert len(cases) >= 15
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with ThreadPoolExecutor(4) as pool:  # independent subprocesses: run them side by side
        results = list(pool.map(lambda case: run(case[1], *case[2], offline=True), cases))
    for (name, script, args, code, fragment), result in zip(cases, results):
        errors = [line for line in result.stderr.strip().splitlines() if "error" in line]
        assert result.returncode == code, (name, result.stderr[-1500:])
        assert "Traceback" not in result.stderr and len(errors) == 1, (name, result.stderr[-1500:])
        assert fragment in errors[0], (name, errors[0])
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "a bad input left files behind"
