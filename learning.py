"""Clean test accuracy of a BKD run: load its teacher and student and predict with their agreement.

By default the final networks (teacher.pth.tar / student.pth.tar, what the reference evaluates); with
--checkpoint best, the pair that scored highest on noisy-label validation (best_*.pth.tar). With --predict
teacher, the teacher's own prediction instead of the agreement (one network, the more accurate on most label sets
of docs/learning.md). A data set without a test set (a folder without test/, an .npz without test_images) has
nothing to evaluate: it says so and exits 0.
"""
import torch

from data.pipeline import DeviceBatches, to_device_images
from utils.checkpoint import load_network
from utils.cli import get_args_parser, load_data, run_dir, run_main
from utils.engine import accuracy, get_device, resolve_precision


def main(args):
    device = get_device(args.device)
    precision = resolve_precision(args.precision)[0]
    out_dir = run_dir(args)
    prefix = "best_" if args.checkpoint == "best" else ""
    data = load_data(args)
    if data.test_images is None:  # only your own data sets can lack one
        hint = "a test/ folder beside train/" if args.dataset == "folder" else "test_images and test_labels to the file"
        print(f"{args.data_dir} has no test set: no test accuracy to report (add {hint} to get one)")
        return
    networks, epochs = [], []
    for role in ("teacher", "student"):
        model, checkpoint = load_network(f"{out_dir}/{prefix}{role}.pth.tar", args.arch, data.num_classes)
        networks.append(model.to(device, memory_format=torch.channels_last))
        epochs.append(checkpoint.get("epoch"))
    test_batches = DeviceBatches(to_device_images(data.test_images, data.augment[0], device),
                                 torch.as_tensor(data.test_labels, device=device), None, data.mean_std,
                                 batch_size=args.eval_batch_size, channels_last=True)
    acc = accuracy(*networks, test_batches, precision, predict=args.predict)
    which = "best-by-validation" if args.checkpoint == "best" else "final"
    how = "the teacher alone" if args.predict == "teacher" else "the agreement of teacher and student"
    print(f"evaluated the {which} networks of {out_dir} (teacher epoch {epochs[0]}, student epoch {epochs[1]}) "
          f"on {len(data.test_labels)} clean test images, predicting with {how}")
    print(f"test accuracy: {acc:.2f} %")


def get_parser():
    parser = get_args_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="final", choices=("final", "best"),
                        help="final: teacher/student.pth.tar (the reference's choice); "
                             "best: best_teacher/best_student.pth.tar, chosen by noisy-label validation")
    parser.add_argument("--predict", default="pair", choices=("pair", "teacher"),
                        help="pair: the agreement of teacher and blind student (the reference's evaluation); "
                             "teacher: the teacher's own prediction, one network (see docs/learning.md)")
    return parser


if __name__ == "__main__":
    run_main(main, get_parser())
