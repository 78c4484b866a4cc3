"""Fix policies: what to do with BKD's findings without a reviewer, measured by retraining with each policy's fixes.

    python tools/fix_policy_study.py                     # the study of docs/review.md: synthetic aggre, worst, rand1, seeds 0-2
    python tools/fix_policy_study.py --noise_types worst --seeds 0 --policies drop     # a quick look

Per label set and seed: trains on the labels as they are, turns the run's detection into the fixes of each policy
(data/fixes.py FIX_POLICIES) and into a careful reviewer's fixes (every flagged image set to its true label, the
ceiling), retrains with each, and reports clean test accuracy (mean ± 95 % interval over seeds, and the difference to
"as is" paired by seed) and the share of wrong training labels before and after the fixes. A policy qualifies when its
mean accuracy is not below "as is" on any label set; of those, the one with the highest mean over the label sets is the
one to set as SUGGESTED_POLICY in data/fixes.py (detection.py then writes its fixes as label_fixes_suggested.csv).
Runs go to --results_dir and are reused when finished, resumed when interrupted: run it again to go on where it
stopped. The table is also written to --results_dir/study.md.
Any data set with ground truth works: --dataset npz --data_dir FILE.npz --noise_types given --train_flags "...".
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study import (ROOT, Run, add_arguments, data_flags, device_line, markdown_table, mean_ci, paired, pm,  # noqa: E402
                   run_all, signed, stop_if_failed)

sys.path.insert(0, ROOT)
from data import load_dataset  # noqa: E402
from data.fixes import FIX_POLICIES, SUGGESTED_POLICY, fix_row, run_dir_suffix, run_policy_fixes, write_label_fixes  # noqa: E402
from utils.label_issues import in_dataset_order, read_label_issues  # noqa: E402

TRAINING = os.path.join(ROOT, "blind_knowledge_dist_training.py")
REVIEWER = "reviewer"  # every flagged image set to its true label: what a careful reviewer of the page would do


def base_flags(args, noise_type, seed):
    return data_flags(args, noise_type, seed) + ["--results_dir", args.results_dir] + args.train_flags.split()


def write_policy_files(args, noise_type, seed, run_dir, policies):
    """Each policy's fixes of one finished run, as files in <run>/policy_fixes/; {policy: path}."""
    data = load_dataset(args.dataset, noise_type, os.path.expanduser(args.data_dir or "~/data"), args.noise_path)
    if data.clean_labels is None:
        sys.exit(f"fix_policy_study.py: the {noise_type} labels of {args.dataset} have no ground truth to score with")
    table = read_label_issues(os.path.join(run_dir, "label_issues.csv"), len(data.noisy_labels))
    flagged = in_dataset_order(table, "flagged")  # what the review page flags
    os.makedirs(os.path.join(run_dir, "policy_fixes"), exist_ok=True)
    paths = {}
    for policy in policies:
        if policy == REVIEWER:
            rows = [fix_row(data, i, data.clean_labels[i]) for i in
                    np.flatnonzero(flagged & (data.clean_labels != data.noisy_labels))]
        else:
            rows = run_policy_fixes(data, policy, table)
        paths[policy] = os.path.join(run_dir, "policy_fixes", f"{policy}.csv")
        write_label_fixes(paths[policy], rows)
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--noise_types", nargs="+", default=["aggre", "worst", "rand1"], help="label sets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds")
    p.add_argument("--policies", nargs="+", default=list(FIX_POLICIES) + [REVIEWER],
                   choices=list(FIX_POLICIES) + [REVIEWER], help="the policies to retrain with")
    add_arguments(p, "results/fix_policy_study")
    args = p.parse_args()

    cells = [(n, s) for n in args.noise_types for s in args.seeds]
    as_is = {c: Run(TRAINING, base_flags(args, *c), os.path.join(args.results_dir, f"{args.dataset}_{c[0]}_seed_{c[1]}"))
             for c in cells}
    stop_if_failed(run_all(list(as_is.values()), args.jobs, label="as is"))
    fixed = {}
    for c, run in as_is.items():
        if run.metrics()["tipping_epoch"] is None:
            print(f"{run.run_dir}: no tipping epoch, so no detection to act on; left out")
            continue
        for policy, path in write_policy_files(args, *c, run.run_dir, args.policies).items():
            fixed[c + (policy,)] = Run(TRAINING, base_flags(args, *c) + ["--label_fixes", path],
                                       run.run_dir + run_dir_suffix(path))
    stop_if_failed(run_all(list(fixed.values()), args.jobs, label="retrained with fixes"))

    header = ["label set", "training labels", "clean test accuracy (%)", "difference to as is (points)", "p",
              "wrong training labels", "relabelled", "dropped", "tipping epoch per seed"]
    rows, means = [], {}
    for n in args.noise_types:
        seeds = [s for s in args.seeds if all((n, s, policy) in fixed for policy in args.policies)]
        if not seeds:
            rows.append([n, "no run with a detection", "–", "–", "–", "–", "–", "–", "–"])
            continue
        base = [as_is[n, s].metrics() for s in seeds]
        accuracy = [m["final_test_accuracy"] for m in base]
        noise = np.mean([noise_rate(m) for m in base]) * 100
        rows.append([n, "as is", pm(*mean_ci(accuracy), 2), "", "", f"{noise:.1f} %", "", "", tipping_epochs(base)])
        for policy in args.policies:
            ms = [fixed[n, s, policy].metrics() for s in seeds]
            acc = [m["final_test_accuracy"] for m in ms]
            diff, half, p = paired(accuracy, acc)
            means.setdefault(policy, {})[n] = diff
            info = [m["label_fixes"] for m in ms]
            rows.append([n, policy, pm(*mean_ci(acc), 2), signed(diff, half, 2), "–" if np.isnan(p) else f"{p:.2f}",
                         f"{noise:.1f} % → {np.mean([i['wrong_after'] for i in info]) * 100:.1f} %",
                         f"{np.mean([i['relabelled'] for i in info]):.0f}", f"{np.mean([i['dropped'] for i in info]):.0f}",
                         tipping_epochs(ms)])
    verdict = []
    for policy, diffs in means.items():
        ok = all(d >= 0 for d in diffs.values())
        verdict.append((ok and policy != REVIEWER, np.mean(list(diffs.values())), policy, ok))
    lines = [f"- {policy}: mean difference to as is {mean:+.2f} points over the label sets; "
             + ("not below as is on any label set" if ok else "below as is on " + ", ".join(
                 n for n, d in means[policy].items() if d < 0)) + (" (the ceiling, needs the ground truth)"
                                                                  if policy == REVIEWER else "")
             for _, mean, policy, ok in sorted(verdict, reverse=True)]
    best = [policy for qualifies, _, policy, _ in sorted(verdict, reverse=True) if qualifies]
    lines.append(f"chosen: {best[0]}" if best else "chosen: none (no policy without a reviewer is safe)")
    lines.append(f"detection.py writes the fixes of: {SUGGESTED_POLICY or 'none'} (SUGGESTED_POLICY in data/fixes.py)")
    text = (f"{args.dataset}, seeds {', '.join(map(str, args.seeds))}, training flags {args.train_flags}; "
            f"{device_line()}. Mean ± 95 % interval over seeds; the difference to as is is paired by seed (p: paired t-test).\n\n"
            + markdown_table(header, rows) + "\n" + "\n".join(lines) + "\n")
    os.makedirs(args.results_dir, exist_ok=True)
    out = os.path.join(args.results_dir, "study.md")
    with open(out, "w") as f:
        f.write(text)
    print("\n" + text + f"\nwritten: {out}")


def tipping_epochs(runs):
    """The tipping epochs of runs, seed by seed ('–' for a run without one): an early one (a spurious peak of the
    student's confidence) splits a network that has barely learnt, and its accuracy collapses."""
    return ", ".join("–" if m["tipping_epoch"] is None else str(m["tipping_epoch"]) for m in runs)


def noise_rate(metrics):
    """The share of wrong labels of an as-is run, from its detection report (truly noisy / images)."""
    d = metrics["detection"]
    return d["truly_noisy"] / d["images"]


if __name__ == "__main__":
    main()
