"""What BKD's training buys: clean test accuracy of BKD against plain cross-entropy, same network, schedule and seeds.

    pip install -r studies/requirements.txt && python studies/make_study_npz.py --out ~/data/study   # see its --help
    python studies/learning_study.py                       # every run it needs (reused when finished), then the tables

Per label set, seed and schedule of the grid (studies/study.py: real image sources clean, with 20 % uniform and 25 %
pair flips, the demo's schedule and a long one): BKD with the default tipping rule, BKD with the reference's rule,
BKD without a split (--tipping_rule none: the teacher and the blind student with their compensation loss, one-hot
throughout) and plain cross-entropy (--recipe ce: one network of the same architecture in the same pipeline, the same
training split, augmentation, optimizer and schedule: what a user runs instead). Each gives its final networks' clean test accuracy and that of
the networks of its best noisy-validation epoch (validation every epoch), as learning.py reports them (--checkpoint
best). Differences are paired by seed; p is the paired t-test's. The ground truth only scores: the plain network's
fit of the wrong labels (the share of them its prediction matches, rising late when it memorises: its best and its
final checkpoint, without augmentation) is printed per schedule. Chosen on the sources of studies/study.py CHOSEN_SOURCES; confirmed on NEW_SOURCES.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study import (CHOSEN_SOURCES, NEW_SOURCES, NOISES, ROOT, STUDY_DATA, STUDY_SCHEDULES, LabelSet,  # noqa: E402
                   confirming, device_line, grid_run, guard_goes_back, guarded_run, label_sets, markdown_table,
                   mean_ci, paired, pm, run_all, signed, stop_if_failed, stop_if_missing, write_study)

sys.path.insert(0, ROOT)
from data import split_indices  # noqa: E402

METHODS = ("plain", "none", "noguard", "plateau", "reference")  # plain: one network with cross-entropy, --recipe ce


def cells(args):
    """(schedule, label set, seed) of the whole grid: every label set of the sources under the demo's and the long
    schedule, those of their small versions under the memorise one."""
    return [(schedule, name, seed) for schedule in args.schedules
            for name in label_sets(args.sources, [n for n in args.noises if schedule != "memorise" or n != NOISES[0]],
                                   schedule)
            for seed in args.seeds]


def runs_of(args):
    """{(schedule, method, label set, seed): Run} of the whole grid, trained where missing: the methods without the
    guard first, then the guarded runs that differ from them (study.guarded_run)."""
    runs = {}
    for schedule, name, seed in cells(args):
        if "plain" in args.methods:
            runs[schedule, "plain", name, seed] = grid_run(args.results_dir, schedule, "ce", name, seed, args.study_data)
        for method in ("none", "noguard", "reference"):
            if method in args.methods or (method == "noguard" and "plateau" in args.methods):
                runs[schedule, method, name, seed] = grid_run(args.results_dir, schedule, method, name, seed,
                                                              args.study_data)
    stop_if_failed(run_all(list(runs.values()), args.jobs, label="learning study runs"))
    if "plateau" in args.methods:
        guarded = {(sch, "plateau", name, seed): guarded_run(args.results_dir, sch, name, seed, args.study_data)
                   for sch, name, seed in cells(args)}
        stop_if_failed(run_all([run for run, train in guarded.values() if train], args.jobs,
                               label="runs where the guard goes back"))
        runs.update({key: run for key, (run, _) in guarded.items()})
    return runs


def final_test_predictions(run, data):
    """The final networks' predictions of the clean test images: the teacher's own and the pair's (the agreement of
    teacher and student that learning.py evaluates). Cached in <run>/test_predictions.npz."""
    cache = os.path.join(run.run_dir, "test_predictions.npz")
    if os.path.isfile(cache):
        with np.load(cache) as z:
            return z["teacher"], z["pair"]
    import torch
    from data.pipeline import DeviceBatches, to_device_images
    from utils.checkpoint import load_network
    from utils.engine import agreement_pass
    networks = [load_network(os.path.join(run.run_dir, f"{who}.pth.tar"), "small_cnn", data.num_classes)[0]
                for who in ("teacher", "student")]  # the checkpoint's own arch wins
    pad_mode, flip_first = data.augment
    batches = DeviceBatches(to_device_images(data.test_images, pad_mode, torch.device("cpu")),
                            torch.as_tensor(data.test_labels), None, data.mean_std, 256, flip_first=flip_first)
    _, pair, _, teacher = (t.numpy() for t in agreement_pass(*networks, batches, keep_teacher=True))
    np.savez(cache, teacher=teacher, pair=pair)
    return teacher, pair


def teacher_alone(run, data):
    """Clean test accuracy of the final teacher alone (its own argmax, not the agreement with the blind student that
    learning.py evaluates by default, as the reference does; learning.py --predict teacher): where the agreement
    loses to plain cross-entropy, how much of it the student's opinion costs."""
    return float(np.mean(final_test_predictions(run, data)[0] == data.test_labels) * 100)


def collapsed_at_end(run, data):
    """Whether the final pair has collapsed onto one class, by the watch's measure (utils.watch.collapse_level)
    replayed on the clean test images: the share of them it puts in one class against the largest class share of the
    given training labels. No ground truth; runs trained before the watch looked for collapses are counted too."""
    from utils.watch import collapsed_onto_one_class
    return collapsed_onto_one_class(final_test_predictions(run, data)[1], data.noisy_labels)


def contradicted(run, data):
    """Why soft targets can hurt (ground truth: a diagnostic, never a rule): of the right labels of the training
    split, the share that the split put in G3 or G4 and whose image the blind student, at the tipping epoch, gives
    another class: labels the soft targets push away from. From the run's recorded tipping pass; None without it."""
    m = run.metrics()
    if m.get("tipping_epoch") is None:
        return None
    path = os.path.join(run.run_dir, "passes", f"epoch_{m['tipping_epoch']:04d}.npz")
    if not os.path.isfile(path):
        return None
    from utils.bkd import assign_groups, otsu_split
    with np.load(path) as z:
        train_idx, agreement, student = z["train_idx"], z["train_agreement"], z["student_logits"]
    groups = assign_groups(agreement, otsu_split(agreement))
    given, right = data.noisy_labels[train_idx], data.noisy_labels[train_idx] == data.clean_labels[train_idx]
    pushed = (groups >= 3) & right & (student[train_idx].argmax(axis=1) != given)
    return float(pushed.sum() / max(right.sum(), 1))


def fits_wrong(run, data):
    """(at the best noisy-validation epoch, at the last) the share of the wrong labels of the training split that a
    --recipe ce run's network predicts (its fit of them: the ground truth, for this column only), from its checkpoints
    without augmentation. Cached in <run>/fits_wrong.json."""
    cache = os.path.join(run.run_dir, "fits_wrong.json")
    if os.path.isfile(cache):
        with open(cache) as f:
            return tuple(json.load(f))
    import torch
    from data.pipeline import DeviceBatches, to_device_images
    from utils.checkpoint import load_network
    from utils.engine import agreement_pass
    seed = int(run.flags[run.flags.index("--seed") + 1])
    train_idx = split_indices(len(data.noisy_labels), 0.1, seed)[0]
    wrong = train_idx[data.noise_or_not[train_idx]]
    if not len(wrong):
        return None
    pad_mode, flip_first = data.augment
    batches = DeviceBatches(to_device_images(data.train_images, pad_mode, torch.device("cpu")),
                            torch.as_tensor(data.noisy_labels), torch.as_tensor(wrong), data.mean_std, 256,
                            flip_first=flip_first)
    fits = []
    for prefix in ("best_", ""):
        network = load_network(os.path.join(run.run_dir, f"{prefix}network.pth.tar"), "small_cnn", data.num_classes)[0]
        fits.append(float((agreement_pass(network, None, batches)[1] == batches.labels[batches.indices]).float().mean()))
    with open(cache, "w") as f:
        json.dump(fits, f)
    return tuple(fits)


def accuracies(run, method):
    """(final clean test accuracy, that of the best noisy-validation epoch) of a finished run."""
    m = run.metrics()
    test = {t["epoch"]: t["accuracy"] for t in m["test"]}
    return m["final_test_accuracy"], test[m["best_epoch"]]


def diff(a, b):
    """'b - a' paired by seed, with its interval, and the paired t-test's p."""
    d, half, p = paired(a, b)
    return [signed(d, half, 2), "–" if np.isnan(p) else f"{p:.2f}"]


def tables(args, runs):
    """The study's markdown, per schedule and part (chosen on, confirmed on): a row per label set with each method's
    final clean test accuracy, the paired differences that decide (BKD against the pair without a split, which is BKD
    up to its split, and against plain cross-entropy; the guard's effect), the best-epoch accuracies, the teacher
    alone, how often the guard went back, how often the final networks collapsed, the plain network's fit of the
    wrong labels (best epoch -> last), and the share of right labels the split pushed away (contradicted), with its
    correlation to what the soft targets cost."""
    text = [f"Seeds {', '.join(map(str, args.seeds))}; {device_line()}. Clean test accuracy in %, mean ± 95 % interval "
            f"over seeds; differences paired by seed (p: paired t-test). Final = the networks of the last epoch "
            f"(teacher.pth.tar / student.pth.tar, what learning.py evaluates: the agreement of teacher and student); "
            f"best = those of the best noisy-validation epoch, validation every epoch (learning.py --checkpoint best); "
            f"teacher alone = the final teacher's own prediction (learning.py --predict teacher); collapsed = in how "
            f"many seeds the final pair puts more of the test images in one class than utils.watch's collapse level.\n"]
    header = ["label set", "plain CE", "no split", "BKD", "BKD - no split", "p", "BKD - plain CE", "p",
              "guard went back", "no guard - no split", "BKD - no guard", "reference", "reference - no split", "p",
              "best: plain CE", "best: BKD", "best: BKD - plain CE", "p", "teacher alone: BKD",
              "teacher alone - BKD", "p", "teacher alone - plain CE", "p",
              "collapsed: BKD, no guard, reference", "plain CE fits wrong labels",
              "right labels pushed away"]
    for schedule in args.schedules:
        flags = STUDY_SCHEDULES[schedule]
        epochs, lr, decay = (flags[flags.index(f) + 1] for f in ("--n_epoch", "--lr", "--lr_decay_every"))
        network = flags[flags.index("--arch") + 1] if "--arch" in flags else "small_cnn"
        names = list(dict.fromkeys(name for sch, name, _ in cells(args) if sch == schedule))
        spread = []  # (share of right labels pushed away, BKD without the guard - no split) of every noisy run
        for part, members in (("chosen on", [n for n in names if not confirming(n)]),
                              ("confirmed on", [n for n in names if confirming(n)])):
            rows = []
            for name in members:
                got = {m: [runs[schedule, m, name, seed] for seed in args.seeds] for m in METHODS
                       if (schedule, m, name, args.seeds[0]) in runs}
                acc = {m: np.array([accuracies(r, m) for r in got[m]]) for m in got}
                final = {m: acc[m][:, 0] for m in got}
                best = {m: acc[m][:, 1] for m in got}

                def level(values, m):
                    return pm(*mean_ci(values[m]), 2) if m in values else "–"

                def versus(values, a, b):
                    return diff(values[a], values[b]) if a in values and b in values else ["–", "–"]
                back = (f"{sum(r.metrics().get('went_back') is not None for r in got['plateau'])} of "
                        f"{len(args.seeds)}" if "plateau" in got else "–")
                pushed = "–"
                data = LabelSet(name, args.study_data).data()
                if "plateau" in got:  # learning.py --predict teacher on the default rule's final networks
                    final["alone"] = np.array([teacher_alone(r, data) for r in got["plateau"]])
                collapsed = ", ".join(str(sum(collapsed_at_end(r, data) for r in got[m])) if m in got else "–"
                                      for m in ("plateau", "noguard", "reference"))
                if "noguard" in got:
                    shares = [contradicted(r, data) for r in got["noguard"]]
                    if None not in shares:
                        pushed = f"{np.mean(shares):.3f}"
                        spread.extend(zip(shares, final["noguard"] - final["none"]) if "none" in got else [])
                fits = [fits_wrong(r, data) for r in got.get("plain", [])]
                fit_text = "–" if not fits or None in fits else (
                    f"{np.mean([best for best, _ in fits]):.2f} -> {np.mean([last for _, last in fits]):.2f}")
                rows.append([name, level(final, "plain"), level(final, "none"), level(final, "plateau"),
                             *versus(final, "none", "plateau"), *versus(final, "plain", "plateau"), back,
                             versus(final, "none", "noguard")[0], versus(final, "noguard", "plateau")[0],
                             level(final, "reference"),
                             *versus(final, "none", "reference"), level(best, "plain"), level(best, "plateau"),
                             *versus(best, "plain", "plateau"), level(final, "alone"),
                             *versus(final, "plateau", "alone"), *versus(final, "plain", "alone"),
                             collapsed, fit_text, pushed])
            if rows:
                text.append(f"\n### Schedule {schedule} ({epochs} epochs, learning rate {lr} x0.1 every {decay}, "
                            f"{network}), {part}\n\n" + markdown_table(header, rows))
        a, b = np.array(spread).T if spread else (np.zeros(0), np.zeros(0))
        if len(spread) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0:  # a correlation needs both to vary
            text.append(f"\nSchedule {schedule}: correlation of the share of right labels pushed away with BKD without "
                        f"the guard - no split, over the {len(spread)} runs that split: {np.corrcoef(a, b)[0, 1]:+.2f}\n")
    return "".join(text)


GUARD_CANDIDATES = [(z, epochs) for epochs in (2, 3, 5) for z in (1.0, 1.5, 2.0, 3.0)]  # (GUARD_Z, GUARD_EPOCHS)


def guard_table(args, runs):
    """How candidate settings of the guard (utils.watch: how far below the split's level, within how many epochs)
    would have done on the runs without it, replayed on their noisy-validation curves: in how many runs each goes
    back, and the clean test accuracy of the default rule with it against the pair without a split, where a run that
    goes back is counted at the accuracy of the no-split run of its seed (it continues as that run from the split's
    networks, a few epochs late: an estimate, which the real guarded runs of the tables above check)."""
    import utils.watch as watch
    saved = watch.GUARD_Z, watch.GUARD_EPOCHS
    rows = []
    try:
        for z, epochs in GUARD_CANDIDATES:
            watch.GUARD_Z, watch.GUARD_EPOCHS = z, epochs
            row, worst, backs, total = [f"{z:g}", epochs], np.inf, 0, 0
            for schedule in args.schedules:
                differences = []
                for name in dict.fromkeys(n for sch, n, _ in cells(args) if sch == schedule and not confirming(n)):
                    d = []
                    for seed in args.seeds:
                        unguarded = runs[schedule, "noguard", name, seed]
                        back = guard_goes_back(unguarded.metrics())
                        backs, total = backs + back, total + 1
                        guarded = runs[schedule, "none" if back else "noguard", name, seed]
                        d.append(accuracies(guarded, "x")[0] - accuracies(runs[schedule, "none", name, seed], "x")[0])
                    differences.append(np.mean(d))
                worst = min(worst, min(differences))
                row += [f"{np.mean(differences):+.2f}", f"{min(differences):+.2f}"]
            rows.append(row + [f"{backs} of {total}", f"{worst:+.2f}"])
    finally:
        watch.GUARD_Z, watch.GUARD_EPOCHS = saved
    header = ["GUARD_Z", "GUARD_EPOCHS"] + [f"{s}: {what}" for s in args.schedules for what in ("mean", "worst row")] + [
        "runs that go back", "worst row of all"]
    return ("\n### The guard's settings, replayed on the chosen-on runs without it (BKD with the guard - no split, "
            "mean over the label sets of each schedule and its worst label set)\n\n" + markdown_table(header, rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--sources", nargs="+", default=list(CHOSEN_SOURCES + NEW_SOURCES),
                   help=f"image sources of studies/make_study_npz.py, each {', '.join(NOISES)} (the memorise schedule: "
                        f"their small versions, with wrong labels)")
    p.add_argument("--schedules", nargs="+", default=list(STUDY_SCHEDULES), choices=list(STUDY_SCHEDULES))
    p.add_argument("--noises", nargs="+", default=list(NOISES), choices=list(NOISES),
                   help="label sets of each source (quoted: 'pair 25')")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"], help="seeds")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="which sides to train (a partial grid, trained first; the tables show '–' for a side not run)")
    p.add_argument("--study_data", default=STUDY_DATA, help="where studies/make_study_npz.py wrote its files")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/learning_study", help="where the runs and study.md go")
    p.add_argument("--guard_settings", action="store_true",
                   help="also replay candidate settings of the guard on the chosen-on runs without it (how the shipped "
                        "one was chosen)")
    args = p.parse_args()
    stop_if_missing(dict.fromkeys(n for _, n, _ in cells(args)), args.study_data, "learning_study.py")
    runs = runs_of(args)
    write_study(os.path.join(args.results_dir, "study.md"),
                tables(args, runs) + (guard_table(args, runs) if args.guard_settings else ""))


if __name__ == "__main__":
    main()
