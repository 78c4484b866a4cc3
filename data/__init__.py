"""Datasets: images, noisy and clean labels, the validation split, and per-dataset preprocessing constants. CIFAR-10N,
CIFAR-100N and the built-in synthetic set have fixed ones; your own data (an image folder, an .npz file) brings its
own labels, size and classes, and its constants are computed from its training images."""
import numpy as np

from utils import InputError
from .dataset import AUGMENT, MIN_IMAGE_SIZE, Dataset, image_mean_std  # noqa: F401 (the package's names)

DATASETS = ("cifar10", "cifar100", "synthetic", "folder", "npz")
OWN_DATA = ("folder", "npz")  # the user's own data: the labels as given, sizes and constants from the data
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": 10}
CIFAR10_NOISE = {"clean": "clean_label", "aggre": "aggre_label", "worst": "worse_label",
                 "rand1": "random_label1", "rand2": "random_label2", "rand3": "random_label3"}
NOISE_TYPES = {"cifar10": CIFAR10_NOISE, "synthetic": CIFAR10_NOISE,
               "cifar100": {"clean100": "clean_label", "noisy100": "noisy_label"},
               "folder": {"given": "train_labels"}, "npz": {"given": "train_labels"}}
DEFAULT_NOISE_TYPE = {"cifar10": "worst", "synthetic": "worst", "cifar100": "noisy100", "folder": "given",
                      "npz": "given"}
DEFAULT_IMAGE_SIZE = 32  # CIFAR's, and what folders are resized to unless --image_size says otherwise
MEAN_STD = {  # per-channel, of pixels scaled to [0, 1]
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "synthetic": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


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


def load_dataset(name, noise_type, data_dir, noise_path=None, download=True, image_size=None):
    """Images and labels of a dataset with the noisy labels of `noise_type` (see NOISE_TYPES).

    folder and npz are the user's own data (`data_dir` is the folder or the .npz file); `image_size` is the side
    a folder's images are resized to (default 32) and, when given, the side an .npz file's images must have."""
    if name == "folder":
        from .folder import load_folder
        return load_folder(data_dir, image_size or DEFAULT_IMAGE_SIZE)
    if name == "npz":
        from .arrays import load_npz
        return load_npz(data_dir, image_size)
    noise_key = NOISE_TYPES[name][noise_type]
    if name == "synthetic":
        from .synthetic import CLASSES, load_synthetic
        d = load_synthetic()
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
                   test_images, test_labels.astype(np.int64), class_names=tuple(class_names),
                   mean_std=MEAN_STD[name], augment=AUGMENT[name])


def split_indices(n, val_ratio, seed):
    """(train, val) index arrays: the first int(n * val_ratio) entries of RandomState(seed).permutation(n)
    are validation, the rest training, in that order (as the reference's seeded shuffle)."""
    perm = np.random.RandomState(seed).permutation(n)
    n_val = int(n * val_ratio)
    return perm[n_val:], perm[:n_val]
