"""Plain cross-entropy in two pipelines: the studies' former loop against the training script's --recipe ce.

    pip install -r studies/requirements.txt && python studies/make_study_npz.py --out ~/data/study   # see its --help
    python studies/ce_pipeline_study.py                    # every run it needs (reused when finished), then the table

The learning study (studies/learning_study.py) measured plain cross-entropy with a loop of its own
(studies/study.py train_one_network: the same network, training split, augmentation, batch size, optimizer and
schedule, but its own code); it now trains it with --recipe ce, one network in the training script's own pipeline.
Its tables were kept: this study says whether the two pipelines give the same clean test accuracy, on label sets of
the grid, paired by seed (the former loop seeded as it always was), under the demo's and the long schedule. Final =
the network of the last epoch, as the learning study compares.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study import (ROOT, STUDY_DATA, STUDY_SCHEDULES, LabelSet, Run, device_line, grid_run,  # noqa: E402
                   markdown_table, mean_ci, paired, pm, run_all, signed, stop_if_failed, stop_if_missing,
                   train_one_network, write_study)

sys.path.insert(0, ROOT)
from data import split_indices  # noqa: E402

THIS = os.path.abspath(__file__)
LABEL_SETS = ("digits pair 25", "fashion pair 25", "emoji pair 25")  # one handwriting, one photo, one colour drawing


def former(args):
    """The former loop on the BKD runs' training split: writes metrics.json with its final clean test accuracy."""
    data = LabelSet(args.label_set, args.study_data).data()
    train_idx = split_indices(len(data.noisy_labels), 0.1, args.seed)[0]
    predict, image_epochs = train_one_network(data, train_idx, args.seed, args.schedule)
    accuracy = float(np.mean(predict(data.test_images).argmax(axis=1) == data.test_labels) * 100)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(dict(finished=True, final_test_accuracy=accuracy, image_epochs=image_epochs), f)


def former_run(args, schedule, name, seed):
    out = os.path.join(args.results_dir, "runs", schedule, "former", LabelSet(name, args.study_data).folder,
                       f"seed_{seed}")
    return Run(THIS, ["former", "--label_set", name, "--seed", seed, "--schedule", schedule, "--study_data",
                      args.study_data, "--out", out], out)


def table(args, runs):
    """Per schedule and label set: each side's mean, the paired difference, and in how many seeds the two give the
    same accuracy (to 1e-4 points: the training script computes it in float32, the former loop in float64)."""
    header = ["schedule", "label set", "former loop", "--recipe ce", "--recipe ce - former loop", "p",
              "seeds with the same accuracy"]
    rows = []
    for schedule in args.schedules:
        for name in args.label_sets:
            acc = {side: np.round([runs[schedule, side, name, seed].metrics()["final_test_accuracy"]
                                   for seed in args.seeds], 4) for side in ("former", "ce")}
            d, half, p = paired(acc["former"], acc["ce"])
            same = int(np.sum(acc["former"] == acc["ce"]))
            rows.append([schedule, name, pm(*mean_ci(acc["former"]), 2), pm(*mean_ci(acc["ce"]), 2),
                         signed(d, half, 2), "–" if np.isnan(p) else f"{p:.2f}", f"{same} of {len(args.seeds)}"])
    return (f"Seeds {', '.join(args.seeds)}; {device_line()}. Clean test accuracy in % of the final network, mean ± 95 % "
            f"interval over seeds; the difference paired by seed (p: paired t-test).\n\n" + markdown_table(header, rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    sub = p.add_subparsers(dest="command")
    one = sub.add_parser("former", help="(internal) train the former loop on one label set")
    for flag in ("label_set", "schedule", "study_data", "out"):
        one.add_argument(f"--{flag}", required=True)
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--resume", action="store_true", help="(ignored: retrained unless finished)")
    p.add_argument("--label_sets", nargs="+", default=list(LABEL_SETS), help="label sets of the grid (quoted)")
    p.add_argument("--schedules", nargs="+", default=["demo", "long"], choices=list(STUDY_SCHEDULES))
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"], help="seeds")
    p.add_argument("--study_data", default=STUDY_DATA, help="where studies/make_study_npz.py wrote its files")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/ce_pipeline_study", help="where the runs and study.md go")
    args = p.parse_args()
    if args.command == "former":
        return former(args)
    stop_if_missing(args.label_sets, args.study_data, "ce_pipeline_study.py")
    runs = {}
    for schedule in args.schedules:
        for name in args.label_sets:
            for seed in args.seeds:
                runs[schedule, "former", name, seed] = former_run(args, schedule, name, seed)
                runs[schedule, "ce", name, seed] = grid_run(args.results_dir, schedule, "ce", name, seed,
                                                            args.study_data)
    stop_if_failed(run_all(list(runs.values()), args.jobs, label="plain cross-entropy runs"))
    write_study(os.path.join(args.results_dir, "study.md"), table(args, runs))


if __name__ == "__main__":
    main()
