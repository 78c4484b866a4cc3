"""Fix policies: what to do with BKD's findings without a reviewer, measured by retraining with each policy's fixes.

    pip install -r studies/requirements.txt && python studies/make_study_npz.py --out ~/data/study   # the label sets
    python studies/fix_policy_study.py                  # chosen on the digits, confirmed on Fashion- and Animal-MNIST
    python studies/fix_policy_study.py --label_sets "digits pair 25" --seeds 0 --policies drop      # a quick look

Per label set and seed: trains on the labels as they are (the default tipping rule, every full-set pass up to the
split recorded), turns the run's detection into the fixes of each candidate policy (CANDIDATES, below) and into a
careful reviewer's fixes (every flagged image set to its true label: the ceiling, which reads the ground truth),
retrains with each, and reports clean test accuracy (mean ± 95 % interval over seeds, the difference to "as is"
paired by seed, and the worst seed's difference) and the share of wrong training labels before and after the fixes.

Choose, then confirm. A policy is chosen on CHOSEN_ON (the digits, with three noise models) and confirmed on
studies/study.py's CONFIRMED_ON (Fashion-MNIST, Animal-MNIST, MNIST: sources this choice had not seen; the flagged cut's
second round was chosen on the first two later, flag_study.md), in two tables. It
qualifies where its paired mean is >= 0 and no seed is more than 0.5 points below "as is", on every label set of the
part; the chosen policy is the qualifying one with the highest mean on the chosen-on part, and it would ship
(detection.py writing its fixes) only if it also qualified on every confirmed-on label set: the worst confirmed row
decides. None did (fix_policy_study.md), so none ships. The ground truth only scores (and makes the reviewer's fixes); no candidate reads it.
Runs go to --results_dir and are reused when finished, resumed when interrupted: run it again to go on where it
stopped. The tables go to --results_dir/study.md.
Any data set with ground truth works too: --dataset npz --data_dir FILE.npz --noise_types given (one part, "given").
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study import (CONFIRMED_ON, DEMO_FLAGS, ROOT, STUDY_DATA, LabelSet, Run, device_line,  # noqa: E402
                   markdown_table, mean_ci, paired, pm, run_all, signed, stop_if_failed)

sys.path.insert(0, ROOT)
from data import load_dataset  # noqa: E402
from data.fixes import as_row, drop_row, fix_row, run_dir_suffix, write_label_fixes  # noqa: E402
from utils.bkd import DegenerateSplit, assign_groups, otsu_split  # noqa: E402
from utils.flagging import probabilities  # noqa: E402
from utils.label_issues import in_dataset_order, read_label_issues  # noqa: E402

TRAINING = os.path.join(ROOT, "blind_knowledge_dist_training.py")
CHOSEN_ON = ("digits lookalike 25", "digits uniform 20", "digits pair 25")  # the digits: a real source, both models
REVIEWER = "reviewer"  # every flagged image set to its true label: what a careful reviewer would do (the ceiling)
REVIEWER_DOES = ("every flagged image whose label is wrong set to its true label (the ceiling: it reads the ground "
                 "truth)")
WORST_SEED = -0.5  # points: a policy that costs a seed more than this against the labels as they are does not qualify


# ---------------------------------------------------------------------------- what a run's detection offers
def last_passes(run_dir, metrics):
    """(agreement probabilities (passes, N, C), the teacher's predicted classes (passes, N)) of the last full-set
    passes a run held when it split, as its metrics.json names them (label_issues_passes), from the passes it
    recorded with --record_passes."""
    probs, teacher = [], []
    for epoch in metrics["label_issues_passes"]["last"]:
        with np.load(os.path.join(run_dir, "passes", f"epoch_{epoch:04d}.npz")) as z:
            probs.append(probabilities(z["teacher_logits"], z["student_logits"])[0])
            teacher.append(z["teacher_logits"].argmax(axis=1))
    return np.stack(probs), np.stack(teacher)


def upper_mean(agreement):
    """The upper mean of the modified Otsu split of agreements (nan where no split is possible)."""
    try:
        split = otsu_split(agreement)
    except DegenerateSplit:
        return float("nan")
    return float(agreement[assign_groups(agreement, split) <= 2].mean())


def evidence(run_dir, metrics, data):
    """Per image, in dataset order, what a policy may use (never the ground truth): flagged (label_issues.csv's
    flagged column), the suggested label, whether the suggestion is sure the way the page marked it until now
    (`sure`: the agreement on it, averaged over the last passes, at least the upper mean of the tipping pass's
    split), and `stable`: the suggestion is the agreement's argmax and the teacher's prediction in every one of the
    last passes, and its averaged agreement reaches the upper mean of the split of the same averaged passes' agreement
    on the given labels (one pass set throughout)."""
    table = read_label_issues(os.path.join(run_dir, "label_issues.csv"), len(data.noisy_labels))
    column = {name: in_dataset_order(table, name) for name in ("flagged", "suggested_label", "agreement_given",
                                                               "agreement_suggested", "group")}
    groups = np.asarray(column["group"]).astype(str)
    upper = np.isin(groups, ("1", "2"))
    tipping_upper = column["agreement_given"][upper].mean() if upper.any() else np.nan
    probs, teacher = last_passes(run_dir, metrics)
    recent = probs.mean(axis=0)
    suggested, labels = column["suggested_label"], data.noisy_labels
    same = np.all(probs.argmax(axis=2) == suggested, axis=0) & np.all(teacher == suggested, axis=0)
    recent_upper = upper_mean(recent[np.arange(len(labels)), labels][data.kept])
    return dict(flagged=column["flagged"].astype(bool), suggested=suggested,
                sure=column["agreement_suggested"] >= tipping_upper,
                stable=same & (recent.max(axis=1) >= recent_upper))


# ---------------------------------------------------------------------------- the candidates
def relabel_and_drop(data, suggested, relabel, drop):
    """Fix rows: `relabel` images to their suggestion, `drop` images dropped (a run trained with fixes keeps its own
    other rows, so that the file again applies to the data set on disk)."""
    rows = {} if data.label_fixes is None else {fix.index: as_row(fix) for fix in data.label_fixes.rows}
    for i in np.flatnonzero(relabel & (suggested != data.noisy_labels)):
        rows[int(i)] = fix_row(data, i, suggested[i])
    for i in np.flatnonzero(drop):
        rows[int(i)] = drop_row(data, i)
    return [rows[i] for i in sorted(rows)]


CANDIDATES = {  # name: (what it does, fixes of (data, evidence))
    "relabel_sure": ("flagged images relabelled where the suggestion is sure, the other flagged images dropped (what "
                     "an earlier version suggested)",
                     lambda d, e: relabel_and_drop(d, e["suggested"], e["flagged"] & e["sure"],
                                                   e["flagged"] & ~e["sure"])),
    "drop": ("every flagged image dropped",
             lambda d, e: relabel_and_drop(d, e["suggested"], np.zeros_like(e["flagged"]), e["flagged"])),
    "relabel_stable": ("flagged images relabelled where the suggestion is stable and sure, the others kept",
                       lambda d, e: relabel_and_drop(d, e["suggested"], e["flagged"] & e["stable"],
                                                     np.zeros_like(e["flagged"]))),
    "drop_stable": ("flagged images dropped where the suggestion is stable and sure, the others kept",
                    lambda d, e: relabel_and_drop(d, e["suggested"], np.zeros_like(e["flagged"]),
                                                  e["flagged"] & e["stable"])),
}


def write_policy_files(run, metrics, data, policies):
    """Each policy's fixes of one finished run, as files in <run>/policy_fixes/; {policy: path}."""
    e = evidence(run.run_dir, metrics, data)
    os.makedirs(os.path.join(run.run_dir, "policy_fixes"), exist_ok=True)
    paths = {}
    for policy in policies:
        if policy == REVIEWER:
            rows = [fix_row(data, i, data.clean_labels[i]) for i in
                    np.flatnonzero(e["flagged"] & (data.clean_labels != data.noisy_labels))]
        else:
            rows = CANDIDATES[policy][1](data, e)
        paths[policy] = os.path.join(run.run_dir, "policy_fixes", f"{policy}.csv")
        write_label_fixes(paths[policy], rows)
    return paths


# ---------------------------------------------------------------------------- the runs
def label_sets(args):
    """[(name, part, data flags, results folder, run name)] of the study."""
    if args.dataset:
        extra = [x for flag in ("data_dir", "noise_path") if getattr(args, flag)
                 for x in (f"--{flag}", getattr(args, flag))]
        return [(noise, "given", ["--dataset", args.dataset, "--noise_type", noise] + extra,
                 os.path.join(args.results_dir, args.dataset), f"{args.dataset}_{noise}") for noise in args.noise_types]
    out = []
    for name in args.label_sets:
        ls = LabelSet(name, args.study_data)
        missing = ls.missing_file()
        if missing:
            sys.exit(f"fix_policy_study.py: {missing}")
        out.append((name, ls.part, ls.flags, os.path.join(args.results_dir, ls.folder), ls.run_name))
    return out


def dataset_of(name, flags, args):
    if args.dataset:
        return load_dataset(args.dataset, name, os.path.expanduser(args.data_dir or "~/data"), args.noise_path)
    return LabelSet(name, args.study_data).data()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--label_sets", nargs="+", default=list(CHOSEN_ON + CONFIRMED_ON),
                   help="label sets of studies/study.py (default: the chosen-on and the confirmed-on ones)")
    p.add_argument("--study_data", default=STUDY_DATA, help="where studies/make_study_npz.py wrote its files")
    p.add_argument("--dataset", default=None, help="instead: one data set with ground truth (synthetic, cifar10, npz...)")
    p.add_argument("--data_dir", default=None, help="its --data_dir, where it needs one")
    p.add_argument("--noise_path", default=None, help="its --noise_path (CIFAR-N label file), where it needs one")
    p.add_argument("--noise_types", nargs="+", default=["worst"], help="with --dataset: its label sets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    p.add_argument("--policies", nargs="+", default=list(CANDIDATES) + [REVIEWER],
                   choices=list(CANDIDATES) + [REVIEWER], help="the policies to retrain with")
    p.add_argument("--train_flags", default=" ".join(DEMO_FLAGS),
                   help="more flags of every training run (default: run.sh's schedule of the synthetic demo)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/fix_policy_study", help="where the runs and study.md go")
    args = p.parse_args()

    sets = label_sets(args)
    as_is = {(name, seed): Run(TRAINING, flags + ["--seed", seed, "--results_dir", folder, "--record_passes"]
                               + args.train_flags.split(), os.path.join(folder, f"{run_name}_seed_{seed}"))
             for name, _, flags, folder, run_name in sets for seed in args.seeds}
    stop_if_failed(run_all(list(as_is.values()), args.jobs, label="as is"))
    fixed = {}
    for (name, seed), run in as_is.items():
        metrics = run.metrics()
        if metrics["tipping_epoch"] is None:
            print(f"{run.run_dir}: no tipping epoch, so no detection to act on; left out")
            continue
        flags = [f for f in run.flags if f != "--record_passes"]  # the retrains' passes are not needed
        data = dataset_of(name, flags, args)
        for policy, path in write_policy_files(run, metrics, data, args.policies).items():
            fixed[name, seed, policy] = Run(TRAINING, flags + ["--label_fixes", path], run.run_dir + run_dir_suffix(path))
    stop_if_failed(run_all(list(fixed.values()), args.jobs, label="retrained with fixes"))
    write_tables(args, sets, as_is, fixed)


def write_tables(args, sets, as_is, fixed):
    header = ["label set", "training labels", "clean test accuracy (%)", "difference to as is (points)", "p",
              "worst seed", "wrong training labels", "relabelled", "dropped", "tipping epoch per seed"]
    parts = list(dict.fromkeys(part for _, part, _, _, _ in sets))
    diffs = {}  # (part, policy) -> {label set: [paired differences by seed]}
    text = (f"Seeds {', '.join(map(str, args.seeds))}, training flags {args.train_flags}; {device_line()}. Mean ± 95 % "
            f"interval over seeds; the difference to as is is paired by seed (p: paired t-test; worst seed: the "
            f"lowest difference of a seed). The policies: "
            + "; ".join(f"{p}: {CANDIDATES[p][0] if p in CANDIDATES else REVIEWER_DOES}" for p in args.policies)
            + ".\n")
    for part in parts:
        rows = []
        for name in [n for n, pt, _, _, _ in sets if pt == part]:
            seeds = [s for s in args.seeds if all((name, s, policy) in fixed for policy in args.policies)]
            if not seeds:
                rows.append([name, "no run with a detection"] + ["–"] * 8)
                continue
            base = [as_is[name, s].metrics() for s in seeds]
            accuracy = [m["final_test_accuracy"] for m in base]
            noise = np.mean([m["detection"]["truly_noisy"] / m["detection"]["images"] for m in base]) * 100
            rows.append([name, "as is", pm(*mean_ci(accuracy), 2), "", "", "", f"{noise:.1f} %", "", "",
                         tipping_epochs(base)])
            for policy in args.policies:
                ms = [fixed[name, s, policy].metrics() for s in seeds]
                acc = [m["final_test_accuracy"] for m in ms]
                diff, half, p = paired(accuracy, acc)
                by_seed = [a - b for a, b in zip(acc, accuracy)]
                diffs.setdefault((part, policy), {})[name] = by_seed
                info = [m["label_fixes"] for m in ms]
                rows.append([name, policy, pm(*mean_ci(acc), 2), signed(diff, half, 2),
                             "–" if np.isnan(p) else f"{p:.2f}", f"{min(by_seed):+.2f}",
                             f"{noise:.1f} % → {np.mean([i['wrong_after'] for i in info]) * 100:.1f} %",
                             f"{np.mean([i['relabelled'] for i in info]):.0f}",
                             f"{np.mean([i['dropped'] for i in info]):.0f}", tipping_epochs(ms)])
        text += f"\n**{part}**\n\n" + markdown_table(header, rows)
    lines, verdict = [], {}
    for part in parts:
        for policy in args.policies:
            by_set = diffs.get((part, policy), {})
            if not by_set:
                continue
            ok = all(np.mean(d) >= 0 and min(d) >= WORST_SEED for d in by_set.values())
            worst = min(by_set, key=lambda n: np.mean(by_set[n]))
            verdict[part, policy] = ok
            mean, worst_seed = np.mean([np.mean(d) for d in by_set.values()]), min(min(d) for d in by_set.values())
            lines.append(f"- {part}, {policy}: " + ("qualifies" if ok else "does not qualify") + f" (mean difference "
                         f"{mean:+.2f} points over its label sets; worst label set {worst}: "
                         f"{np.mean(by_set[worst]):+.2f}, worst seed {worst_seed:+.2f})"
                         + (" (the ceiling: it reads the ground truth)" if policy == REVIEWER else ""))
    first = parts[0]
    qualified = sorted((p for p in args.policies if p != REVIEWER and verdict.get((first, p))),
                       key=lambda p: -np.mean([np.mean(d) for d in diffs[first, p].values()]))
    chosen = qualified[0] if qualified else None
    confirmed = chosen is not None and all(verdict.get((part, chosen), False) for part in parts[1:])
    lines.append(f"chosen ({first}): {chosen or 'none'}" + ("" if chosen is None or len(parts) == 1 else
                                                          f"; {'confirmed' if confirmed else 'not confirmed'} "
                                                          f"({', '.join(parts[1:])})"))
    ships = chosen if chosen is not None and (confirmed or len(parts) == 1) else None
    lines.append(f"ships: {ships or 'none'}" + ("" if ships is None else " (a policy to suggest without a review)"))
    text += "\n" + "\n".join(lines) + "\n"
    os.makedirs(args.results_dir, exist_ok=True)
    out = os.path.join(args.results_dir, "study.md")
    with open(out, "w") as f:
        f.write(text)
    print("\n" + text + f"\nwritten: {out}")


def tipping_epochs(runs):
    """The tipping epochs of runs, seed by seed ('–' for a run without one)."""
    return ", ".join("–" if m["tipping_epoch"] is None else str(m["tipping_epoch"]) for m in runs)


if __name__ == "__main__":
    main()
