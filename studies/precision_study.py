"""Precision parity: does bf16 autocast change what BKD finds and how well it learns, against fp32 (the reference)?

    python studies/precision_study.py                      # the whole study of studies/precision_study.md (hours on a CPU)
    python studies/precision_study.py --noise_types worst --seeds 0 1 2 --variants   # a quick look: bf16 on worst

Trains the synthetic demo (run.sh's schedule) in fp32 and in bf16 with the same seeds, on each label set of
--noise_types, and the bf16 variants of --variants (studies/precision_variant.py: one part kept in fp32) on
--variant_noise_types. Per label set and variant it prints the mean of clean test accuracy, detection F1 and the
tipping epoch in fp32 and in the variant, and the paired difference over seeds (variant - fp32) with its 95 %
interval and the paired t-test's p. Runs go to --results_dir/<device>/<variant>/ and are reused when finished, resumed
when interrupted: run it again to go on where it stopped. The table is also written to --results_dir/<device>/study.md.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study import (ROOT, Run, add_arguments, data_flags, device_line, device_tag, markdown_table, mean_ci,  # noqa: E402
                   paired, pm, run_all, signed, stop_if_failed)

VARIANTS = ("fp32_head", "fp32_batchnorm", "fp32_eval")  # studies/precision_variant.py
PARITY_POINTS = 0.15  # a variant is at parity when its mean paired accuracy difference is within this, and p >= 0.05
PARITY_SEEDS = 10  # over at least this many seeds


def span(seeds):
    """Seeds as a table cell: '0-9' for a range, else listed."""
    return f"{seeds[0]}-{seeds[-1]}" if list(seeds) == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 else \
        ", ".join(map(str, seeds))


def make_run(args, variant, noise_type, seed):
    results = os.path.join(args.results_dir, device_tag(), variant)
    flags = [*data_flags(args, noise_type, seed), *args.train_flags.split(), "--results_dir", results]
    run_dir = os.path.join(results, f"{args.dataset}_{noise_type}_seed_{seed}")
    if variant in ("fp32", "bf16"):
        return Run(os.path.join(ROOT, "blind_knowledge_dist_training.py"), [*flags, "--precision", variant], run_dir)
    return Run(os.path.join(ROOT, "studies", "precision_variant.py"), [*flags, "--precision", "bf16", "--variant", variant],
               run_dir)


def numbers(run):
    """(clean test accuracy, detection F1, tipping epoch) of a finished run; F1 and epoch None without a split."""
    m = run.metrics()
    return m["final_test_accuracy"], (m["detection"] or {}).get("f1"), m["tipping_epoch"]


def compare(fp32, other):
    """The table cells of one variant against fp32 over the same seeds."""
    cells = []
    for k, (scale, decimals) in enumerate(((1, 2), (1, 3), (1, 1))):  # accuracy (%), F1, tipping epoch
        pairs = [(a[k], b[k]) for a, b in zip(fp32, other) if a[k] is not None and b[k] is not None]
        a, b = [p[0] * scale for p in pairs], [p[1] * scale for p in pairs]
        diff, half, p = paired(a, b)
        cells += [pm(*mean_ci(a), decimals), pm(*mean_ci(b), decimals), signed(diff, half, decimals),
                  "–" if p != p else f"{p:.2f}"]
    moved = sum(a[2] != b[2] for a, b in zip(fp32, other))
    return cells + [f"{moved} of {len(fp32)}"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--noise_types", nargs="+", default=["aggre", "worst", "rand1"], help="label sets for fp32 vs bf16")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="seeds, the same for every variant")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS,
                   help="bf16 variants to train too (none: plain bf16 only)")
    p.add_argument("--variant_noise_types", nargs="+", default=["worst"], help="label sets of the variants")
    p.add_argument("--variant_seeds", type=int, nargs="+", default=None,
                   help="seeds of the variants (default: --seeds); fp32 is compared over the same seeds")
    add_arguments(p, "results/precision_study")
    args = p.parse_args()
    args.variant_seeds = args.variant_seeds or args.seeds
    cells = [(v, n, s) for n in args.noise_types for v in ("fp32", "bf16") for s in args.seeds]
    cells += [(v, n, s) for n in args.variant_noise_types for v in ("fp32", *args.variants) for s in args.variant_seeds]
    runs = {(v, n, s): make_run(args, v, n, s) for v, n, s in dict.fromkeys(cells)}
    stop_if_failed(run_all(list(runs.values()), args.jobs, label="precision study"))

    header = ["label set", "variant", "seeds", "accuracy fp32 (%)", "accuracy variant (%)", "difference (points)", "p",
              "F1 fp32", "F1 variant", "difference", "p", "tipping epoch fp32", "tipping epoch variant", "difference",
              "p", "tipping epoch moved"]
    rows, verdicts = [], []
    for n in dict.fromkeys(args.noise_types + args.variant_noise_types):
        for v in ("bf16", *args.variants):
            seeds = args.seeds if v == "bf16" else args.variant_seeds
            if (v, n, seeds[0]) not in runs:
                continue
            fp32, other = ([numbers(runs[w, n, s]) for s in seeds] for w in ("fp32", v))
            rows.append([n, "bf16" if v == "bf16" else f"bf16, {v}", span(seeds), *compare(fp32, other)])
            diff, _, pvalue = paired([a[0] for a in fp32], [b[0] for b in other])
            at_parity = abs(diff) <= PARITY_POINTS and not pvalue < 0.05 and len(seeds) >= PARITY_SEEDS
            verdicts.append(f"{n}, {v}: accuracy {'at parity' if at_parity else 'NOT at parity'} with fp32 (mean paired "
                            f"difference {diff:+.2f} points, p {pvalue:.3f}; parity: within ±{PARITY_POINTS} and "
                            f"p >= 0.05{'' if len(seeds) >= PARITY_SEEDS else f' over at least {PARITY_SEEDS} seeds'})")
    text = (f"{args.dataset}, training flags {args.train_flags}, {device_line()}; mean ± 95 % interval over the seeds, "
            f"difference = variant - fp32 paired by seed, p of the paired t-test.\n\n"
            + markdown_table(header, rows) + "\n" + "\n".join(verdicts) + "\n")
    out = os.path.join(args.results_dir, device_tag(), "study.md")
    with open(out, "w") as f:
        f.write(text)
    print("\n" + text + f"\nwritten: {out}")


if __name__ == "__main__":
    main()
