"""The Dataset every loader returns, and what the loaders share: the training augmentation of each kind of data, the
smallest image size, the normalisation constants of images that bring none. numpy only."""
from dataclasses import dataclass
from typing import Optional

import numpy as np

MIN_IMAGE_SIZE = 8  # the padding of the random crop is an eighth of the size; the networks downsample 8x
# Training augmentation: CIFAR-10 flips then crops with reflect padding; CIFAR-100 crops with zero padding, then flips.
AUGMENT = {"cifar10": ("reflect", True), "synthetic": ("reflect", True), "cifar100": ("constant", False)}


@dataclass
class Dataset:
    name: str
    num_classes: int
    train_images: np.ndarray  # uint8 (N, S, S, 3), dataset order
    noisy_labels: np.ndarray  # int64 (N,), the labels training sees
    clean_labels: Optional[np.ndarray]  # int64 (N,), ground truth, used only for reporting; None = unknown
    test_images: Optional[np.ndarray]  # None = no test set
    test_labels: Optional[np.ndarray]
    class_names: Optional[tuple] = None  # name of each class index, where the data set has them
    train_files: Optional[list] = None  # file of each training image, where the data set has files
    mean_std: Optional[tuple] = None  # ((mean per channel), (std per channel)) of pixels in [0, 1]; None = computed
    augment: tuple = ("reflect", True)  # (padding mode, flip before crop) of the training augmentation: CIFAR-10's
    files_root: Optional[str] = None  # the folder train_files are under (their names are compared from there on)
    # With --label_fixes (data.fixes.apply_label_fixes): noisy_labels are the labels after the fixes, these are the
    # labels on disk before them, `dropped` marks the images the fixes took out, `label_fixes` is the file
    # (data.fixes.LabelFixes: its rows, its bytes, what applying it did).
    original_labels: Optional[np.ndarray] = None
    dropped: Optional[np.ndarray] = None
    label_fixes: Optional[object] = None

    def __post_init__(self):
        if self.mean_std is None:
            self.mean_std = image_mean_std(self.train_images)

    @property
    def labels_on_disk(self):
        """The data set's own labels: those before --label_fixes (noisy_labels without fixes)."""
        return self.noisy_labels if self.original_labels is None else self.original_labels

    @property
    def kept(self):
        """True for every image training uses: all of them, unless label fixes dropped some."""
        return np.ones(len(self.noisy_labels), dtype=bool) if self.dropped is None else ~self.dropped

    @property
    def noise_or_not(self):
        """True where the given label is wrong; None when the ground truth is unknown."""
        return None if self.clean_labels is None else self.noisy_labels != self.clean_labels


def image_mean_std(images, max_images=10_000):
    """Per-channel mean and std of uint8 (N, H, W, 3) images scaled to [0, 1], from a 256-bin histogram per channel
    of at most max_images evenly spaced images (all of them below that; 10,000 pin the constants to about 1e-3)."""
    sample = images[::max(1, len(images) // max_images)].reshape(-1, 3)
    values = np.arange(256) / 255.0
    mean, std = [], []
    for c in range(3):
        counts = np.bincount(sample[:, c], minlength=256)
        m = counts @ values / counts.sum()
        mean.append(float(m))
        std.append(float(np.sqrt(counts @ (values - m) ** 2 / counts.sum())))
    return tuple(mean), tuple(std)
