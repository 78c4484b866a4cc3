"""Recipes: the bundles of training choices a run is made with, named by one flag, --recipe.

- reference: the paper's procedure exactly (the reference's tipping rule, soft targets to the end of the schedule,
  the pair's agreement evaluated). The default on CIFAR-10N and CIFAR-100N, where the paper measured it.
- robust: ours (the plateau tipping rule and the guard after the split, docs/tipping.md and docs/learning.md; the
  teacher alone evaluated). The default on your own data and the offline demo, where our studies measured it.
- ce: the baseline, one network of the same architecture trained with plain cross-entropy on the given labels in the
  same pipeline (data, validation split, augmentation, optimizer, schedule, checkpoints, logs, metrics); no student,
  no split, nothing flagged.
A flag given explicitly (--tipping_rule, --guard; learning.py --predict) wins over its recipe, and the run says so.
No torch here: summarize.py reads the recipes too."""
from types import SimpleNamespace
from typing import NamedTuple


class Recipe(NamedTuple):
    tipping_rule: str  # utils.tipping's rule; none for ce (it never splits)
    guard: bool  # the guard after the split (utils.watch), which acts only under the plateau rule
    predict: str  # what learning.py evaluates: pair (the agreement), teacher (alone), network (the ce run's one)
    what: str  # what it does, for the log
    short: str  # in a few words, for "--recipe X runs ..."


RECIPES = {
    "reference": Recipe("reference", False, "pair", "the reference's tipping rule, the soft targets to the end of the "
                        "schedule, the agreement of teacher and student evaluated", "the paper's procedure exactly"),
    "robust": Recipe("plateau", True, "teacher", "the plateau tipping rule, the guard after the split, the teacher "
                     "alone evaluated", "ours (the plateau rule and the guard)"),
    "ce": Recipe("none", False, "network", "one network of the same architecture trained with plain cross-entropy on "
                 "the given labels, in the same pipeline; no student, no split, nothing flagged",
                 "plain cross-entropy, the baseline"),
}
# The default follows the evidence there is for the data: the paper's measurements on CIFAR-N, our studies elsewhere.
DEFAULT_RECIPE = {"cifar10": "reference", "cifar100": "reference", "synthetic": "robust", "folder": "robust",
                  "npz": "robust"}
WHY_DEFAULT = {"reference": "the paper measured its procedure on CIFAR-10N and CIFAR-100N",
               "robust": "our studies chose and confirmed it on real image sets of this kind, not the paper's setting "
                         "(docs/tipping.md, docs/learning.md)"}
OVERRIDABLE = ("tipping_rule", "guard")  # the training flags a recipe sets, which an explicit flag overrides


class RecipeError(ValueError):
    """Flags that contradict the recipe; the message is one line saying how to fix them."""


def resolve(args):
    """Fill in args.recipe (the dataset's default where not given), and args.tipping_rule and args.guard from it
    where not given explicitly (None). Raises RecipeError for flags the recipe cannot take. The guard acts only
    under the plateau rule: by default it is on only there."""
    args.recipe = args.recipe or DEFAULT_RECIPE[args.dataset]
    recipe = RECIPES[args.recipe]
    if args.recipe == "ce":
        given = [f"--tipping_rule {args.tipping_rule}" if args.tipping_rule is not None else None,
                 ("--guard" if args.guard else "--no-guard") if args.guard is not None else None]
        given = [g for g in given if g]
        if given:
            raise RecipeError(f"{' and '.join(given)}: the ce recipe trains one network with plain cross-entropy and "
                              f"never splits; drop {'them' if len(given) > 1 else 'it'}, or choose --recipe robust "
                              f"or reference")
    if args.tipping_rule is None:
        args.tipping_rule = recipe.tipping_rule
    if args.guard is None:
        args.guard = recipe.guard and args.tipping_rule == "plateau"
    elif args.guard and args.tipping_rule != "plateau":
        raise RecipeError(f"--guard acts only under the plateau tipping rule, not --tipping_rule {args.tipping_rule} "
                          f"(the robust recipe has both)")
    return args


def overrides(args):
    """The flags of a resolved run that differ from its recipe's choices (given explicitly), as '--flag value'."""
    recipe = RECIPES[args.recipe]
    out = []
    if args.tipping_rule != recipe.tipping_rule:
        out.append(f"--tipping_rule {args.tipping_rule}")
    if args.guard != (recipe.guard and args.tipping_rule == "plateau"):
        out.append("--guard" if args.guard else "--no-guard")
    return out


def describe(args):
    """The lines the training log opens with: the recipe and what it does, why it runs (the dataset's default, or
    asked for), how to switch, and the flags that override it."""
    default = DEFAULT_RECIPE[args.dataset]
    why = (f"the default for --dataset {args.dataset}: {WHY_DEFAULT[default]}" if args.recipe == default
           else f"asked for; the default for --dataset {args.dataset} is {default}")
    others = "; ".join(f"--recipe {r}: {RECIPES[r].short}" for r in RECIPES if r != args.recipe)
    lines = [f"recipe {args.recipe}, {RECIPES[args.recipe].short}: {RECIPES[args.recipe].what} ({why}); {others}"]
    for flag in overrides(args):
        lines.append(f"{flag} given explicitly: it wins over the {args.recipe} recipe's choice")
    return lines


def run_dir_suffix(dataset, recipe):
    """'' for the dataset's default recipe (the run directory the reference's commands name), '_<recipe>' for
    another, so that recipes run side by side."""
    return "" if recipe == DEFAULT_RECIPE[dataset] else f"_{recipe}"


def recipe_of(metrics):
    """The recipe of a run from its metrics.json; runs of versions before recipes are named by their tipping rule
    (the plateau rule and 'none' ran under today's robust choices)."""
    if metrics.get("recipe"):
        return metrics["recipe"]
    return "reference" if (metrics.get("args") or {}).get("tipping_rule") == "reference" else "robust"


def label(metrics):
    """The recipe of a run as the seed summary names its row: 'robust', or 'robust, --tipping_rule none' where a flag
    overrode it."""
    recipe, args = recipe_of(metrics), metrics.get("args") or {}
    rule = args.get("tipping_rule", RECIPES[recipe].tipping_rule)
    guard = bool(args.get("guard", RECIPES[recipe].guard)) and rule == "plateau"  # it never acted under another rule
    probe = SimpleNamespace(recipe=recipe, tipping_rule=rule, guard=guard)
    return ", ".join([recipe] + overrides(probe))
