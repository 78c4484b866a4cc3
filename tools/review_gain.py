"""What fixing BKD's flagged labels gains, measured: the table of the README's "Review and fix".

    python tools/review_gain.py                  # synthetic worst labels, the demo's schedule, seed 0: ~6 min on 2 CPU cores
    python tools/review_gain.py --seeds 0 1 2    # and the mean over three seeds (what the README's table shows)

Per seed: trains on the labels as they are (a), runs detection.py (label_fixes_suggested.csv, review.html), then
trains again with (b) label_fixes_suggested.csv ("trust BKD"), (c) the fixes a careful reviewer of the flagged
images would make (each set to its true label, tools/reviewer_fixes.py), and (b) and (c) once more with the uncertain
images of the page's second section added. Prints a markdown table: for the first seed, how many labels the fixes
changed and the share of wrong labels among the training images before and after; for every seed, clean test
accuracy (learning.py's number), and their mean. The training flags are run.sh's demo flags, so runs that
`DATASET=synthetic bash run.sh` finished in the same --results_dir are reused (--resume), and so are this script's
own: it can go on where it stopped.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data.fixes import run_dir_suffix  # noqa: E402


def call(*command):
    """Run a command of the repository, echoing it; stop with its output if it fails."""
    print("$ " + " ".join(map(str, command)), flush=True)
    result = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"review_gain.py: {command[0]} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic", help="a data set with ground truth (synthetic, cifar10, ...)")
    p.add_argument("--noise_type", default="worst", help="its label set")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds: every variant is trained with each")
    p.add_argument("--results_dir", default="results", help="where the runs go")
    p.add_argument("--train_flags", default="--n_epoch 24 --lr 0.1 --lr_decay_every 5 --print_freq 10 "
                                            "--noisy_val_freq 3 --clean_test_freq 3",
                   help="more flags of the training runs (default: run.sh's flags of the synthetic demo)")
    args = p.parse_args()
    results = {}  # variant: [(labels changed, wrong before, wrong after, test accuracy) per seed]
    for seed in args.seeds:
        for what, row in measure(args, seed):
            results.setdefault(what, []).append(row)
    seeds = ", ".join(map(str, args.seeds))
    print(f"\n| training labels | labels changed (seed {args.seeds[0]}) | wrong training labels (seed {args.seeds[0]}) | "
          + " | ".join(f"clean test accuracy, seed {s}" for s in args.seeds)
          + (f" | mean over seeds {seeds} |" if len(args.seeds) > 1 else " |"))
    print("| --- " * (3 + len(args.seeds) + (len(args.seeds) > 1)) + "|")
    for what, rows in results.items():
        changed, before, after, _ = rows[0]
        accuracies = [r[3] for r in rows]
        cells = [what, str(changed), f"{100 * before:.1f} % → {100 * after:.1f} %"]
        cells += [f"{a:.1f} %" for a in accuracies] + ([f"{sum(accuracies) / len(accuracies):.1f} %"]
                                                       if len(accuracies) > 1 else [])
        print("| " + " | ".join(cells) + " |")


def measure(args, seed):
    """[(variant, (labels changed, wrong labels before, after, clean test accuracy))] of one seed."""
    data = ["--dataset", args.dataset, "--noise_type", args.noise_type, "--seed", seed, "--results_dir", args.results_dir]
    train = ["blind_knowledge_dist_training.py", *data, *args.train_flags.split(), "--resume"]
    run = os.path.join(args.results_dir, f"{args.dataset}_{args.noise_type}_seed_{seed}")
    call(*train)
    call("detection.py", *data)
    variants = [("(a) the labels as they are", None),
                ("(b) label_fixes_suggested.csv: every flagged image to BKD's suggestion",
                 os.path.join(run, "label_fixes_suggested.csv"))]
    for reviewer, groups, what in (("truth", [4], "(c) a careful reviewer: every flagged image to its true label"),
                                   ("suggestion", [4, 3], "(b') BKD's suggestion, flagged and uncertain images"),
                                   ("truth", [4, 3], "(c') a careful reviewer, flagged and uncertain images")):
        call("tools/reviewer_fixes.py", *data, "--reviewer", reviewer, "--groups", *groups)
        variants.append((what, os.path.join(run, f"label_fixes_{reviewer}_groups_{''.join(map(str, groups))}.csv")))
    rows = []
    for what, fixes in variants:
        extra = [] if fixes is None else ["--label_fixes", fixes]
        call(*train, *extra)
        accuracy = float(call("learning.py", *data, *extra).split("test accuracy: ")[1].split(" %")[0])
        with open(os.path.join(run + ("" if fixes is None else run_dir_suffix(fixes)), "metrics.json")) as f:
            fixed = json.load(f)["label_fixes"] or {}  # (a) has none
        rows.append([what, fixed.get("relabelled", 0), fixed.get("wrong_before"), fixed.get("wrong_after"), accuracy])
    noise_rate = rows[1][2]  # the share of wrong labels on disk, the same before every set of fixes
    rows[0][2:4] = noise_rate, noise_rate
    return [(row[0], tuple(row[1:])) for row in rows]


if __name__ == "__main__":
    main()
