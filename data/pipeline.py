"""Batches made on the training device: the uint8 images live there once, padded by an eighth of their size
(4 pixels for CIFAR's 32); every batch is gathered, randomly cropped and flipped per image, and normalised with a
few batched tensor ops. No PIL, no DataLoader workers, no per-image Python. Batches carry each sample's position
in its split. The image size is read off the arrays, so any square size works with the same calls."""
import copy

import numpy as np
import torch


def padding(size):
    """Pixels of padding on each side for the random crop of a size x size image: an eighth (4 at 32)."""
    return size // 8


def unpadded_size(padded_size):
    """(image size S, padding P) of a padded side T = S + 2P with P = S // 8. With S = 8q + r (r < 8) that is
    T = 10q + r, so T // 10 = q = P."""
    pad = padded_size // 10
    return padded_size - 2 * pad, pad


def to_device_images(images, pad_mode, device):
    """uint8 (N, S, S, 3) numpy -> uint8 (N, 3, S + 2P, S + 2P) on device, padded once by P = S // 8 pixels
    (32 -> 40 for CIFAR).

    pad_mode "reflect" mirrors without repeating the edge (as torchvision's reflect padding); "constant"
    pads black pixels, as PIL's zero padding does before normalisation."""
    pad = padding(images.shape[1])
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
    return torch.from_numpy(padded).to(device).permute(0, 3, 1, 2).contiguous()


def crop_flip_indices(batch, flip_first, generator, device, size=32, pad=4):
    """Row and column indices (B, size) into the padded images for one random crop and flip per image.

    flip_first=True is "flip, then crop" (CIFAR-10), False is "crop, then flip" (CIFAR-100); both flips
    mirror the whole padded image or the crop, so the gather below does either in one step."""
    dy, dx = torch.randint(0, 2 * pad + 1, (2, batch, 1), generator=generator, device=device)
    flip = torch.randint(0, 2, (batch, 1), generator=generator, device=device).bool()
    k = torch.arange(size, device=device)
    flipped_cols = (size + 2 * pad - 1 - dx - k) if flip_first else (dx + size - 1 - k)
    return dy + k, torch.where(flip, flipped_cols, dx + k)


class DeviceBatches:
    """Iterable over one split: yields (images float (B, 3, S, S) normalised, labels, positions in the split).

    images: padded uint8 (N, 3, S + 2P, S + 2P) of the whole set on the device (from to_device_images);
    labels: (N,) on the device; indices: which of the N images form this split, in split order (None = all)."""

    def __init__(self, images, labels, indices, mean_std, batch_size, augment=False, flip_first=True,
                 shuffle=False, generator=None, channels_last=False, rank=0, world_size=1):
        self.images, self.labels = images, labels
        self.size, self.pad = unpadded_size(images.shape[-1])
        device = images.device
        self.indices = (torch.arange(len(images), device=device) if indices is None
                        else torch.as_tensor(indices, dtype=torch.long, device=device))
        mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in mean_std)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std  # x / 255 normalised in one fused op
        self.batch_size, self.augment, self.flip_first = batch_size, augment, flip_first
        self.shuffle, self.generator, self.channels_last = shuffle, generator, channels_last
        self.rank, self.world_size = rank, world_size  # under torchrun each rank takes every world_size-th sample

    def plain(self):
        """The same split without augmentation (the test transform), in the same order."""
        plain = copy.copy(self)
        plain.augment = False
        return plain

    def __len__(self):
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def batch(self, positions):
        """The batch of the given split positions (a device tensor); under torchrun, this rank's share of it.
        Crops and flips are drawn for the whole batch on every rank, so the random stream is the same as in
        a single process."""
        if self.augment:
            rows, cols = crop_flip_indices(len(positions), self.flip_first, self.generator, positions.device,
                                           self.size, self.pad)
            rows, cols = rows[self.rank::self.world_size], cols[self.rank::self.world_size]
        positions = positions[self.rank::self.world_size]
        full = self.indices[positions]
        x = self.images[full]
        if self.augment:
            x = x[torch.arange(len(full), device=x.device)[:, None, None, None],
                  torch.arange(3, device=x.device)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
        else:
            x = x[:, :, self.pad:self.pad + self.size, self.pad:self.pad + self.size]
        x = torch.addcmul(self.shift, x.float(), self.scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[full], positions

    def epoch_order(self):
        """The order of one epoch: a fresh permutation of the split's positions when shuffling."""
        n, device = len(self.indices), self.indices.device
        return torch.randperm(n, generator=self.generator, device=device) if self.shuffle else torch.arange(n, device=device)

    def iterate(self, order, first_batch=0):
        """Batches of `order` from batch number first_batch on (a resumed epoch starts in the middle)."""
        for start in range(first_batch * self.batch_size, len(order), self.batch_size):
            yield self.batch(order[start:start + self.batch_size])

    def __iter__(self):
        return self.iterate(self.epoch_order())


class RunBatches:
    """The four streams of batches of a training run, over one copy of the images on the device: train (augmented,
    shuffled by `generator`), val (the test transform; with --val_ratio 0 the training split, augmented, stands in, as
    in the reference), full (every image, through the training augmentation, for detection, as in the reference) and
    test (None without a test set). `labels` are the given labels of every image, on the device."""

    def __init__(self, data, train_idx, val_idx, batch_size, eval_batch_size, seed, device, rank=0, world_size=1):
        pad_mode, flip_first = data.augment
        images = to_device_images(data.train_images, pad_mode, device)
        self.labels = torch.as_tensor(data.noisy_labels, device=device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        common = dict(mean_std=data.mean_std, flip_first=flip_first, generator=self.generator, channels_last=True,
                      rank=rank, world_size=world_size)
        self.train = DeviceBatches(images, self.labels, train_idx, batch_size=batch_size, augment=True, shuffle=True,
                                   **common)
        self.val = (DeviceBatches(images, self.labels, val_idx, batch_size=eval_batch_size, **common) if len(val_idx) else
                    DeviceBatches(images, self.labels, train_idx, batch_size=eval_batch_size, augment=True, **common))
        self.full = DeviceBatches(images, self.labels, None, batch_size=eval_batch_size, augment=True, **common)
        self.test = None if data.test_images is None else DeviceBatches(
            to_device_images(data.test_images, pad_mode, device), torch.as_tensor(data.test_labels, device=device),
            None, batch_size=eval_batch_size, **common)
