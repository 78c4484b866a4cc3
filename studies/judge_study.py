"""Who judges label_issues.csv under the robust recipe: the split, the final teacher, or the final teacher unless it
memorised or collapsed; chosen on two sources, confirmed on two that no choice had seen, against confident learning.

    pip install -r studies/requirements.txt && python studies/make_study_npz.py --out ~/data/study \\
        --sets fashion_pair_25 emoji_pair_25 fashion-small_pair_25 emoji-small_pair_25 \\
               solar_pair_25 letters_pair_25 solar-small_pair_25 letters-small_pair_25     # see its --help
    python studies/judge_study.py --results_dir ~/data/judge_study     # every run it needs (reused), then the tables

Per label set (pair flips, 25 %), schedule (demo, long, memorise) and seed: the robust recipe's BKD run, its passes
recorded (--record_passes; studies/ranking_study.py's runs), and the peer, 5-fold cross-entropy + cleanlab on the same
schedule. Every candidate of CANDIDATES ranks (label_issues.csv's order) and flags (its `flagged` column) from what
the run holds at its end, never the ground truth, which only scores them: AUROC of the ranking and F1 of the flags,
each paired by seed against the peer and against today's judgement (the split's). The memorisation and collapse
tests that gate the final teacher (utils.findings.memorised, utils.watch) read the run's own passes.
Chosen on CHOSEN_ON (studies/judge_study.md says what was seen when), confirmed on CONFIRMING: the pre-registered
rule (RULE) is applied to the confirming rows as written and its outcome printed."""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flag_study  # noqa: E402
import ranking_study as rs  # noqa: E402
from study import (LabelSet, STUDY_DATA, STUDY_SCHEDULES, device_line, guarded_run, label_sets,  # noqa: E402
                   markdown_table, mean_ci, paired, pm, run_all, signed, stop_if_failed)

sys.path.insert(0, rs.ROOT)
from utils.findings import final_teacher_verdict, memorised  # noqa: E402
from utils.flagging import flag_labels  # noqa: E402
from utils.watch import collapsed_onto_one_class  # noqa: E402

CHOSEN_ON = ("fashion", "emoji")  # seen by earlier rounds too: the choice is made here
CONFIRMING = ("solar", "letters")  # sources no study had used before this one (2026-12-07)
NOISES = ("pair 25",)
PEER = rs.PEER


def plain_teacher(run_dir, metrics):
    """The final teacher's softmax of its pass without augmentation (N, C)."""
    return rs.softmax(rs.final_passes(run_dir, metrics)[0][0])


def split_judgement(e, y):
    return -rs.on_label(e["split_agree"], y), flag_labels(e["held_probs"], y, e["held_teacher"])


def teacher_judgement(probs, y):
    return -rs.on_label(probs, y), probs.argmax(axis=1) != y


def trusted(e, y):
    """Whether the final teacher (both passes averaged) judges: utils.findings.final_teacher_verdict, as the training
    script decides it (not where it memorised the labels the split flagged, or collapsed onto one class)."""
    split_flags = flag_labels(e["held_probs"], y, e["held_teacher"])
    return final_teacher_verdict(e["final_teacher"].argmax(axis=1), y, split_flags)[0]


def gated(e, y):
    """The final teacher where trusted, else the split's."""
    return teacher_judgement(e["final_teacher"], y) if trusted(e, y) else split_judgement(e, y)


def gated_agreement(e, y):
    """gated, ranked by the final networks' agreement on the label (label_issues.csv's final_agreement_given) where
    the final teacher is trusted."""
    if not trusted(e, y):
        return split_judgement(e, y)
    return -rs.on_label(e["final_agree"], y), teacher_judgement(e["final_teacher"], y)[1]


def both(e, y):
    """The split's and the final teacher's ranks averaged; flagged where both flag."""
    s_rank, s_flags = split_judgement(e, y)
    t_rank, t_flags = teacher_judgement(e["final_teacher"], y)
    return rs.rank_average(s_rank, t_rank), s_flags & t_flags


def capped(e, y):
    """The final teacher's ranking; its flags cut to as many as the split flags (its most suspicious)."""
    rank, flags = teacher_judgement(e["final_teacher"], y)
    k = min(int(flags.sum()), int(split_judgement(e, y)[1].sum()))
    out = np.zeros(len(y), dtype=bool)
    out[np.argsort(-rank, kind="stable")[:k]] = True
    return rank, out


TODAY = "split (today's default)"
CANDIDATES = {  # name: (e, labels) -> (suspicion, flagged)
    TODAY: split_judgement,
    "final teacher, one pass": lambda e, y: teacher_judgement(e["plain_teacher"], y),
    "final teacher, two passes averaged": lambda e, y: teacher_judgement(e["final_teacher"], y),
    "final teacher unless memorised or collapsed, else split": gated,
    "the same, ranked by the final agreement": gated_agreement,
    "--judge final before this study: final agreement unless went back, fell or collapsed": lambda e, y: (
        rs.CANDIDATE_RANKINGS["shipped: final agreement where trusted, else the split's"](e, y),
        rs.CANDIDATE_CUTS["shipped: final cut where trusted, else the split's"](e, y)),
    "split and final teacher: ranks averaged, flagged by both": both,
    "final teacher, flags capped at the split's count": capped,
}
CANDIDATE = "final teacher unless memorised or collapsed, else split"  # the pre-registered one (judge_study.md)


def diagnose(e, y, wrong):
    """The gates' values (no ground truth) and, to explain them only, the final teacher's fit of the wrong labels."""
    teacher = e["final_teacher"].argmax(axis=1)
    split_flags = flag_labels(e["held_probs"], y, e["held_teacher"])
    return dict(flagged_fit=float(np.mean(teacher[split_flags] == y[split_flags])) if split_flags.any() else None,
                memorised=bool(memorised(teacher, y, split_flags)), collapsed=bool(collapsed_onto_one_class(teacher, y)),
                went_back=e["metrics"]["went_back"] is not None, wrong_fit=float(np.mean(teacher[wrong] == y[wrong])))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--sources", nargs="+", default=list(CHOSEN_ON + CONFIRMING),
                   help="image sources of studies/make_study_npz.py (the memorise schedule: their small versions)")
    p.add_argument("--schedules", nargs="+", default=list(STUDY_SCHEDULES), choices=list(STUDY_SCHEDULES))
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"], help="seeds")
    p.add_argument("--study_data", default=STUDY_DATA, help="where studies/make_study_npz.py wrote its files")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/judge_study",
                   help="the runs, the peer's trainings, and judge_<sources>.md with the tables")
    p.add_argument("--peer_schedules", nargs="*", default=None, choices=list(STUDY_SCHEDULES),
                   help="the schedules the peer is trained on (default: every one; '–' in its columns elsewhere)")
    args = p.parse_args()
    args.peer_schedules = args.schedules if args.peer_schedules is None else args.peer_schedules
    cells = [(sch, name, seed) for sch in args.schedules for name in label_sets(args.sources, NOISES, sch)
             for seed in args.seeds]
    runs = {cell: guarded_run(args.results_dir, *cell, args.study_data) for cell in cells}
    # a run that stops with an error (a non-finite loss) is a result too: its cell is reported, not judged
    failed = {r.run_dir: last_line(r) for r in run_all([run for run, train in runs.values() if train], args.jobs,
                                                         label="BKD runs (robust recipe)")}
    judged = [cell for cell in cells if runs[cell][0].run_dir not in failed]
    peers = {sch: flag_study.peer_runs(rs.peer_args(args, sch), [(n, int(s)) for c, n, s in judged if c == sch],
                                       STUDY_SCHEDULES[sch]) for sch in args.schedules if sch in args.peer_schedules}
    stop_if_failed(run_all([r for sch in peers for r in peers[sch].values()], args.jobs, label="peer trainings"))
    from cleanlab.filter import find_label_issues
    results, diagnoses = {}, {}
    for (sch, name, seed), (run, _) in runs.items():
        if run.run_dir in failed:
            diagnoses.setdefault((sch, name), []).append(dict(seed=seed, split=False, failed=failed[run.run_dir]))
            continue
        data = LabelSet(name, args.study_data).data()
        y, wrong = data.noisy_labels, data.noise_or_not
        m = run.metrics()
        if m["tipping_epoch"] is None:  # no split: label_issues.csv is not written, nothing to judge
            diagnoses.setdefault((sch, name), []).append(dict(seed=seed, split=False))
            continue
        e = rs.evidence(run, data)
        e["plain_teacher"] = plain_teacher(run.run_dir, m)
        for c_name, candidate in CANDIDATES.items():
            suspicion, flagged = candidate(e, y)
            results.setdefault((sch, name, c_name), []).append(dict(rs.score(flagged, suspicion, wrong), seed=seed))
        diagnoses.setdefault((sch, name), []).append(dict(diagnose(e, y, wrong), seed=seed, split=True))
        if sch not in peers:
            continue
        oof, peer_cost = flag_study.out_of_fold(rs.peer_args(args, sch), peers[sch], (name, int(seed)), len(y),
                                                data.num_classes)
        results.setdefault((sch, name, PEER), []).append(
            dict(rs.score(find_label_issues(y, oof), -rs.on_label(oof, y), wrong), seed=seed, cost=peer_cost,
                 bkd_cost=e["cost"]))
    text = tables(args, results, diagnoses)
    os.makedirs(args.results_dir, exist_ok=True)
    name = "judge_" + "_".join(args.sources)  # the tables of these sources
    with open(os.path.join(args.results_dir, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.results_dir, f"{name}.json"), "w") as f:
        json.dump(dict(results={" | ".join(k): v for k, v in results.items()},
                       diagnoses={" | ".join(k): v for k, v in diagnoses.items()}), f)
    print(text)


def last_line(run):
    """The last line of a failed run's log (its error)."""
    with open(os.path.join(run.run_dir, "training.log"), errors="replace") as f:
        lines = f.read().splitlines()
    return "failed: " + (lines[-1].split(": error: ")[-1].split(";")[0] if lines else "no log")


def difference(results, base, got, field):
    """(mean of got - base paired by seed, its text with the interval and p), or (nan, '–') without the base's runs
    of the same seeds."""
    if base not in results:
        return float("nan"), "–"
    by_seed = {g["seed"]: g[field] for g in results[base]}
    pairs = [(by_seed[g["seed"]], g[field]) for g in got if g["seed"] in by_seed]
    d, half, pv = paired([a for a, _ in pairs], [b for _, b in pairs])
    return d, signed(d, half, 3) + ("" if np.isnan(pv) else f" (p {pv:.2f})")


# The pre-registered rule (studies/judge_study.md, written before any confirming run finished): CANDIDATE becomes the
# robust recipe's default judge if on every confirming row (a label set and schedule, the mean over its seeds that
# split) its AUROC and its F1 minus the split's are at or above 0. The issue's goal against the peer is reported
# beside it: on the long and memorise schedules AUROC and F1 at or above the peer's; on the demo's, not below by
# more than 0.01.
FLOAT_SLACK = 1e-9  # a mean difference of exactly 0 (or -0.01) may compute as a hair below it


def rule(results, rows):
    """(whether CANDIDATE ships, the goal against the peer met, lines saying why) on the confirming rows."""
    ships, goal, lines = True, True, []
    for sch, name in rows:
        got = results.get((sch, name, CANDIDATE))
        if not got:
            lines.append(f"- {sch}, {name}: no seed split, nothing judged (the gate's table says why)")
            continue
        for field in ("auroc", "f1"):
            d_split, _ = difference(results, (sch, name, TODAY), got, field)
            d_peer, _ = difference(results, (sch, name, PEER), got, field)
            margin = -0.01 if sch == "demo" else 0.0
            split_ok, peer_ok = d_split >= -FLOAT_SLACK, d_peer >= margin - FLOAT_SLACK
            ships &= bool(split_ok)
            goal &= bool(peer_ok)
            lines.append(f"- {sch}, {name}, {field}: - split's {d_split:+.3f} ({'ok' if split_ok else 'BELOW'}); "
                         f"- peer's {d_peer:+.3f} ({'ok' if peer_ok else 'below the goal'})")
    return ships, goal, lines


def tables(args, results, diagnoses):
    text = [f"Seeds {', '.join(args.seeds)}; {device_line()}. Mean ± 95 % interval over the seeds that split; "
            f"differences paired by seed (p: paired t-test).\n"]
    confirming_rows = []
    for sch in args.schedules:
        for part, sources in (("chosen on", CHOSEN_ON), ("confirmed on", CONFIRMING)):
            names = [n for n in label_sets([s for s in args.sources if s in sources], NOISES, sch)
                     if (sch, n, TODAY) in results or (sch, n) in diagnoses]
            if not names:
                continue
            if part == "confirmed on":
                confirming_rows += [(sch, n) for n in names]
            rows = []
            for name in names:
                for c_name in list(CANDIDATES) + [PEER]:
                    got = results.get((sch, name, c_name))
                    if not got:
                        continue
                    row = [name, c_name]
                    for field in ("auroc", "f1"):
                        row += [pm(*mean_ci([g[field] for g in got]), 3),
                                difference(results, (sch, name, PEER), got, field)[1],
                                difference(results, (sch, name, TODAY), got, field)[1]]
                    row += [f"{np.mean([g['precision'] for g in got]):.3f}", f"{np.mean([g['recall'] for g in got]):.3f}",
                            f"{np.mean([g['flagged'] for g in got]):.0f}"]
                    rows.append(row)
            text.append(f"\n### Schedule {sch}, {part}\n\n" + markdown_table(
                ["label set", "judge", "AUROC", "- peer's", "- split's", "F1", "- peer's", "- split's", "precision",
                 "recall", "flagged"], rows))
            rows = []
            for name in names:
                for d in diagnoses.get((sch, name), []):
                    if not d["split"]:
                        rows.append([name, d["seed"], d.get("failed", "no split"), "", "", "", "", ""])
                        continue
                    rows.append([name, d["seed"], "yes" if d["went_back"] else "no",
                                 "–" if d["flagged_fit"] is None else f"{d['flagged_fit']:.2f}",
                                 "yes" if d["memorised"] else "no", "yes" if d["collapsed"] else "no",
                                 "split" if d["memorised"] or d["collapsed"] else "final teacher",
                                 f"{d['wrong_fit']:.2f}"])
            text.append(f"\n#### The gate, per run ({sch}, {part})\n\n" + markdown_table(
                ["label set", "seed", "went back", "final teacher's fit of the split's flags", "memorised",
                 "collapsed", "judged by", "fit of the wrong labels (ground truth: explains only)"], rows))
    costs = [g for k, v in results.items() if k[2] == PEER for g in v]
    if costs:
        bkd = np.mean([c["bkd_cost"]["training"] + c["bkd_cost"]["split_passes"] + c["bkd_cost"]["final_passes"]
                       for c in costs])
        final = np.mean([c["bkd_cost"]["final_passes"] for c in costs])
        peer = np.mean([c["cost"][0] + c["cost"][1] for c in costs])
        text.append(f"\n### Cost (network image-steps, mean over every run)\n\nThe final teacher's judgement costs the "
                    f"run's two final passes: {final:,.0f} network images, {final / bkd * 100:.1f} % of the BKD run "
                    f"({bkd:,.0f} image-epochs of training and passes), which trains both networks anyway. The peer: "
                    f"{peer:,.0f} ({peer / bkd:.2f}x the whole BKD run).\n")
    if confirming_rows:
        ships, goal, lines = rule(results, confirming_rows)
        text.append("\n### The pre-registered rule on the confirming rows\n\n" + "\n".join(lines) +
                    f"\n\n**{CANDIDATE}: {'ships' if ships else 'does not ship'}** (at or above the split's on every "
                    f"confirming row); the goal against the peer {'met' if goal else 'NOT met'} on every confirming "
                    f"row.\n")
    return "".join(text)


if __name__ == "__main__":
    main()
