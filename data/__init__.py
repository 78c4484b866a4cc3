"""Datasets: images, noisy and clean labels, the validation split, and per-dataset preprocessing constants."""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from utils import InputError

DATASETS = ("cifar10", "cifar100", "synthetic")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": 10}
CIFAR10_NOISE = {"clean": "clean_label", "aggre": "aggre_label", "worst": "worse_label",
                 "rand1": "random_label1", "rand2": "random_label2", "rand3": "random_label3"}
NOISE_TYPES = {"cifar10": CIFAR10_NOISE, "synthetic": CIFAR10_NOISE,
               "cifar100": {"clean100": "clean_label", "noisy100": "noisy_label"}}
DEFAULT_NOISE_TYPE = {"cifar10": "worst", "synthetic": "worst", "cifar100": "noisy100"}
MEAN_STD = {  # per-channel, of pixels scaled to [0, 1]
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "synthetic": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# Training augmentation: CIFAR-10 flips then crops with reflect padding; CIFAR-100 crops with zero padding, then flips.
AUGMENT = {"cifar10": ("reflect", True), "synthetic": ("reflect", True), "cifar100": ("constant", False)}


@dataclass
class Dataset:
    name: str
    num_classes: int
    train_images: np.ndarray  # uint8 (N, 32, 32, 3), dataset order
    noisy_labels: np.ndarray  # int64 (N,), the labels training sees
    clean_labels: Optional[np.ndarray]  # int64 (N,), ground truth, used only for reporting; None = unknown
    test_images: Optional[np.ndarray]  # None = no test set
    test_labels: Optional[np.ndarray]
    class_names: Optional[tuple] = None  # name of each class index, where the data set has them
    train_files: Optional[list] = None  # file of each training image, where the data set has files

    @property
    def mean_std(self):
        return MEAN_STD[self.name]

    @property
    def augment(self):
        """(padding mode, flip before crop)."""
        return AUGMENT[self.name]

    @property
    def noise_or_not(self):
        """True where the given label is wrong; None when the ground truth is unknown."""
        return None if self.clean_labels is None else self.noisy_labels != self.clean_labels


def validate_labels(labels, noise_key, train_labels, num_classes, source):
    """The noisy label array for noise_key, after checking the file against the dataset's own labels."""
    expected = len(train_labels)
    for key in ("clean_label", noise_key):
        if key not in labels:
            raise InputError(f"{source}: no '{key}' labels (keys present: {', '.join(map(str, labels))})")
        values = np.asarray(labels[key])
        if values.shape != (expected,) or not np.issubdtype(values.dtype, np.integer):
            raise InputError(f"{source}: '{key}' must be {expected} integer labels (one per training image), "
                             f"got shape {values.shape} of {values.dtype}")
        if values.min() < 0 or values.max() >= num_classes:
            raise InputError(f"{source}: '{key}' has labels outside 0..{num_classes - 1} "
                             f"(min {values.min()}, max {values.max()})")
    if not np.array_equal(labels["clean_label"], train_labels):
        mismatches = int(np.sum(np.asarray(labels["clean_label"]) != train_labels))
        raise InputError(f"{source}: 'clean_label' differs from the dataset's training labels at {mismatches} "
                         f"images; this label file does not belong to this dataset")
    return np.asarray(labels[noise_key], dtype=np.int64)


def load_dataset(name, noise_type, data_dir, noise_path=None, download=True):
    """Images and labels of a dataset with the noisy labels of `noise_type` (see NOISE_TYPES)."""
    noise_key = NOISE_TYPES[name][noise_type]
    if name == "synthetic":
        from .synthetic import make_synthetic
        from .synthetic import CLASSES
        d = make_synthetic()
        train_images, train_labels, test_images, test_labels = (
            d["train_images"], d["train_labels"], d["test_images"], d["test_labels"])
        labels, source, class_names = d["noisy_labels"], "synthetic labels", CLASSES
    else:
        from .cifar import CIFAR, cifar_n_path, load_cifar, load_label_file
        train_images, train_labels, test_images, test_labels = load_cifar(name, data_dir, download)
        path = cifar_n_path(name, data_dir, noise_path)
        labels, source, class_names = load_label_file(path), path, CIFAR[name]["classes"]
    noisy = validate_labels(labels, noise_key, train_labels, NUM_CLASSES[name], source)
    return Dataset(name, NUM_CLASSES[name], train_images, noisy, train_labels.astype(np.int64),
                   test_images, test_labels.astype(np.int64), class_names=tuple(class_names))


def split_indices(n, val_ratio, seed):
    """(train, val) index arrays: the first int(n * val_ratio) entries of RandomState(seed).permutation(n)
    are validation, the rest training, in that order (as the reference's seeded shuffle)."""
    perm = np.random.RandomState(seed).permutation(n)
    n_val = int(n * val_ratio)
    return perm[n_val:], perm[:n_val]
