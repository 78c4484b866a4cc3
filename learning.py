"""Clean test accuracy of a BKD run (or of a --recipe ce run): load its networks and predict.

By default the final networks (teacher.pth.tar / student.pth.tar, what the reference evaluates); with
--checkpoint best, those that scored highest on noisy-label validation (best_*.pth.tar). What predicts follows the
recipe (docs/recipes.md): the agreement of teacher and student under the reference recipe, the teacher alone under
the robust one (the more accurate on most label sets of studies/learning_study.md), the one network of a ce run (network.pth.tar);
--predict pair or teacher chooses for a BKD run. A data set without a test set (a folder without test/, an .npz without
test_images) has nothing to evaluate: it says so and exits 0.
"""
import torch

from flags import check_args, get_args_parser, load_data, run_dir
from data.pipeline import DeviceBatches, to_device_images
from utils import InputError
from utils.checkpoint import load_network, require_checkpoint
from utils.cli import run_main
from utils.engine import accuracy, get_device, resolve_precision
from utils.recipes import RECIPES

PREDICTS = {"pair": "the agreement of teacher and student", "teacher": "the teacher alone",
            "network": "the one network (plain cross-entropy)"}


def main(args):
    device = get_device(args.device)
    precision = resolve_precision(args.precision)[0]
    out_dir = run_dir(args)
    prefix = "best_" if args.checkpoint == "best" else ""
    predict, why = predict_of(args)
    roles = ("network",) if args.recipe == "ce" else ("teacher", "student")
    for role in roles:  # before the data, which may be a download: without a run there is nothing to fetch it for
        require_checkpoint(f"{out_dir}/{prefix}{role}.pth.tar")
    data = load_data(args)
    if data.test_images is None:  # only your own data sets can lack one
        hint = "a test/ folder beside train/" if args.dataset == "folder" else "test_images and test_labels to the file"
        print(f"{args.data_dir} has no test set: no test accuracy to report (add {hint} to get one)")
        return
    networks, epochs = [], []
    for role in roles:
        model, checkpoint = load_network(f"{out_dir}/{prefix}{role}.pth.tar", args.arch, data.num_classes)
        networks.append(model.to(device, memory_format=torch.channels_last))
        epochs.append(checkpoint.get("epoch"))
    test_batches = DeviceBatches(to_device_images(data.test_images, data.augment[0], device),
                                 torch.as_tensor(data.test_labels, device=device), None, data.mean_std,
                                 batch_size=args.eval_batch_size, channels_last=True)
    teacher, student = networks if len(networks) == 2 else (networks[0], None)
    acc = accuracy(teacher, student, test_batches, precision, predict=predict)
    which = "best-by-validation" if args.checkpoint == "best" else "final"
    trained = (f"network of {out_dir} (epoch {epochs[0]})" if student is None else
               f"networks of {out_dir} (teacher epoch {epochs[0]}, student epoch {epochs[1]})")
    print(f"evaluated the {which} {trained} on {len(data.test_labels)} clean test images, predicting with "
          f"{PREDICTS[predict]} ({why})")
    print(f"test accuracy: {acc:.2f} %")


def predict_of(args):
    """(what predicts, why): --predict where given, else the recipe's choice; a ce run has one network."""
    if args.recipe == "ce":
        if args.predict is not None:
            raise InputError(f"--predict {args.predict}: a --recipe ce run has one network, no teacher-student pair; "
                             f"drop --predict")
        return "network", "the ce recipe"
    if args.predict is not None:
        return args.predict, "--predict" + ("" if args.predict != RECIPES[args.recipe].predict
                                            else f", the {args.recipe} recipe's choice too")
    other = "teacher" if RECIPES[args.recipe].predict == "pair" else "pair"
    return RECIPES[args.recipe].predict, f"the {args.recipe} recipe's choice; --predict {other} for {PREDICTS[other]}"


def get_parser():
    parser = get_args_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="final", choices=("final", "best"),
                        help="final: the networks of the last epoch (teacher/student.pth.tar, or network.pth.tar of a ce "
                             "run; the reference's choice); best: best_*.pth.tar, chosen by noisy-label validation")
    parser.add_argument("--predict", default=None, choices=("pair", "teacher"),
                        help="what predicts in a BKD run: pair = the agreement of teacher and blind student (the "
                             "reference's evaluation, the reference recipe's default); teacher = the teacher's own "
                             "prediction, one network (the robust recipe's default, docs/learning.md)")
    return parser


if __name__ == "__main__":
    run_main(main, get_parser(), check_args)
