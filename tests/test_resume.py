"""Never lose a run: kill and resume byte for byte, interruption, determinism, non-finite loss, no silent
overwrite, safe loading, and a table of bad inputs that each end in one clear line."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tests.conftest import OUTPUTS, REFERENCE_EPOCHS, ROOT, RUN_DIR, outputs, run, script_env, train, write_pickle

def start(flags, results, *extra, cuda=False):
    env = script_env(cuda=cuda)
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "blind_knowledge_dist_training.py"),
                             *map(str, flags), "--results_dir", str(results), *map(str, extra)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, process, timeout=120):
    """Seconds until path exists, the process still running, polling."""
    t0 = time.time()
    while not path.exists():
        assert process.poll() is None and time.time() - t0 < timeout, f"no {path.name} while the run lasted"
        time.sleep(0.02)
    return time.time() - t0


def epochs_done(run_dir):
    """Epochs a run has saved (its metrics.json is written after its state, every epoch); 0 before the first."""
    try:
        return len(json.loads((run_dir / "metrics.json").read_text())["confidence"])
    except (OSError, ValueError, KeyError):
        return 0


def kill_and_resume(flags, tmp, kills=3, cuda=False, reference=None, targets=None, run_name=RUN_DIR, names=OUTPUTS):
    """One run killed with SIGKILL `kills` times and each time resumed with --resume: the k-th kill comes at a random
    moment of a random epoch of the k-th part of the run (so before and after the split, and a resumed run killed
    again), never before a state was saved (--resume would then start from scratch and prove nothing). In the end the
    outputs must be the uninterrupted run's, byte for byte. `reference`: that run's outputs (trained here if None);
    `targets`: the epochs to kill in, instead; `run_name`: the run directory the flags name; `names`: the outputs
    compared."""
    if reference is None:
        train(flags, tmp / "reference", cuda=cuda)
        reference = dict(outputs=outputs(tmp / "reference" / run_name, names))
    results, rng = tmp / "killed", random.Random(0)
    run_dir = results / run_name
    if targets is None:
        n_epoch = int([str(f) for f in flags][::-1][[str(f) for f in flags][::-1].index("--n_epoch") - 1])
        targets = [rng.randrange(max(1, k * n_epoch // kills), max(2, (k + 1) * n_epoch // kills - 1))
                   for k in range(kills)]
    for i, target in enumerate(targets):
        process = start(flags, results, *(["--resume"] if i else []), cuda=cuda)
        t0 = time.time()
        while epochs_done(run_dir) < target:  # at the start of epoch `target`, a state saved ...
            assert process.poll() is None and time.time() - t0 < 300, f"the run ended before epoch {target}"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))  # ... and somewhere in that epoch or the next
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    resumed = train(flags, results, "--resume", cuda=cuda)
    assert resumed.stdout.count("resuming from") == 1
    assert outputs(run_dir, names) == reference["outputs"], (targets, resumed.stdout[-1500:])
    assert not list(run_dir.glob(".*.tmp"))  # no temporary file left behind
    return targets


def test_killed_at_random_moments_and_resumed_gives_identical_outputs(reference, tmp_path):
    rng, split = random.Random(1), reference["split"]  # killed before the split, and twice after it
    kill_and_resume(reference["flags"], tmp_path, reference=reference,
                    targets=[rng.randint(1, split - 1), rng.randint(split + 1, REFERENCE_EPOCHS // 2),
                             rng.randint(REFERENCE_EPOCHS // 2 + 2, REFERENCE_EPOCHS - 3)])


def test_killed_and_resumed_under_the_default_rule_gives_identical_outputs(fake_cifar, tmp_path):
    """The plateau tipping rule (the robust recipe's, the default on own data) splits up to PATIENCE epochs after its
    tipping epoch, from the pass history it keeps until then (utils/history.py): killed before the tipping epoch,
    between it and the epoch that finds it, and after the split, and resumed each time, the run ends byte for byte as
    the uninterrupted one."""
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": (clean + np.arange(100) % 3 // 2) % 10})
    flags = ["--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"], "--noise_path",
             tmp_path / "labels.pt", "--n_epoch", 30, "--lr", 0.1, "--lr_decay_every", 5, "--batch_size", 16,
             "--print_freq", 1000, "--noisy_val_freq", 3, "--clean_test_freq", 5, "--recipe", "robust"]
    train(flags, tmp_path / "reference")
    m = json.loads((tmp_path / "reference" / f"{RUN_DIR}_robust" / "metrics.json").read_text())
    tipping, found = m["tipping_epoch"], m["tipping_found_epoch"]
    assert m["tipping_rule"] == "plateau" and tipping is not None and tipping < found < 26, (tipping, found)
    # each kill lands in the epoch after the target (or the one after that): before the tipping epoch, in the
    # epochs the history must carry the tipping pass across, and after the split
    kill_and_resume(flags, tmp_path, reference=dict(outputs=outputs(tmp_path / "reference" / f"{RUN_DIR}_robust")),
                    targets=[max(1, tipping - 2), tipping + 1, found + 2], run_name=f"{RUN_DIR}_robust")


def test_sigint_saves_state_and_resume_finishes_identically(reference, tmp_path):
    results = tmp_path / "interrupted"
    process = start(reference["flags"], results, "--n_epoch", 400)  # long enough to be inside training
    deadline = time.time() + 60
    while not (results / RUN_DIR / "state.pth.tar").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "--resume" in err.strip().splitlines()[-1]
    assert (results / RUN_DIR / "state.pth.tar").exists()
    train(reference["flags"], results, "--resume")
    assert outputs(results / RUN_DIR) == reference["outputs"]


def test_a_resumed_run_counts_the_time_of_every_part(reference, tmp_path):
    """wall_time_s in metrics.json is kept with the state at every epoch, so a run stopped and resumed adds the
    resumed part's time to the time of the part before (it used to count only the last part)."""
    results = tmp_path / "stopped"
    process = start(reference["flags"], results)
    t0 = time.time()
    while epochs_done(results / RUN_DIR) < 8:
        assert process.poll() is None and time.time() - t0 < 300, "the run ended before epoch 8"
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    process.communicate()
    assert process.returncode == 128 + signal.SIGINT
    before = json.loads((results / RUN_DIR / "metrics.json").read_text())["wall_time_s"]
    assert before > 0
    resumed = train(reference["flags"], results, "--resume")
    part = float(resumed.stdout.split("done in ")[1].split(" s")[0])  # the resumed part's own time, whole seconds
    total = json.loads((results / RUN_DIR / "metrics.json").read_text())["wall_time_s"]
    assert before + part - 1 <= total <= before + part + 1, (before, part, total)


def test_finished_run_is_not_overwritten_silently_and_the_same_seed_trains_identically(reference, tmp_path):
    results = tmp_path / "r"
    shutil.copytree(reference["dir"], results / RUN_DIR)  # a finished run
    again = run("blind_knowledge_dist_training.py", *reference["flags"], "--results_dir", results)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert outputs(results / RUN_DIR) == reference["outputs"]
    assert "--resume" in again.stderr  # offered: keeping the finished run is a no-op
    resumed = run("blind_knowledge_dist_training.py", *reference["flags"], "--results_dir", results, "--resume",
                  "--noise_path", tmp_path / "gone.pt")  # a requeued job needs no data to do nothing
    assert resumed.returncode == 0 and "holds a finished run: nothing to resume" in resumed.stdout, resumed.stderr
    assert outputs(results / RUN_DIR) == reference["outputs"]
    (results / RUN_DIR / "detection.npy").write_bytes(b"stale")
    train(reference["flags"], results, "--overwrite", "--seed", "0")  # trained again from scratch:
    assert outputs(results / RUN_DIR) == reference["outputs"]  # the same seed twice gives identical outputs
    assert not (results / RUN_DIR / "state.pth.tar").exists()  # a finished run keeps no state


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
    other_rule = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results, "--resume",
                     "--tipping_rule", "plateau")  # a run keeps the rule it began with
    assert other_rule.returncode == 2 and "--tipping_rule reference -> plateau" in other_rule.stderr
    other_output = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results, "--resume",
                       "--detection_npy", "flagged")  # and what detection.npy holds
    assert other_output.returncode == 2 and "--detection_npy g4 -> flagged" in other_output.stderr
    # a run of an older version, where --precision auto meant bf16 on CUDA, finishes in bf16 or not at all
    saved = torch.load(state, weights_only=True)
    saved["metrics"]["precision"] = "bf16"
    torch.save(saved, state)
    older = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results, "--resume")
    assert older.returncode == 2 and "Traceback" not in older.stderr
    assert "the saved run trained in bf16, but --precision auto: fp32 on every device" in older.stderr
    assert "pass --precision bf16 to finish it as it began" in older.stderr


def test_non_finite_loss_stops_with_epoch_and_iteration(fake_run):
    results = fake_run["tmp"] / "r"
    result = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", results, "--lr", "1e30")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "non-finite loss at epoch 0, iteration" in result.stderr
    assert not (results / "cifar10_worst_seed_0" / "teacher.pth.tar").exists()


@pytest.mark.slow
def test_tampered_checkpoint_is_refused(tmp_path):
    run_dir = tmp_path / "synthetic_worst_seed_0"
    run_dir.mkdir()
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    for role in ("teacher", "student"):
        torch.save({"state_dict": RunsCode(), "epoch": 0}, run_dir / f"{role}.pth.tar")
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
    (run_dir / "student.pth.tar").write_bytes(b"garbage")
    cifar_run = results / "cifar10_worst_seed_0"  # a run, so that the scripts that evaluate one go on to the data
    cifar_run.mkdir()
    np.save(cifar_run / "detection.npy", np.zeros(100, dtype=bool))
    for role in ("teacher", "student"):
        (cifar_run / f"{role}.pth.tar").write_bytes(b"never read: the data fails first")
    other = results / "synthetic_aggre_seed_0"
    other.mkdir()
    np.save(other / "detection.npy", np.zeros((4000, 2), dtype=bool))
    floats = results / "synthetic_rand1_seed_0"
    floats.mkdir()
    np.save(floats / "detection.npy", np.zeros(4000, dtype=np.float32))
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
        ("labels of the wrong dtype", "detection.py", [*cifar, "--noise_path", tmp_path / "floats.pt", "--results_dir",
                                                       results], 2, "integer"),
        ("corrupt label file", train_script, [*cifar, "--noise_path", tmp_path / "corrupt.pt"], 2, "not a readable"),
        ("missing CIFAR, offline", "learning.py", ["--data_dir", empty, "--noise_path", tmp_path / "short.pt",
                                                   "--results_dir", results], 2, "cifar-10-python.tar.gz"),
        # no run yet: said before any download is tried (the data dir is empty, and offline)
        ("learning.py before training", "learning.py", ["--data_dir", empty, "--results_dir", empty], 2,
         "no checkpoint at"),
        ("detection.py before training", "detection.py", ["--data_dir", empty, "--results_dir", empty], 2,
         "has not split yet"),
        ("corrupt detection file", "detection.py", ["--dataset", "synthetic", "--results_dir", results], 2,
         "not a readable .npy"),
        ("detection of the wrong shape", "detection.py", ["--dataset", "synthetic", "--noise_type", "aggre",
                                                          "--results_dir", results], 2, "shape (4000,)"),
        ("detection of floats", "detection.py", ["--dataset", "synthetic", "--noise_type", "rand1", "--results_dir",
                                                 results], 2, "expected a boolean array"),
        ("corrupt checkpoint", "learning.py", ["--dataset", "synthetic", "--results_dir", results], 2, "cannot load"),
        ("results dir is a file", train_script, ["--dataset", "synthetic", "--results_dir", tmp_path / "afile"], 1,
         "cannot write into"),
    ]


@pytest.mark.slow
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


def test_overwrite_leaves_nothing_of_the_run_it_replaces(fake_run):
    """--overwrite removes what the studies keep in a run directory too: the passes of --record_passes, the epoch
    summary studies/tipping_study.py makes of them and the fixes studies/fix_policy_study.py makes of its detection
    (a study would read them as the new run's own)."""
    results = fake_run["tmp"] / "r"
    train([*fake_run["flags"], "--n_epoch", 3, "--record_passes"], results)
    run_dir = results / RUN_DIR
    assert len(list((run_dir / "passes").glob("epoch_*.npz"))) == 3
    (run_dir / "epochs.json").write_text("{}")
    (run_dir / "policy_fixes").mkdir()
    (run_dir / "policy_fixes" / "drop.csv").write_text("index,file,given_label,action,new_label\n")
    train([*fake_run["flags"], "--n_epoch", 3], results, "--overwrite")
    assert not (run_dir / "passes").exists() and not (run_dir / "policy_fixes").exists()
    assert not (run_dir / "epochs.json").exists() and (run_dir / "metrics.json").exists()
