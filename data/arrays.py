"""--dataset npz: a labelled image set in one .npz file (numpy's np.savez), read without pickle.

Arrays: train_images uint8 (N, S, S, 3), train_labels (N,) integers 0..C-1; optionally test_images (M, S, S, 3)
with test_labels (M,), clean_labels (N,) (the true labels, to score detection) and class_names (C,) strings."""
import os

import numpy as np

from utils import InputError
from .dataset import AUGMENT, MIN_IMAGE_SIZE, Dataset

REQUIRED = ("train_images", "train_labels")
OPTIONAL = ("test_images", "test_labels", "clean_labels", "class_names")


def read_npz(path):
    """{name: array} of an .npz file; object arrays, which would need pickle, are refused."""
    if not os.path.isfile(path):
        raise InputError(f"--data_dir {path}: no such file (--dataset npz takes the .npz file itself)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # not a zip / npy, truncated
        raise InputError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds a single array; --dataset npz needs named arrays "
                         f"(np.savez(path, train_images=..., train_labels=...))")
    with archive:
        unknown = sorted(set(archive.files) - set(REQUIRED + OPTIONAL))
        if unknown:
            raise InputError(f"{path}: unknown array(s) {', '.join(unknown)}; expected {', '.join(REQUIRED)} "
                             f"and optionally {', '.join(OPTIONAL)}")
        missing = [k for k in REQUIRED if k not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise InputError(f"{path}: no {' and no '.join(missing)} array (found: {found})")
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except Exception as e:  # an object array ("... when allow_pickle=False"), or a damaged member
                why = ("stored as Python objects, which would need pickle and is refused; store numbers or "
                       "fixed-width strings" if "allow_pickle" in str(e) else f"not readable ({type(e).__name__}: {e})")
                raise InputError(f"{path}: '{key}' is {why}") from None
    return arrays


def check_images(images, key, path):
    """The side S of uint8 (N, S, S, 3) images with N > 0, or an InputError naming what is wrong."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[0] == 0:
        raise InputError(f"{path}: '{key}' must be uint8 RGB images of shape (N, S, S, 3) with N > 0, "
                         f"got {images.dtype} of shape {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise InputError(f"{path}: '{key}' are {images.shape[1]}x{images.shape[2]} images; they must be square "
                         f"(crop or pad them to S x S first)")
    return images.shape[1]


def check_labels(labels, key, n, path):
    """int64 (n,) labels, or an InputError naming what is wrong."""
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: '{key}' must be {n} integer labels (one per image), "
                         f"got {labels.dtype} of shape {labels.shape}")
    return labels.astype(np.int64)


def check_size(size, image_size, path):
    """The stored images are used as they are: refuse ones below the smallest crop or off --image_size."""
    if size < MIN_IMAGE_SIZE:
        raise InputError(f"{path}: the images are {size}x{size}, smaller than the smallest crop "
                         f"({MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}); upscale them first")
    if image_size is not None and image_size != size:
        relation = "smaller than" if size < image_size else "not"
        raise InputError(f"{path}: the images are {size}x{size}, {relation} the {image_size}x{image_size} crop of "
                         f"--image_size {image_size}; .npz images are used at their stored size: leave out "
                         f"--image_size (or pass {size})")


def class_count(train_labels, class_names, path):
    """Number of classes: len(class_names) when given, else 1 + the largest training label; every class must
    have training images, and there must be two at least."""
    if class_names is not None:
        if class_names.ndim != 1 or class_names.dtype.kind not in "US":
            raise InputError(f"{path}: 'class_names' must be a 1-d array of strings, "
                             f"got {class_names.dtype} of shape {class_names.shape}")
        num_classes = len(class_names)
    else:
        num_classes = int(train_labels.max()) + 1
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        named = " (one per class name)" if class_names is not None else ""
        raise InputError(f"{path}: 'train_labels' has labels outside 0..{num_classes - 1}{named}: "
                         f"min {train_labels.min()}, max {train_labels.max()}")
    if num_classes < 2:
        raise InputError(f"{path}: 'train_labels' has a single class; BKD needs at least two")
    present = np.unique(train_labels)  # sorted: the first class missing is the first i with present[i] != i
    if len(present) < num_classes:
        gap = np.flatnonzero(present != np.arange(len(present)))
        first = int(gap[0]) if len(gap) else len(present)
        raise InputError(f"{path}: the training labels use {len(present)} of the classes 0..{num_classes - 1} "
                         f"(no training image of class {first}); number the classes 0..C-1 without gaps")
    return num_classes


def check_range(labels, key, num_classes, path, what):
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"{path}: '{key}' has {what} (labels outside 0..{num_classes - 1}, the classes of "
                         f"'train_labels': min {labels.min()}, max {labels.max()})")


def load_npz(path, image_size=None):
    """The Dataset of an .npz file, every array checked; mean and std are computed from the training images."""
    a = read_npz(path)
    size = check_images(a["train_images"], "train_images", path)
    check_size(size, image_size, path)
    n = len(a["train_images"])
    noisy = check_labels(a["train_labels"], "train_labels", n, path)
    class_names = a.get("class_names")
    num_classes = class_count(noisy, class_names, path)
    clean = None
    if "clean_labels" in a:
        clean = check_labels(a["clean_labels"], "clean_labels", n, path)
        check_range(clean, "clean_labels", num_classes, path, "labels out of range")
    test_images = test_labels = None
    if ("test_images" in a) != ("test_labels" in a):
        raise InputError(f"{path}: 'test_images' and 'test_labels' come together; the file has only one of them")
    if "test_images" in a:
        test_images = a["test_images"]
        if check_images(test_images, "test_images", path) != size:
            raise InputError(f"{path}: 'test_images' are {test_images.shape[1]}x{test_images.shape[2]}, "
                             f"'train_images' {size}x{size}; both must have the same size")
        test_labels = check_labels(a["test_labels"], "test_labels", len(test_images), path)
        check_range(test_labels, "test_labels", num_classes, path, "classes the training set lacks")
    return Dataset("npz", num_classes, a["train_images"], noisy, clean, test_images, test_labels,
                   class_names=None if class_names is None else tuple(class_names.astype(str).tolist()),
                   augment=AUGMENT["cifar10"])
