"""Score a BKD run's detection.npy (labels flagged as wrong) against the CIFAR-N ground truth."""
import os

import numpy as np

from data import load_dataset
from utils import InputError
from utils.bkd import precision_recall_f1
from utils.cli import get_args_parser, run_dir, run_main


def load_detection(path, n):
    if not os.path.isfile(path):
        raise InputError(f"no {path}: the run in {os.path.dirname(path)} has not split yet (no tipping epoch "
                         f"found, or not trained); run blind_knowledge_dist_training.py with the same "
                         f"--dataset, --noise_type and --seed, and enough epochs")
    try:
        flagged = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{path} is not a readable .npy file ({type(e).__name__}: {e})") from None
    if flagged.dtype != np.bool_ or flagged.shape != (n,):
        raise InputError(f"{path}: expected a boolean array of shape ({n},) (one flag per training image), "
                         f"got {flagged.dtype} of shape {flagged.shape}")
    return flagged


def main(args):
    data = load_dataset(args.dataset, args.noise_type, args.data_dir, args.noise_path)
    truly_noisy = data.noise_or_not
    flagged = load_detection(os.path.join(run_dir(args), "detection.npy"), len(truly_noisy))
    precision, recall, f1 = precision_recall_f1(flagged, truly_noisy)
    print(f"flagged as noisy: {int(flagged.sum())} of {len(flagged)}")
    print(f"truly noisy: {int(truly_noisy.sum())}")
    print(f"precision is {precision}")
    print(f"recall is {recall}")
    print(f"The f-score is {f1}")
    baseline = precision_recall_f1(np.ones_like(truly_noisy), truly_noisy)[2]
    print(f"(flagging every label would score F1 {baseline:.4f})")


if __name__ == "__main__":
    run_main(main, get_args_parser(__doc__.splitlines()[0]))
