"""run.sh's fan-out over GPUs, without GPUs or torch: DRY_RUN listings, and real runs of a fake PYTHON that records
its arguments and CUDA_VISIBLE_DEVICES, sleeps a little and fails for one noise type."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("DATASET", "NOISE_TYPES", "NOISE_TYPE", "SEEDS", "SEED", "GPUS", "JOBS_PER_GPU", "DRY_RUN", "RESULTS_DIR",
            "PYTHON", "CUDA_VISIBLE_DEVICES")

# Stands in for `python`: one "start" and one "end" line per call (time, GPU, script, flags) into $FAKE_CALLS,
# the key lines of the real scripts' logs on stdout; training fails for the noise type "worst", summarize.py
# prints a line and fails, to check that a failing summary hides no failed job.
FAKE_PYTHON = r"""#!/usr/bin/env bash
script=$1; shift
echo "start $(date +%s.%N) ${CUDA_VISIBLE_DEVICES-unset} $script $*" >> "$FAKE_CALLS"
case "$script" in
  summarize.py) echo "| fake summary |"; exit 3 ;;
  blind_knowledge_dist_training.py) sleep 0.4; echo "Epoch [0/1] Iter [1/1] loss: 1.0 $*" ;;
  learning.py) echo "test accuracy: 90.00 %" ;;
  detection.py) echo "The f-score is 0.5" ;;
esac
echo "end $(date +%s.%N) ${CUDA_VISIBLE_DEVICES-unset} $script $*" >> "$FAKE_CALLS"
[[ "$script" == blind_* && " $* " == *" --noise_type worst "* ]] && { echo "fake failure" >&2; exit 1; }
exit 0
"""


def run_sh(tmp_path, *args, **settings):
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(RESULTS_DIR=str(tmp_path / "results"), FAKE_CALLS=str(tmp_path / "calls.txt"), **settings)
    return subprocess.run(["bash", "run.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_syntax():
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "run.sh")]).returncode == 0


def test_dry_run_round_robin(tmp_path):
    r = run_sh(tmp_path, "--val_ratio", "0", DRY_RUN="1", GPUS="0 1", JOBS_PER_GPU="2",
               NOISE_TYPES="aggre worst rand1", SEEDS="0 1")
    assert r.returncode == 0, r.stderr
    jobs = re.findall(r"^job (\d)/6 cifar10 (\w+) seed (\d): slot (\d), GPU (\d)$", r.stdout, re.M)
    expected = [(n, s) for n in ("aggre", "worst", "rand1") for s in "01"]
    assert [(noise, seed) for _, noise, seed, _, _ in jobs] == expected  # every job once, in grid order
    # 4 slots filled GPU by GPU in turn: slots 0 1 2 3 0 1 on GPUs 0 1 0 1 0 1.
    assert [(int(i), int(slot), gpu) for i, _, _, slot, gpu in jobs] == [(i + 1, i % 4, "01"[i % 2]) for i in range(6)]
    commands = [line.strip() for line in r.stdout.splitlines() if line.startswith("  ")]
    assert len(commands) == 18
    for i, (noise, seed) in enumerate(expected):
        log_dir = f"{tmp_path}/results/cifar10_{noise}_seed_{seed}"
        for command, (script, log) in zip(commands[3 * i:3 * i + 3], [("blind_knowledge_dist_training", "training"),
                                                                      ("learning", "learning"),
                                                                      ("detection", "detection")]):
            assert command == (f"CUDA_VISIBLE_DEVICES={'01'[i % 2]} python {script}.py --dataset cifar10 "
                               f"--noise_type {noise} --seed {seed} --results_dir {tmp_path}/results --val_ratio 0 "
                               f"> {log_dir}/{log}.log 2>&1")
    assert not (tmp_path / "results").exists() and not (tmp_path / "calls.txt").exists()  # nothing ran


def test_dry_run_datasets(tmp_path):
    r = run_sh(tmp_path, DRY_RUN="1", DATASET="all", NOISE_TYPES="worst", SEEDS="3")
    assert r.returncode == 0, r.stderr
    jobs = re.findall(r"^job \d/4 (\w+ \w+) seed 3: slot 0, one job after another$", r.stdout, re.M)
    assert jobs == ["cifar10 aggre", "cifar10 worst", "cifar10 rand1", "cifar100 noisy100"]
    assert "NOISE_TYPES is ignored" in r.stderr and "CUDA_VISIBLE_DEVICES" not in r.stdout
    r = run_sh(tmp_path, "--lr", "0.5", DRY_RUN="1", DATASET="synthetic", NOISE_TYPES="worst")
    assert r.stdout.count("--n_epoch 24 --lr 0.1 --lr_decay_every 5 --print_freq 10 --noisy_val_freq 3 "
                          "--clean_test_freq 3 --lr 0.5 >") == 3  # the demo's schedule, then the user's flags
    assert run_sh(tmp_path, DRY_RUN="1", DATASET="cifar1000").returncode == 2


def read_calls(tmp_path):
    """{(noise, seed): [start, end, gpu, scripts]} per job, and the summarize.py calls."""
    jobs, summaries = {}, []
    for line in (tmp_path / "calls.txt").read_text().splitlines():
        what, t, gpu, script, *flags = line.split()
        if script == "summarize.py":
            summaries.append(flags)
            continue
        key = (flags[flags.index("--noise_type") + 1], flags[flags.index("--seed") + 1])
        job = jobs.setdefault(key, dict(start=float(t), end=float(t), gpus=set(), scripts=[], flags=flags))
        job["start"], job["end"] = min(job["start"], float(t)), max(job["end"], float(t))
        job["gpus"].add(gpu)
        if what == "start":
            job["scripts"].append(script)
    return jobs, summaries


def overlap(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_concurrent_on_gpus(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    r = run_sh(tmp_path, "--val_ratio", "0", PYTHON=str(fake), GPUS="0 1", NOISE_TYPES="aggre worst rand1",
               SEEDS="0 1")
    assert r.returncode == 1
    jobs, summaries = read_calls(tmp_path)
    assert sorted(jobs) == sorted((n, s) for n in ("aggre", "worst", "rand1") for s in "01")
    for (noise, seed), job in jobs.items():
        assert len(job["gpus"]) == 1 and job["gpus"] <= {"0", "1"}  # one GPU per job, all its scripts on it
        assert job["flags"][-2:] == ["--val_ratio", "0"]
        trained = ["blind_knowledge_dist_training.py"]
        assert job["scripts"] == (trained if noise == "worst" else trained + ["learning.py", "detection.py"])
        run_dir = tmp_path / "results" / f"cifar10_{noise}_seed_{seed}"
        assert f"--noise_type {noise} --seed {seed}" in (run_dir / "training.log").read_text()  # its own log
        if noise != "worst":
            assert (run_dir / "learning.log").read_text() == "test accuracy: 90.00 %\n"
            assert (run_dir / "detection.log").read_text() == "The f-score is 0.5\n"
    # Both GPUs in use at once, never two jobs on one GPU (one job per GPU), never more than two at a time.
    pairs = [(a, b) for a in jobs.values() for b in jobs.values() if a is not b and overlap(a, b)]
    assert pairs and all(a["gpus"] != b["gpus"] for a, b in pairs)
    assert {g for j in jobs.values() for g in j["gpus"]} == {"0", "1"}
    running_at = [sum(o["start"] <= j["start"] < o["end"] for o in jobs.values()) for j in jobs.values()]
    assert max(running_at) == 2
    # The failed jobs are named; the failing summary ran once after all jobs, was printed, and is named too.
    failed = re.findall(r"^run.sh: failed: (.*)$", r.stderr, re.M)
    assert sorted(failed[:2]) == ["cifar10 worst seed 0", "cifar10 worst seed 1"]  # in the order they ended
    assert failed[2:] == ["the seed summary (summarize.py)"]
    assert "fake failure" in r.stderr  # the end of the failed training log
    assert summaries == [["--results_dir", str(tmp_path / "results")]] and "| fake summary |" in r.stdout


def test_sequential_without_gpus(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    r = run_sh(tmp_path, PYTHON=str(fake), NOISE_TYPES="rand1 aggre", SEEDS="4")
    assert r.returncode == 1 and r.stderr.strip() == "run.sh: failed: the seed summary (summarize.py)"
    jobs, _ = read_calls(tmp_path)
    assert not overlap(jobs["rand1", "4"], jobs["aggre", "4"]) and jobs["rand1", "4"]["end"] < jobs["aggre", "4"]["start"]
    assert all(job["gpus"] == {"unset"} for job in jobs.values())
    assert "rand1 seed 4: test accuracy: 90.00 %  The f-score is 0.5" in r.stdout
