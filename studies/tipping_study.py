"""Tipping-point rules: what the student's confidence curve says, and which rule finds the real turn.

    pip install -r studies/requirements.txt && python studies/make_study_npz.py --out ~/data/study
    python studies/tipping_study.py record                  # recording runs: never split, every epoch's pass saved
    python studies/tipping_study.py replay                  # every rule replayed on them: table and pictures

`record` trains each label set, seed and schedule once with `--tipping_rule none --record_passes`: one-hot training
throughout, the full-set pass of every epoch saved. Up to the split, a run of any rule is this run (the same seed
makes the same steps, the same passes and the same confidence curve), so `replay` can play every rule offline: the
epoch it would split at, and the detection that epoch's pass gives (precision, recall, F1 and AUROC against the
ground truth, which scores and never decides). Beside each rule it shows what the ground truth says about the curve:
the onset of memorisation (the epoch after which the teacher fits more and more of the wrong labels: the minimum of
the share of wrong labels it predicts) and the best epoch (the highest detection F1 of any epoch's pass).
Sources: the synthetic stand-in (clean, aggre, worst, rand1) and scikit-learn's digits (studies/make_study_npz.py,
0, 5 and 25 % wrong labels). Runs are reused when finished and resumed when interrupted.
"""
import argparse
import os
import sys

import json

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study import (CONFIRMED_ON, DEMO_FLAGS, ROOT, STUDY_DATA, LabelSet, Run, device_line, markdown_table,  # noqa: E402
                   mean_ci, paired, pm, run_all, signed, stop_if_failed)

sys.path.insert(0, ROOT)
from data import load_dataset  # noqa: E402
from utils.bkd import DegenerateSplit, assign_groups, find_tipping_epoch, otsu_split, precision_recall_f1  # noqa: E402
from utils.metrics import auroc  # noqa: E402
from utils.tipping import (DEFAULT_RULE, FIT_SHARE, MARGIN, PATIENCE, noise_level, plateau_rule,  # noqa: E402
                           premature_split, recent_rise)

TRAINING = os.path.join(ROOT, "blind_knowledge_dist_training.py")
LOGGING = ["--print_freq", "100", "--noisy_val_freq", "3", "--clean_test_freq", "3"]
SCHEDULES = {  # name: the training flags
    "demo": DEMO_FLAGS,  # run.sh's demo until now: lr x0.1 every 5 epochs
    "long": ["--n_epoch", "48", "--lr", "0.1", "--lr_decay_every", "32"] + LOGGING,  # the reference's shape: constant, one step
}
SOURCES = {  # name: (label sets, their data flags)
    "synthetic": ("clean aggre worst rand1".split(), lambda noise, args: ["--dataset", "synthetic", "--noise_type", noise]),
    "digits": ("0 5 25".split(), lambda noise, args: ["--dataset", "npz", "--data_dir",
                                                        os.path.join(args.study_data, f"digits_lookalike_{noise}.npz"),
                                                        "--arch", "small_cnn"]),
}


def recording_runs(args):
    """{(source, label set, schedule, seed): Run} of every recording run."""
    runs = {}
    for source in args.sources:
        label_sets, data_flags = SOURCES[source]
        for noise in label_sets:
            for schedule in args.schedules:
                results = os.path.join(args.results_dir, "record", schedule, f"{source}_{noise}")
                for seed in args.seeds:
                    flags = data_flags(noise, args) + ["--seed", seed, "--results_dir", results,
                                                       "--tipping_rule", "none", "--record_passes"]
                    name = ("synthetic_" + noise if source == "synthetic" else "npz_given") + f"_seed_{seed}"
                    runs[source, noise, schedule, seed] = Run(TRAINING, flags + SCHEDULES[schedule],
                                                              os.path.join(results, name))
    return runs


def run_data(source, noise, args):
    """The Dataset of a recording run (the labels it trained with and the ground truth)."""
    if source == "synthetic":
        return load_dataset("synthetic", noise, None)
    return load_dataset("npz", "given", os.path.join(args.study_data, f"digits_lookalike_{noise}.npz"))


def epoch_table(run, data):
    """Per epoch of a finished recording run, as arrays: the student's confidence; the share of wrong labels the
    teacher predicts (its fit of them: falls while it generalises, rises once it memorises); and the detection of
    that epoch's pass (G4 of the modified Otsu split of the agreement on the label): precision, recall, F1, AUROC.
    Cached in <run>/epochs.json."""
    cache = os.path.join(run.run_dir, "epochs.json")
    metrics = run.metrics()
    if os.path.exists(cache):
        with open(cache) as f:
            table = {k: np.asarray(v, dtype=float) for k, v in json.load(f).items()}
        return dict(table, lr_decay_every=metrics["args"]["lr_decay_every"])
    labels, wrong = data.noisy_labels, data.noise_or_not
    table = {k: [] for k in ("confidence", "teacher_fits_wrong", "precision", "recall", "f1", "auroc", "flagged",
                             "accuracy", "teacher_only", "fits_given", "train_fit")}
    for epoch, confidence in enumerate(metrics["confidence"]):
        with np.load(os.path.join(run.run_dir, "passes", f"epoch_{epoch:04d}.npz")) as z:
            t, s = z["teacher_logits"].astype(np.float64), z["student_logits"].astype(np.float64)
            table["train_fit"].append(float(z["train_agreement"].mean()))  # during training, on the given labels
        a = t + s  # the agreement is softmax(t + s)
        a = np.exp(a - a.max(axis=1, keepdims=True))
        agree = (a / a.sum(axis=1, keepdims=True))[np.arange(len(labels)), labels]
        table["accuracy"].append(float(np.mean(a.argmax(axis=1) == data.clean_labels)))  # how far the pair has learnt
        table["fits_given"].append(float(np.mean(a.argmax(axis=1) == labels)))  # the same without the ground truth
        # without the ground truth: the labels the teacher fits and the blind student does not predict
        table["teacher_only"].append(float(np.mean((t.argmax(axis=1) == labels) & (s.argmax(axis=1) != labels))))
        try:
            flagged = assign_groups(agree, otsu_split(agree)) == 4
        except DegenerateSplit:
            flagged = np.zeros(len(labels), dtype=bool)
        p, r, f1 = precision_recall_f1(flagged, wrong)
        table["confidence"].append(confidence)
        table["teacher_fits_wrong"].append(float(np.mean(t.argmax(axis=1)[wrong] == labels[wrong])) if wrong.any()
                                           else np.nan)
        table["precision"].append(p), table["recall"].append(r), table["f1"].append(f1)
        table["auroc"].append(auroc(-agree, wrong))
        table["flagged"].append(float(flagged.sum()))
    with open(cache, "w") as f:
        json.dump({k: [None if np.isnan(x) else x for x in v] for k, v in table.items()}, f)
    return epoch_table(run, data)


# ---------------------------------------------------------------------------- candidate rules
def peak_rule(k):
    def rule(x):  # the first epoch strictly above its k neighbours on each side
        for i in range(k, len(x) - k):
            if all(x[i] > x[j] for j in range(i - k, i + k + 1) if j != i):
                return i
        return None
    return rule


def patience_rule(p):
    def rule(x):  # the highest epoch so far, once no later epoch has beaten it for p epochs
        m = int(np.argmax(x))
        return m if len(x) - 1 - m >= p else None
    return rule


def drop_rule(c, below=2):
    def rule(x):  # the highest epoch so far, once the curve has stayed c noise levels under it for `below` epochs
        if len(x) < 6:
            return None
        m = int(np.argmax(x))
        cut = x[m] - c * noise_level(x)
        tail = x[m + 1:]
        return m if len(tail) >= below and all(v < cut for v in tail[-below:]) else None
    return rule


def confidence_plateau(patience, margin):
    def rule(x):  # the plateau rule on the confidence alone
        tipping = plateau_rule(x, x, patience, margin, fit_share=np.inf)
        return None if tipping is None else tipping.epoch
    return rule


def fit_noise_plateau(patience, margin):
    def rule(x, fit):  # the confidence plateau, once the training fit too rose within `margin` of its own noise
        tipping = plateau_rule(x, x, patience, margin, fit_share=np.inf)
        if tipping is None:
            return None
        rise, noise = recent_rise(fit, patience)
        return None if rise > margin * noise else tipping.epoch
    return rule


def plateau(patience, margin, fit_share):
    def rule(x, fit):  # utils.tipping.plateau_rule with other settings
        tipping = plateau_rule(x, fit, patience, margin, fit_share)
        return None if tipping is None else tipping.epoch
    return rule


def causal(rule):
    """(tipping epoch, the epoch it is found at) of a rule replayed epoch by epoch on a run's curves (the student's
    confidence, and the training fit of the given labels for the rules that take it); (None, None)."""
    takes_fit = rule.__code__.co_argcount == 2

    def replay(table):
        curve, fit = list(table["confidence"]), list(table["train_fit"])
        for found in range(len(curve)):
            tipping = rule(curve[:found + 1], fit[:found + 1]) if takes_fit else rule(curve[:found + 1])
            if tipping is not None:
                return tipping, found
        return None, None
    return replay


CANDIDATES = {"reference": find_tipping_epoch, DEFAULT_RULE: plateau(PATIENCE, MARGIN, FIT_SHARE),
              "peak 3": peak_rule(3), "peak 4": peak_rule(4), "patience 3": patience_rule(3),
              "patience 5": patience_rule(5), "drop 2": drop_rule(2),
              **{f"confidence plateau {p}, {c}": confidence_plateau(p, c) for p, c in ((3, 2), (4, 3), (6, 2))},
              **{f"fit-noise plateau {p}, {c}": fit_noise_plateau(p, c) for p, c in ((3, 2), (4, 3))},
              **{f"plateau {p}, {c}, {share:.0%}": plateau(p, c, share)
                 for p, c, share in ((3, 2, 0.01), (3, 3, 0.01), (4, 2, 0.01), (4, 3, 0.02), (4, 3, 0.05),
                                     (6, 3, 0.01))}}


# ---------------------------------------------------------------------------- what a rule would do
PREMATURE = 0.05  # a split whose pass is this far (in clean accuracy) below the best pass of its learning-rate phase


def label_set(source, noise):
    """A label set as the tables name it: synthetic's by name, the digits' by their share of wrong labels."""
    return f"{noise} % wrong" if source == "digits" else noise


def noisy(key):
    return key[1] not in ("clean", "0")


def replay(rule, table):
    """(tipping epoch, found epoch, detection F1 at it: 0 without a split, premature: True / False / None). A split
    is premature when the pair had not learnt yet: its pass is PREMATURE below the best pass of the same
    learning-rate phase (a later step of the rate lifts accuracy for reasons no rule can see coming)."""
    tipping, found = causal(rule)(table)
    if tipping is None:
        return None, None, 0.0, None
    decay = int(table["lr_decay_every"])
    phase = table["accuracy"][:(tipping // decay + 1) * decay]
    return tipping, found, float(table["f1"][tipping]), bool(table["accuracy"][tipping] < phase.max() - PREMATURE)


def memorisation_onset(table, window=5):
    """The epoch after which the teacher fits more and more wrong labels: the lowest point of the share of wrong
    labels it predicts (averaged over `window` epochs, as few wrong labels make it jumpy), when by the end it fits at
    least 10 points more than there; None (no memorisation within the run) otherwise."""
    fit = table["teacher_fits_wrong"]
    if np.all(np.isnan(fit)) or len(fit) < window:
        return None
    smooth = np.convolve(fit, np.ones(window) / window, mode="valid")  # smooth[i]: epochs i .. i + window - 1
    low = int(np.argmin(smooth))
    return low + window // 2 if smooth[-1] >= smooth[low] + 0.10 else None


def candidates_table(tables):
    """One row per candidate rule over every recording run: premature splits, splits on clean labels, noisy runs with
    a split, detection F1, its difference to the reference rule's (paired by run) and to the best epoch's."""
    header = ["rule", "premature splits", "clean runs split", "noisy runs split", "detection F1 (noisy runs)",
              "F1 - reference's", "worst run", "F1 - best epoch's"]
    rows = []
    reference = {k: replay(CANDIDATES["reference"], t)[2] for k, t in tables.items() if noisy(k)}
    for name, rule in CANDIDATES.items():
        out = {k: replay(rule, t) for k, t in tables.items()}
        splits = [o for o in out.values() if o[0] is not None]
        f1 = {k: out[k][2] for k in reference}
        diff = [f1[k] - reference[k] for k in reference]
        rows.append([name, f"{sum(o[3] for o in splits)} of {len(splits)}",
                     f"{sum(out[k][0] is not None for k in out if not noisy(k))} of {sum(not noisy(k) for k in out)}",
                     f"{sum(out[k][0] is not None for k in reference)} of {len(reference)}",
                     pm(*mean_ci(list(f1.values())), 3), signed(*mean_ci(diff), 3), f"{min(diff):+.3f}",
                     signed(*mean_ci([f1[k] - np.nanmax(tables[k]["f1"]) for k in reference]), 3)])
    return markdown_table(header, rows)


def rules_table(tables, args):
    """Per source, label set and schedule: the epochs the reference rule and the default rule split at, seed by seed
    (* = premature), their detection F1 (mean ± 95 % interval, and paired), and what the ground truth says: the
    best epoch's F1, the memorisation onset."""
    header = ["source", "label set", "schedule", "reference: epoch per seed", f"{DEFAULT_RULE}: epoch per seed",
              "F1 reference", f"F1 {DEFAULT_RULE}", "difference", "best epoch per seed (F1)", "memorisation onset"]
    rows = []
    groups = sorted({k[:3] for k in tables}, key=lambda g: (g[0], list(SOURCES[g[0]][0]).index(g[1]), g[2]))
    for source, noise, schedule in groups:
        keys = [(source, noise, schedule, seed) for seed in args.seeds]
        ref, new = ([replay(CANDIDATES[name], tables[k]) for k in keys] for name in ("reference", DEFAULT_RULE))

        def epochs(out):
            return ", ".join("–" if t is None else f"{t}{'*' if bad else ''}" for t, _, _, bad in out)
        if noisy(keys[0]):
            f1_ref, f1_new = [o[2] for o in ref], [o[2] for o in new]
            best = [int(np.nanargmax(tables[k]["f1"])) for k in keys]
            scores = [pm(*mean_ci(f1_ref), 3), pm(*mean_ci(f1_new), 3), signed(*paired(f1_ref, f1_new)[:2], 3),
                      ", ".join(str(b) for b in best) + f" ({np.mean([tables[k]['f1'][b] for k, b in zip(keys, best)]):.3f})",
                      ", ".join("–" if o is None else str(o) for o in map(memorisation_onset, (tables[k] for k in keys)))]
        else:
            scores = ["", "", "", "", "no wrong labels"]
        rows.append([source, label_set(source, noise), schedule, epochs(ref), epochs(new)] + scores)
    return markdown_table(header, rows)


def draw_curves(path, tables, args):
    """The student confidence of every run of one schedule, a panel per source and label set, with the epoch the
    reference rule (x) and the default rule (o) split at, and, where labels are wrong, the best epoch (*)."""
    from utils.plots import pyplot, save_figure
    plt = pyplot()
    sources = [s for s in SOURCES if any(k[0] == s for k in tables)]  # a row each, a label set a column
    columns = max(len(SOURCES[s][0]) for s in sources)
    fig, axes = plt.subplots(len(sources), columns, figsize=(3.3 * columns, 3.0 * len(sources)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    panels = [(axes[r][c], source, noise) for r, source in enumerate(sources)
              for c, noise in enumerate(SOURCES[source][0])]
    for ax, source, noise in panels:
        ax.set_visible(True)
        for i, seed in enumerate(args.seeds):
            table = tables[source, noise, next(k[2] for k in tables), seed]
            x, color = table["confidence"], f"C{i}"
            ax.plot(x, color=color, linewidth=1, label=f"seed {seed}")
            for name, marker in (("reference", "x"), (DEFAULT_RULE, "o")):
                t = replay(CANDIDATES[name], table)[0]
                if t is not None:
                    ax.plot([t], [x[t]], marker, color=color, markersize=7, fillstyle="none")
            if noisy((source, noise)):
                b = int(np.nanargmax(table["f1"]))
                ax.plot([b], [x[b]], "*", color=color, markersize=8)
        ax.set_title(f"{source} {label_set(source, noise)}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("student confidence")
    axes[0][0].legend(fontsize=7, title=f"x reference, o {DEFAULT_RULE}, * best F1", title_fontsize=7)
    fig.tight_layout()
    save_figure(plt, fig, path)


# ---------------------------------------------------------------------------- real runs of both rules
CHOSEN_ON_CONFIRM = ("synthetic clean", "synthetic aggre", "synthetic worst", "synthetic rand1", "digits lookalike 0",
                     "digits lookalike 5", "digits lookalike 25")  # the real runs of the sources the rule was chosen on


def confirmation_runs(args):
    """{(rule, label set, seed): Run}: the demo's runs (its schedule, all of the method) under each rule, every
    full-set pass up to the split recorded (studies/flag_study.py confirm cuts the default rule's passes)."""
    runs = {}
    for rule in ("reference", DEFAULT_RULE):
        for name in args.label_sets:
            ls = LabelSet(name, args.study_data)
            missing = ls.missing_file()
            if missing:
                sys.exit(f"tipping_study.py: {missing}")
            # synthetic label sets in one folder, the others (whose runs are all named npz_given) one folder each
            results = os.path.join(args.results_dir, "confirm", rule,
                                   "synthetic" if ls.flags[1] == "synthetic" else ls.folder)
            for seed in args.seeds:
                flags = ls.flags + ["--seed", seed, "--results_dir", results, "--tipping_rule", rule, "--record_passes"]
                runs[rule, name, seed] = Run(TRAINING, flags + SCHEDULES[args.confirm_schedule],
                                             os.path.join(results, f"{ls.run_name}_seed_{seed}"))
    return runs


def premature(metrics, num_classes):
    """Whether a finished run's split looks premature by utils.tipping.premature_split (what its log warns of)."""
    found = metrics["tipping_found_epoch"]
    return found is not None and premature_split(metrics["confidence"][:found + 1], metrics["train_fit"][:found + 1],
                                                 num_classes) is not None


def confirm(args):
    """Train the demo's runs under both rules and compare them seed by seed: clean test accuracy and detection F1
    (paired differences), the tipping epochs, the runs whose split the log calls premature, and, for a clean label
    set, whether a run ends below the same seed's run on the next label set of its source (the least noisy)."""
    runs = confirmation_runs(args)
    stop_if_failed(run_all(list(runs.values()), args.jobs, label="confirmation runs"))
    header = ["label set", "part", "rule", "tipping epoch per seed", "clean test accuracy (%)", "difference (points)",
              "p", "worst seed", "detection F1", "difference", "premature splits"]
    rows, lines = [], []
    for name in args.label_sets:
        ls, clean = LabelSet(name, args.study_data), is_clean(name)
        num_classes = ls.data().num_classes
        m = {rule: [runs[rule, name, s].metrics() for s in args.seeds] for rule in ("reference", DEFAULT_RULE)}
        acc = {r: [x["final_test_accuracy"] for x in ms] for r, ms in m.items()}
        f1 = {r: [(x["detection"] or {}).get("f1", 0.0) for x in ms] for r, ms in m.items()}
        for rule in ("reference", DEFAULT_RULE):
            diff = rule != "reference"
            d_acc, h_acc, p_acc = paired(acc["reference"], acc[rule])
            d_f1, h_f1, _ = paired(f1["reference"], f1[rule])
            rows.append([name, ls.part, rule,
                         ", ".join("–" if x["tipping_epoch"] is None else str(x["tipping_epoch"]) for x in m[rule]),
                         pm(*mean_ci(acc[rule]), 2), signed(d_acc, h_acc, 2) if diff else "",
                         (f"{p_acc:.2f}" if not np.isnan(p_acc) else "–") if diff else "",
                         f"{min(b - a for a, b in zip(acc['reference'], acc[rule])):+.2f}" if diff else "",
                         "" if clean else pm(*mean_ci(f1[rule]), 3), signed(d_f1, h_f1, 3) if diff and not clean else "",
                         sum(premature(x, num_classes) for x in m[rule])])
        following = args.label_sets[args.label_sets.index(name) + 1:]
        if clean and following and following[0].split()[0] == name.split()[0]:
            for rule in ("reference", DEFAULT_RULE):
                below = [s for s in args.seeds if runs[rule, name, s].metrics()["final_test_accuracy"]
                         < runs[rule, following[0], s].metrics()["final_test_accuracy"]]
                lines.append(f"- {name}, {rule} rule: the run on clean labels ends below the same seed's "
                             f"{following[0]} run on " + (f"seeds {', '.join(map(str, below))}" if below else "no seed"))
    text = (f"The demo's runs ({' '.join(SCHEDULES[args.confirm_schedule])}) under each rule, seeds "
            f"{', '.join(map(str, args.seeds))}; {device_line()}. Mean ± 95 % interval over seeds; differences are "
            f"{DEFAULT_RULE} - reference, paired by seed (p: paired t-test; worst seed: the lowest difference of a seed). F1 "
            f"is 0 for a run without a split.\n\n"
            + markdown_table(header, rows) + ("\n" + "\n".join(lines) + "\n" if lines else ""))
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "confirm.md"), "w") as f:
        f.write(text)
    print(text)


def is_clean(name):
    """True for a label set without wrong labels (synthetic clean, a file at 0 %)."""
    return name == "synthetic clean" or name.endswith(" 0")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("phase", choices=("record", "replay", "confirm"),
                   help="record the runs, replay the rules on them, or confirm with real runs of both rules")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES), help="image sources")
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES), help="schedules")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    p.add_argument("--confirm_schedule", default="demo", choices=list(SCHEDULES), help="the confirmation runs' schedule")
    p.add_argument("--label_sets", nargs="+", default=list(CONFIRMED_ON),
                   help="confirm: the label sets of studies/study.py (default: the confirmed-on ones, sources the rule "
                        f"was not chosen on; the real runs of those it was chosen on: {', '.join(CHOSEN_ON_CONFIRM)})")
    p.add_argument("--study_data", default=STUDY_DATA, help="confirm: where studies/make_study_npz.py wrote its files")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/tipping_study", help="where the runs and study.md go")
    args = p.parse_args()
    if args.phase == "confirm":
        return confirm(args)
    runs = recording_runs(args)
    if args.phase == "record":
        stop_if_failed(run_all(list(runs.values()), args.jobs, label="recording runs"))
        return
    missing = [r.run_dir for r in runs.values() if r.metrics() is None]
    if missing:
        sys.exit(f"{len(missing)} recording runs are not finished (the first: {missing[0]}); run the record phase first")
    tables = {key: epoch_table(run, run_data(key[0], key[1], args)) for key, run in runs.items()}
    text = (f"Recording runs: {', '.join(args.sources)}, schedules {', '.join(args.schedules)}, seeds "
            f"{', '.join(map(str, args.seeds))}; {device_line()}.\n\n" + candidates_table(tables) + "\n"
            + rules_table(tables, args) + "\n")
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "study.md"), "w") as f:
        f.write(text)
    print(text)
    for schedule in args.schedules:
        path = os.path.join(args.results_dir, f"curves_{schedule}.png")
        draw_curves(path, {k: t for k, t in tables.items() if k[2] == schedule}, args)
        print(f"written: {path}")


if __name__ == "__main__":
    main()
