"""run.sh's fan-out over GPUs, without GPUs or torch: DRY_RUN listings, and real runs of a fake PYTHON that records
its arguments and CUDA_VISIBLE_DEVICES, sleeps a little and fails for one noise type; plots.py only where
matplotlib imports; your own data sets (DATASET=folder / npz)."""
import os
import re
import subprocess

import pytest

pytestmark = pytest.mark.slow  # starts scripts: not in the quick tier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("DATASET", "NOISE_TYPES", "NOISE_TYPE", "SEEDS", "SEED", "RECIPES", "RECIPE", "GPUS", "JOBS_PER_GPU", "DRY_RUN", "RESULTS_DIR",
            "PYTHON", "CUDA_VISIBLE_DEVICES", "FAKE_MATPLOTLIB")

# Stands in for `python`: one "start" and one "end" line per call (time, GPU, script, flags) into $FAKE_CALLS,
# the key lines of the real scripts' logs on stdout (for npz: no test set, no ground truth); training fails for
# the noise type "worst", plots.py for "rand2", summarize.py prints a line and fails, to check that a failing
# summary hides no failed job.
# `-c "import matplotlib"` succeeds when FAKE_MATPLOTLIB=1; each such probe is counted in $FAKE_CALLS.probes.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = -c ]; then
  echo "$2" >> "$FAKE_CALLS.probes"
  [ "$2" = "import matplotlib" ] && [ "${FAKE_MATPLOTLIB:-0}" = 1 ]; exit $?
fi
script=$1; shift
echo "start $(date +%s.%N) ${CUDA_VISIBLE_DEVICES-unset} $script $*" >> "$FAKE_CALLS"
case "$script" in
  summarize.py) echo "| fake summary |"; exit 3 ;;
  blind_knowledge_dist_training.py) sleep 0.4; echo "Epoch [0/1] Iter [1/1] loss: 1.0 $*" ;;
  learning.py) [[ " $* " == *" --dataset npz "* ]] && echo "pets.npz has no test set" || echo "test accuracy: 90.00 %";;
  detection.py) echo "flagged as noisy: 3 of 10"; [[ " $* " == *" --dataset npz "* ]] || echo "The f-score is 0.5"
                echo "written: detection.json" ;;
  plots.py) echo "wrote 3 pictures" ;;
esac
echo "end $(date +%s.%N) ${CUDA_VISIBLE_DEVICES-unset} $script $*" >> "$FAKE_CALLS"
[[ "$script" == blind_* && " $* " == *" --noise_type worst "* ]] && { echo "fake failure" >&2; exit 1; }
[[ "$script" == plots.py && " $* " == *" --noise_type rand2 "* ]] && { echo "fake plot failure" >&2; exit 1; }
exit 0
"""


def run_sh(tmp_path, *args, **settings):
    """run.sh with the fake PYTHON (unless PYTHON is given), results and the call record under tmp_path."""
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(RESULTS_DIR=str(tmp_path / "results"), FAKE_CALLS=str(tmp_path / "calls.txt"), PYTHON=str(fake))
    env.update(settings)
    return subprocess.run(["bash", "run.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_syntax():
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "run.sh")]).returncode == 0


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_runs_nothing(tmp_path, flag):
    r = run_sh(tmp_path, "--val_ratio", "0", flag, DATASET="synthetic")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("usage: [VARIABLE=value ...] bash run.sh")
    for setting in ("DATASET", "NOISE_TYPES", "SEEDS", "RECIPES", "RESULTS_DIR", "PYTHON", "GPUS", "JOBS_PER_GPU",
                    "DRY_RUN"):
        assert re.search(rf"^  {setting} .*\[.+\]$", r.stdout, re.M), setting  # each with its default
    assert len(re.findall(r"^  .*bash run\.sh", r.stdout, re.M)) == 4  # four examples
    assert "RESULTS_DIR/<dataset>_<noise type>_seed_<seed>/" in r.stdout
    assert not (tmp_path / "calls.txt").exists() and not (tmp_path / "results").exists()  # nothing ran


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
    assert len(commands) == 18  # without matplotlib no plots.py
    for i, (noise, seed) in enumerate(expected):
        log_dir = f"{tmp_path}/results/cifar10_{noise}_seed_{seed}"
        for command, (script, log) in zip(commands[3 * i:3 * i + 3], [("blind_knowledge_dist_training", "training"),
                                                                      ("learning", "learning"),
                                                                      ("detection", "detection")]):
            assert command == (f"CUDA_VISIBLE_DEVICES={'01'[i % 2]} {tmp_path}/fake_python {script}.py --dataset "
                               f"cifar10 --noise_type {noise} --seed {seed} --results_dir {tmp_path}/results "
                               f"--val_ratio 0 > {log_dir}/{log}.log 2>&1")
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


def test_dry_run_recipes_side_by_side(tmp_path):
    """RECIPES runs each recipe of each label set and seed, in its own run directory: the dataset's default recipe in
    the directory the reference's commands name, another with _<recipe> (the training script's own rule,
    flags.run_dir, checked here against run.sh's); --recipe among the flags is one recipe; bad names stop."""
    import argparse
    from flags import run_dir
    from utils.recipes import RECIPES
    for dataset in ("cifar10", "synthetic"):
        r = run_sh(tmp_path, DRY_RUN="1", DATASET=dataset, NOISE_TYPES="worst", RECIPES=" ".join(RECIPES))
        assert r.returncode == 0, r.stderr
        jobs = re.findall(rf"^job \d/3 {dataset} worst seed 0 (\w+): slot 0", r.stdout, re.M)
        assert jobs == list(RECIPES)
        for recipe in RECIPES:
            expected = run_dir(argparse.Namespace(dataset=dataset, noise_type="worst", seed=0, recipe=recipe,
                                                  results_dir=f"{tmp_path}/results", label_fixes=None))
            training = next(line for line in r.stdout.splitlines() if f"training.py --dataset {dataset}" in line
                            and f"--recipe {recipe} " in line)
            assert training.endswith(f"> {expected}/training.log 2>&1"), (training, expected)
    r = run_sh(tmp_path, "--recipe", "ce", "--val_ratio", "0", DRY_RUN="1", NOISE_TYPES="worst")
    assert r.returncode == 0 and "job 1/1 cifar10 worst seed 0 ce:" in r.stdout
    assert r.stdout.count("--recipe ce ") == 3 and "_seed_0_ce/training.log" in r.stdout  # once per script
    plain = run_sh(tmp_path, DRY_RUN="1", NOISE_TYPES="worst")
    assert "--recipe" not in plain.stdout and "job 1/1 cifar10 worst seed 0: slot 0" in plain.stdout
    for bad, message in (({"RECIPES": "fast"}, "unknown recipe 'fast'"),
                         ({"RECIPES": "ce", "extra": ("--recipe", "robust")}, "both given")):
        r = run_sh(tmp_path, *bad.pop("extra", ()), DRY_RUN="1", **bad)
        assert r.returncode == 2 and message in r.stderr and r.stdout == "", r.stderr


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
    r = run_sh(tmp_path, "--val_ratio", "0", GPUS="0 1", NOISE_TYPES="aggre worst rand1", SEEDS="0 1")
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
            assert "The f-score is 0.5\n" in (run_dir / "detection.log").read_text()
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
    r = run_sh(tmp_path, NOISE_TYPES="rand1 aggre", SEEDS="4")
    assert r.returncode == 1 and r.stderr.strip() == "run.sh: failed: the seed summary (summarize.py)"
    failing = run_sh(tmp_path, NOISE_TYPES="worst", SEEDS="5")
    assert "run.sh: failed: cifar10 worst seed 5\n" in failing.stderr  # a failed job is named without GPUS too
    jobs, _ = read_calls(tmp_path)
    assert not overlap(jobs["rand1", "4"], jobs["aggre", "4"]) and jobs["rand1", "4"]["end"] < jobs["aggre", "4"]["start"]
    assert all(job["gpus"] == {"unset"} for job in jobs.values())
    assert "rand1 seed 4: test accuracy: 90.00 %  The f-score is 0.5" in r.stdout


def test_plots_only_where_matplotlib_imports(tmp_path):
    r = run_sh(tmp_path, NOISE_TYPES="aggre rand2", FAKE_MATPLOTLIB="1")
    jobs, _ = read_calls(tmp_path)
    for noise in ("aggre", "rand2"):  # after detection.py, with the same flags, into plots.log
        assert jobs[noise, "0"]["scripts"] == ["blind_knowledge_dist_training.py", "learning.py", "detection.py",
                                               "plots.py"]
        assert (tmp_path / "results" / f"cifar10_{noise}_seed_0" / "plots.log").read_text().startswith("wrote 3")
    assert "run.sh: failed: cifar10 rand2 seed 0 (plots.py)" in r.stderr and r.returncode == 1
    assert "matplotlib" not in r.stdout
    assert (tmp_path / "calls.txt.probes").read_text() == "import matplotlib\n"  # asked once, not per job

    for path in (tmp_path / "calls.txt", tmp_path / "calls.txt.probes"):
        path.unlink()
    r = run_sh(tmp_path, NOISE_TYPES="aggre rand2", SEEDS="0 1", GPUS="0 1")  # no matplotlib: one line for all 4 jobs
    jobs, _ = read_calls(tmp_path)
    assert all("plots.py" not in job["scripts"] for job in jobs.values()) and len(jobs) == 4
    notes = [line for line in r.stdout.splitlines() if "matplotlib" in line]
    assert notes == [f"run.sh: no pictures: matplotlib is not installed for {tmp_path}/fake_python "
                     f"(pip install matplotlib gives them)"]
    assert "plots.py" not in r.stderr
    r = run_sh(tmp_path, DRY_RUN="1", FAKE_MATPLOTLIB="1", NOISE_TYPES="aggre")
    assert r.stdout.count("plots.py") == 1 and "/cifar10_aggre_seed_0/plots.log 2>&1" in r.stdout


def test_own_data_sets(tmp_path):
    for dataset in ("folder", "npz"):
        r = run_sh(tmp_path, DATASET=dataset, DRY_RUN="1")  # where the data is cannot be guessed
        assert r.returncode == 2 and r.stderr.count("\n") == 1
        assert f"DATASET={dataset} needs --data_dir" in r.stderr and "bash run.sh --data_dir" in r.stderr
    r = run_sh(tmp_path, "--data_dir", "/data/my pets", DATASET="folder", SEEDS="0 1", DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    assert re.findall(r"^job \d/2 (.*): slot 0", r.stdout, re.M) == ["folder given seed 0", "folder given seed 1"]
    assert r.stdout.count("--dataset folder --noise_type given --seed 1 --results_dir "
                          f"{tmp_path}/results --data_dir /data/my\\ pets >") == 3  # no demo schedule; quoted
    r = run_sh(tmp_path, "--data_dir=pets.npz", DATASET="npz")  # real runs: no test set, no ground truth
    jobs, _ = read_calls(tmp_path)
    assert list(jobs) == [("given", "0")] and jobs["given", "0"]["flags"][-1] == "--data_dir=pets.npz"
    assert "npz given seed 0: pets.npz has no test set  flagged as noisy: 3 of 10" in r.stdout
